//! The RabbitMQ-cluster fault tests' set-up: a fleet of `o365-relay serve` processes (the real
//! binary) given the cluster's three URLs, the in-process simulator, a round-robin balancer in
//! front of the replicas' webhooks (the Kubernetes Service), and a sink: a quorum queue bound
//! `#` to the relay's exchange, replicated on the three nodes so it survives the node a test
//! kills, counted by message id from a node the test does not kill.
//!
//! Everything is named uniquely per fleet (`clu.<id>.*` exchange and queues on the cluster,
//! `clu:<id>:` Redis prefix on the machine's Redis) and removed by [`Fleet::finish`], or on drop
//! (relays killed, Redis keys purged; the cluster's queues go with the cluster).

pub use test_support::rabbit_cluster::{RabbitCluster, NODES};
pub use test_support::*;

use o365_sim::Simulator;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::sink::Tally;
use tokio::net::{TcpListener, TcpStream};

pub const TENANT: &str = TENANT_A;
pub const SECRET: &str = "cluster-client-secret";
pub const CONTENT_TYPES: [&str; 2] = ["Audit.Exchange", "Audit.SharePoint"];

/// One line of RELIABILITY.md's table.
#[derive(Debug)]
pub struct Row {
    pub fault: String,
    pub sent: usize,
    pub received: usize,
    pub lost: usize,
    pub duplicates: u64,
    pub unexpected: usize,
    pub recovery: Duration,
    pub note: String,
}

impl Row {
    pub fn print(&self) {
        println!(
            "RELIABILITY-ROW | {} | {} | {} | {} | {} | {:.1} s | {} |",
            self.fault,
            self.sent,
            self.received,
            self.lost,
            self.duplicates,
            self.recovery.as_secs_f64(),
            self.note
        );
    }
}

/// One `o365-relay serve` of the fleet.
pub struct Replica {
    pub process: RelayProcess,
    pub public_port: u16,
    pub admin_port: u16,
    /// Its `HOSTNAME`, which its RabbitMQ connection name carries (`o365-relay {HOSTNAME}/…`).
    pub hostname: String,
}

impl Replica {
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

pub struct Fleet<'c> {
    pub cluster: &'c RabbitCluster,
    pub sim: Simulator,
    pub names: Names,
    pub replicas: Vec<Replica>,
    pub dir: PathBuf,
    pub http: reqwest::Client,
    pub received: Arc<Mutex<Received>>,
    balancer: Balancer,
    sink: Option<Sink>,
    tally: Option<Tally>,
    redis_guard: Option<ResourceGuard>,
}

impl<'c> Fleet<'c> {
    /// Starts `replicas` relays on `cluster` (each given the three URLs) behind one webhook
    /// address, waits until each is ready and starts the tenant's subscriptions.
    pub async fn start(cluster: &'c RabbitCluster, replicas: usize) -> Fleet<'c> {
        let names = Names::new("clu");
        let dir = std::env::temp_dir().join(format!("o365-cluster-{}", names.id));
        std::fs::create_dir_all(&dir).expect("a log directory");
        let sim = SimBuilder::new()
            .client_secret(SECRET)
            .tenants(&[TENANT])
            .notification_retry_delays(vec![
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
            ])
            .start()
            .await;
        let redis_guard = ResourceGuard::new().redis_prefix(&names.prefix);
        // The sink exists before the relays publish (records are published mandatory).
        Sink::bind(
            &cluster.url(1),
            &names.exchange,
            &names.sink,
            SinkQueue::Quorum,
        )
        .await
        .expect("declare the sink on the cluster")
        .close()
        .await;
        let balancer = Balancer::start().await;
        let env = RelayEnv::new(&names, &sim.url())
            .client_secret(SECRET)
            .public_url(format!("http://127.0.0.1:{}", balancer.port))
            .tenants(&[TENANT])
            .set("O365_CONTENT_TYPES", CONTENT_TYPES.join(","))
            .amqp_url(cluster.urls())
            .set("O365_AMQP_QUEUE_TYPE", "quorum")
            .set("O365_WORKER_CONCURRENCY", "8")
            .retries("200ms", "2s")
            .set("O365_RECONCILE_INTERVAL", "2s")
            .set("O365_RECONCILE_LOOKBACK", "1h")
            .set("O365_SHUTDOWN_TIMEOUT", "10s")
            .set("O365_HTTP_TIMEOUT", "5s")
            .set("O365_LOG_FORMAT", "pretty")
            .overrides_from_host("RELIABILITY_EXTRA_ENV");
        let mut fleet = Fleet {
            cluster,
            sim,
            names,
            replicas: Vec::new(),
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
            received: Arc::default(),
            balancer,
            sink: None,
            tally: None,
            redis_guard: Some(redis_guard),
        };
        for i in 0..replicas {
            let (public_port, admin_port) = (free_port(), free_port());
            let hostname = format!("clu-{}-r{i}", fleet.names.id);
            let process = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["serve"])
                .inherit("PATH")
                .env(
                    "RUST_LOG",
                    std::env::var("RELAY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .env("HOSTNAME", &hostname)
                .envs(env.clone().listen_on(public_port, admin_port).into_vars())
                .spawn(fleet.dir.join(format!("relay-{i}.log")));
            fleet.replicas.push(Replica {
                process,
                public_port,
                admin_port,
                hostname,
            });
        }
        for r in &mut fleet.replicas {
            r.process
                .wait_ready(&r.admin_url(), Duration::from_secs(90))
                .await;
        }
        fleet
            .balancer
            .set_backends(fleet.replicas.iter().map(|r| r.public_port).collect());
        fleet.start_subscriptions().await;
        fleet
    }

    /// Starts the tenant's subscriptions with the fleet's webhook, through replica 0.
    async fn start_subscriptions(&self) {
        let r = self
            .http
            .post(format!(
                "{}/admin/tenants/{TENANT}/subscriptions/start?force=true",
                self.replicas[0].admin_url()
            ))
            .send()
            .await
            .expect("the admin API answers");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "subscriptions/start: {status} {body}");
        for ct in CONTENT_TYPES {
            let subs = self.sim.subscriptions(TENANT);
            assert!(
                subs.iter()
                    .any(|s| s.content_type == ct && s.status == "enabled"),
                "{ct} not enabled: {body}"
            );
        }
    }

    /// The queues the relays declared: the work queue, its retry tiers and its dead queue.
    pub fn relay_queues(&self) -> Vec<String> {
        let q = o365_relay::pipeline::work_queue::QueueNames::new(&self.names.work_queue);
        std::iter::once(q.work)
            .chain(q.retry)
            .chain(std::iter::once(q.dead))
            .collect()
    }

    /// The node each replica's RabbitMQ connection is on (found by its connection name), once
    /// every replica has exactly one; `None` when that did not happen within `wait`.
    pub async fn relay_nodes(&self, wait: Duration) -> Option<Vec<usize>> {
        // `o365-relay {HOSTNAME}/{pid} serve`: the slash keeps r1 from matching r10.
        let names: Vec<String> = self
            .replicas
            .iter()
            .map(|r| format!("{}/", r.hostname))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let deadline = Instant::now() + wait;
        loop {
            let found = self
                .cluster
                .nodes_of_connections(&names)
                .await
                .unwrap_or_default();
            if found.len() == names.len() && found.iter().all(|on| on.len() == 1) {
                return Some(found.iter().map(|on| on[0]).collect());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Counts what reaches the sink from now on, read through `node` (one the test will not
    /// kill: the queue survives a node, a consumer's connection does not).
    pub async fn count_on(&mut self, node: usize) {
        let sink = Sink::bind(
            &self.cluster.url(node),
            &self.names.exchange,
            &self.names.sink,
            SinkQueue::Quorum,
        )
        .await
        .expect("bind the sink");
        let tally = sink.tally().await.expect("consume the sink");
        self.received = tally.received.clone();
        self.sink = Some(sink);
        self.tally = Some(tally);
    }

    /// Deliveries counted so far.
    pub fn total(&self) -> u64 {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .total
    }

    /// Publishes `blobs` blobs (alternating content types) of `records` records, `per_tick` at
    /// a time every `tick`: a steady stream a fault can hit mid-way.
    pub fn load(
        &self,
        blobs: usize,
        records: usize,
        per_tick: usize,
        tick: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let sim = self.sim.clone();
        tokio::spawn(async move {
            let (mut done, mut i) = (0, 0);
            while done < blobs {
                let n = per_tick.min(blobs - done);
                sim.publish(TENANT, CONTENT_TYPES[i % 2], n, Some(records))
                    .await;
                i += 1;
                done += n;
                tokio::time::sleep(tick).await;
            }
        })
    }

    /// The sum of a Prometheus series of replica `i` (`None` when it does not answer).
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.replicas[i].admin_url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut found = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.rsplit_once(' ')?;
            if k == name || k.starts_with(&format!("{name}{{")) {
                *found.get_or_insert(0.0) += v.parse::<f64>().ok()?;
            }
        }
        found
    }

    /// POSTs a valid notification of one blob to the fleet's webhook address; the status.
    pub async fn notify_one(&self) -> Result<reqwest::StatusCode, reqwest::Error> {
        let b = self.sim.announced_blob(TENANT, CONTENT_TYPES[0]);
        let body = serde_json::json!([{
            "tenantId": b.tenant_id, "clientId": CLIENT_ID, "contentType": b.content_type,
            "contentId": b.content_id, "contentUri": b.content_uri,
            "contentCreated": b.content_created, "contentExpiration": b.content_expiration,
        }]);
        self.http
            .post(format!("http://127.0.0.1:{}/webhook", self.balancer.port))
            .header("Webhook-AuthID", &self.names.auth_id)
            .header("Content-Type", "application/json; utf-8")
            .body(body.to_string())
            .send()
            .await
            .map(|r| r.status())
    }

    /// Waits until every record the simulator put into a blob reached the sink (or `wait`
    /// passed), listens `linger` more for late duplicates, and returns the row (`recovery` is
    /// the caller's figure; `drained` here is from `since` to the last missing record).
    pub async fn settle(&self, since: Instant, wait: Duration, linger: Duration) -> Settled {
        let sent = self.sim.unique_record_ids();
        let deadline = Instant::now() + wait;
        let drained = loop {
            let all_in = {
                let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
                sent.iter().all(|id| r.per_id.contains_key(id))
            };
            if all_in || Instant::now() >= deadline {
                break since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tokio::time::sleep(linger).await;
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        let received = sent.iter().filter(|id| r.per_id.contains_key(*id)).count();
        Settled {
            sent: sent.len(),
            received,
            duplicates: r.total - r.per_id.len() as u64,
            unexpected: r.per_id.keys().filter(|id| !sent.contains(*id)).count(),
            drained,
        }
    }

    /// Stops the relays (SIGTERM), then removes the sink, the relays' queues and exchange
    /// through `via` (a running node) and the Redis keys. Returns whether every relay exited 0.
    pub async fn finish(mut self, via: Option<usize>) -> bool {
        let mut clean = true;
        for r in &mut self.replicas {
            let status = r.process.stop(Duration::from_secs(20)).await;
            clean &= status.is_some_and(|s| s.success());
        }
        drop(self.tally.take());
        if let Some(sink) = self.sink.take() {
            sink.close().await;
        }
        if let Some(node) = via {
            let mut guard = ResourceGuard::new()
                .amqp_url(self.cluster.url(node))
                .exchange(&self.names.exchange)
                .queues(self.relay_queues())
                .queues([self.names.sink.clone()]);
            guard.release().await;
        }
        if let Some(mut g) = self.redis_guard.take() {
            g.release().await;
        }
        clean
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        drop(self.tally.take());
        if std::thread::panicking() || std::env::var_os("RELIABILITY_KEEP_LOGS").is_some() {
            eprintln!("relay logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What reached the sink.
#[derive(Debug)]
pub struct Settled {
    pub sent: usize,
    pub received: usize,
    pub duplicates: u64,
    pub unexpected: usize,
    pub drained: Duration,
}

/// The nodes of a list, each once, in order (for messages).
pub fn distinct(nodes: &[usize]) -> Vec<usize> {
    let set: HashSet<usize> = nodes.iter().copied().collect();
    let mut v: Vec<usize> = set.into_iter().collect();
    v.sort_unstable();
    v
}

/// The webhook's Service: each incoming connection goes to the next replica's public port (the
/// simulator opens a connection per notification, so notifications are spread over the
/// replicas); a replica that refuses is skipped.
struct Balancer {
    port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start() -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("an address").port();
        let backends: Arc<Mutex<Vec<u16>>> = Arc::default();
        let b = backends.clone();
        let task = tokio::spawn(async move {
            let next = Arc::new(AtomicU64::new(0));
            while let Ok((mut client, _)) = listener.accept().await {
                let ports = b.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let first = next.fetch_add(1, Ordering::Relaxed) as usize;
                tokio::spawn(async move {
                    for k in 0..ports.len() {
                        let port = ports[(first + k) % ports.len()];
                        if let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer {
            port,
            backends,
            task,
        }
    }

    fn set_backends(&self, ports: Vec<u16>) {
        *self.backends.lock().unwrap_or_else(|e| e.into_inner()) = ports;
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
