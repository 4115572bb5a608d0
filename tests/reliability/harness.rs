//! The fault-test harness: an in-process simulator, real `o365-relay serve` child processes,
//! the real RabbitMQ and Redis (optionally behind a [`Proxy`] the test can cut), and a sink
//! queue bound `#` to the relay's exchange that counts what downstream consumers receive. The
//! pieces are `crates/test-support`'s; what is here is the reliability tests' own set-up and
//! their figures.
//!
//! Everything is named uniquely per test and removed on drop (children killed, queues and the
//! exchange deleted, Redis keys under the test's prefix purged), also when the test panics.

#![allow(dead_code)]

pub use test_support::*;

use o365_sim::{Faults, Simulator};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TENANT: &str = TENANT_A;
pub const SECRET: &str = "reliability-client-secret";
pub const CONTENT_TYPES: [&str; 2] = ["Audit.Exchange", "Audit.SharePoint"];

/// A running `o365-relay serve`; SIGKILLed on drop unless it already exited.
pub type RelayProc = RelayProcess;

// ---------------------------------------------------------------------------------------------
// What the sink received
// ---------------------------------------------------------------------------------------------

/// One line of the RELIABILITY.md table.
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

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

pub struct Harness {
    pub name: String,
    pub sim: Simulator,
    pub id: String,
    pub exchange: String,
    pub work_queue: String,
    pub sink: String,
    pub prefix: String,
    pub public_port: u16,
    pub admin_port: u16,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    pub received: Arc<Mutex<Received>>,
    tally: Option<sink::Tally>,
    sink_queue: Option<Sink>,
    guard: Option<ResourceGuard>,
    starts: u32,
}

/// Options per test.
pub struct Setup {
    pub name: &'static str,
    /// Where the relay reaches RabbitMQ and Redis (a proxy's address or the real one).
    pub amqp_addr: String,
    pub redis_addr: String,
    pub extra_env: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn new(name: &'static str) -> Setup {
        Setup {
            name,
            amqp_addr: AMQP_ADDR.into(),
            redis_addr: REDIS_ADDR.into(),
            extra_env: Vec::new(),
        }
    }
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        let names = Names::new("rel");
        let dir =
            std::env::temp_dir().join(format!("o365-reliability-{}-{}", setup.name, names.id));
        std::fs::create_dir_all(&dir).unwrap();
        let sim = SimBuilder::new()
            .client_secret(SECRET)
            .tenants(&[TENANT])
            // Microsoft retries a failed notification for a while, then disables the
            // webhook; the reconciler must cover what is lost after that.
            .notification_retry_delays(vec![
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
            ])
            .start()
            .await;
        let public_port = free_port();
        let admin_port = free_port();
        let env = RelayEnv::new(&names, &sim.url())
            .client_secret(SECRET)
            .public_url(format!("http://127.0.0.1:{public_port}"))
            .tenants(&[TENANT])
            .set("O365_CONTENT_TYPES", CONTENT_TYPES.join(","))
            .listen_on(public_port, admin_port)
            .redis_url(redis_url(&setup.redis_addr))
            .amqp_url(amqp_url(&setup.amqp_addr))
            .set("O365_WORKER_CONCURRENCY", "8")
            .retries("200ms", "2s")
            .set("O365_RECONCILE_INTERVAL", "2s")
            .set("O365_RECONCILE_LOOKBACK", "1h")
            .set("O365_SHUTDOWN_TIMEOUT", "10s")
            .set("O365_HTTP_TIMEOUT", "5s")
            .set("O365_LOG_FORMAT", "pretty")
            .overrides(setup.extra_env)
            // `RELIABILITY_EXTRA_ENV="O365_ENABLE_RECONCILER=false;..."` overrides the relay's
            // environment: the way to check that a test fails when a mechanism is switched off.
            .overrides_from_host("RELIABILITY_EXTRA_ENV")
            .into_vars();
        let q = o365_relay::pipeline::work_queue::QueueNames::new(&names.work_queue);
        let guard = ResourceGuard::for_relay(&names, [q.dead].into_iter().chain(q.retry));
        // The sink exists before the relay publishes (records are published as mandatory); it
        // is durable, on the real broker, so a cut proxy does not touch it.
        let sink_queue = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Durable)
            .await
            .expect("RabbitMQ is running on 127.0.0.1:5672");
        let tally = sink_queue.tally().await.expect("consume the sink");
        Harness {
            name: setup.name.to_string(),
            sim,
            id: names.id,
            exchange: names.exchange,
            work_queue: names.work_queue,
            sink: names.sink,
            prefix: names.prefix,
            public_port,
            admin_port,
            dir,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            received: tally.received.clone(),
            tally: Some(tally),
            sink_queue: Some(sink_queue),
            guard: Some(guard),
            starts: 0,
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// Spawns `o365-relay serve` with the test's environment; output goes to a log file.
    pub fn spawn_relay(&mut self) -> RelayProc {
        self.starts += 1;
        let log = self.dir.join(format!("relay-{}.log", self.starts));
        RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["serve"])
            .inherit("PATH")
            .env(
                "RUST_LOG",
                std::env::var("RELAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env(
                "HOSTNAME",
                format!("reliability-{}-{}", self.id, self.starts),
            )
            .envs(self.env.iter().cloned())
            .spawn(log)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, wait: Duration) {
        assert!(
            process::wait_ready(&self.admin_url(), wait).await,
            "relay not ready within {wait:?}; log in {}",
            self.dir.display()
        );
    }

    /// Starts the tenant's subscriptions with the relay's webhook (the sim validates it).
    pub async fn start_subscriptions(&self) {
        let r = self
            .http
            .post(format!(
                "{}/admin/tenants/{TENANT}/subscriptions/start?force=true",
                self.admin_url()
            ))
            .send()
            .await
            .expect("admin API answers");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "subscriptions/start: {status} {body}");
        for ct in CONTENT_TYPES {
            let subs = self.sim.subscriptions(TENANT);
            let s = subs
                .iter()
                .find(|s| s.content_type == ct)
                .unwrap_or_else(|| panic!("{ct} not started: {body}"));
            assert_eq!(s.status, "enabled", "{ct}: {body}");
        }
    }

    /// Spawns a relay, waits for it and starts the subscriptions.
    pub async fn relay_up(&mut self) -> RelayProc {
        let p = self.spawn_relay();
        self.wait_ready(Duration::from_secs(60)).await;
        self.start_subscriptions().await;
        p
    }

    pub fn set_faults(&self, f: Faults) {
        self.sim.set_faults(f);
    }

    /// Publishes `blobs` blobs (alternating content types) of `records` records, `per_tick`
    /// at a time every `tick`: a steady stream the faults can hit mid-way.
    pub fn load(
        &self,
        blobs: usize,
        records: usize,
        per_tick: usize,
        tick: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let sim = self.sim.clone();
        tokio::spawn(async move {
            let mut done = 0;
            let mut i = 0;
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

    pub fn received_ids(&self) -> HashSet<String> {
        self.received
            .lock()
            .unwrap()
            .per_id
            .keys()
            .cloned()
            .collect()
    }

    /// Waits until every record the simulator put into a blob reached the sink (or `wait`
    /// passed); then listens `linger` more to count late duplicates. Returns the row.
    pub async fn settle(
        &self,
        fault: &str,
        since: Instant,
        wait: Duration,
        linger: Duration,
        note: String,
    ) -> Row {
        let sent = self.sim.unique_record_ids();
        let deadline = Instant::now() + wait;
        let recovery;
        loop {
            let got = self.received_ids();
            if sent.iter().all(|id| got.contains(id)) {
                recovery = since.elapsed();
                break;
            }
            if Instant::now() >= deadline {
                recovery = since.elapsed();
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(linger).await;
        let r = self.received.lock().unwrap();
        let received = sent.iter().filter(|id| r.per_id.contains_key(*id)).count();
        let unexpected = r.per_id.keys().filter(|id| !sent.contains(*id)).count();
        let row = Row {
            fault: fault.to_string(),
            sent: sent.len(),
            received,
            lost: sent.len() - received,
            duplicates: r.total - r.per_id.len() as u64,
            unexpected,
            recovery,
            note,
        };
        drop(r);
        if !row.fault.is_empty() {
            row.print();
        }
        row
    }

    /// Asserts the row shows nothing lost and nothing invented; keeps the logs on failure.
    pub fn assert_none_lost(&self, row: &Row) {
        assert!(row.sent > 0, "the simulator published nothing");
        assert_eq!(
            row.lost,
            0,
            "{}: {} of {} records never reached the exchange; relay logs in {}",
            row.fault,
            row.lost,
            row.sent,
            self.dir.display()
        );
        assert_eq!(
            row.unexpected, 0,
            "{}: records nobody published reached the exchange",
            row.fault
        );
    }

    /// A Prometheus counter/gauge value from the relay's `/metrics` (summed over labels).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.admin_url()))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let mut found = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (k, v) = line.rsplit_once(' ')?;
            if k == name || k.starts_with(&format!("{name}{{")) {
                *found.get_or_insert(0.0) += v.parse::<f64>().ok()?;
            }
        }
        found
    }

    /// Messages waiting in one of the relay's queues (passive declare on the real broker).
    pub async fn depth(&self, queue: &str) -> Option<u32> {
        sink::depth(self.sink_queue.as_ref()?.connection(), queue).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Stop counting, close the sink's connection, then delete the queues, the exchange
        // and the Redis keys (the guard does it on a thread of its own, also while unwinding).
        drop(self.tally.take());
        drop(self.sink_queue.take());
        drop(self.guard.take());
        if std::thread::panicking() || std::env::var_os("RELIABILITY_KEEP_LOGS").is_some() {
            eprintln!("{}: relay logs kept in {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
