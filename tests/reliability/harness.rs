//! The fault-test harness: an in-process simulator, real `o365-relay serve` child processes,
//! the real RabbitMQ and Redis (optionally behind a TCP proxy the test can cut), and a sink
//! queue bound `#` to the relay's exchange that counts what downstream consumers receive.
//!
//! Everything is named uniquely per test and removed on drop (children killed, queues and the
//! exchange deleted, Redis keys under the test's prefix purged), also when the test panics.

#![allow(dead_code)]

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use o365_sim::{Faults, SimConfig, Simulator};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const AMQP_ADDR: &str = "127.0.0.1:5672";
pub const REDIS_ADDR: &str = "127.0.0.1:6379";
pub const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";
pub const SECRET: &str = "reliability-client-secret";
pub const CONTENT_TYPES: [&str; 2] = ["Audit.Exchange", "Audit.SharePoint"];

pub fn amqp_url(addr: &str) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

// ---------------------------------------------------------------------------------------------
// TCP proxy
// ---------------------------------------------------------------------------------------------

/// A TCP proxy in front of RabbitMQ or Redis. `cut` closes every open connection and refuses
/// new ones (accepted and closed at once) until `restore`.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let gen_tx = generation.clone();
        let up2 = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            generation,
            task,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Relay child process
// ---------------------------------------------------------------------------------------------

/// A running `o365-relay serve`; SIGKILLed on drop unless it already exited.
pub struct RelayProc {
    pub child: Child,
    pub log: PathBuf,
}

impl RelayProc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (through `kill`, to need no extra crate).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `wait` for the process to exit; its exit code when it did.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the sink received
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Received {
    pub per_id: HashMap<String, u32>,
    pub total: u64,
}

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
    amqp: Option<Connection>,
    collector: Option<tokio::task::JoinHandle<()>>,
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
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        let dir = std::env::temp_dir().join(format!("o365-reliability-{}-{id}", setup.name));
        std::fs::create_dir_all(&dir).unwrap();
        let sim = Simulator::start(
            SimConfig {
                client_id: CLIENT_ID.into(),
                client_secret: Some(SECRET.into()),
                tenants: vec![TENANT.into()],
                // Microsoft retries a failed notification for a while, then disables the
                // webhook; the reconciler must cover what is lost after that.
                notification_retry_delays: vec![
                    Duration::from_millis(500),
                    Duration::from_secs(1),
                    Duration::from_secs(2),
                ],
                ..SimConfig::default()
            },
            "127.0.0.1:0",
        )
        .await
        .expect("simulator starts");
        let public_port = free_port();
        let admin_port = free_port();
        let exchange = format!("rel.{id}.audit");
        let work_queue = format!("rel.{id}.content");
        let sink = format!("rel.{id}.sink");
        let prefix = format!("rel:{id}:");
        let mut env: Vec<(String, String)> = [
            ("O365_CLIENT_ID", CLIENT_ID.to_string()),
            ("O365_CLIENT_SECRET", SECRET.to_string()),
            ("O365_WEBHOOK_AUTH_ID", format!("auth-{id}-reliability")),
            ("O365_PUBLIC_URL", format!("http://127.0.0.1:{public_port}")),
            ("O365_TENANTS", TENANT.to_string()),
            ("O365_CONTENT_TYPES", CONTENT_TYPES.join(",")),
            ("O365_LOGIN_URL", sim.url()),
            ("O365_MANAGE_URL", sim.url()),
            ("O365_LISTEN", format!("127.0.0.1:{public_port}")),
            ("O365_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("O365_REDIS_URL", format!("redis://{}", setup.redis_addr)),
            ("O365_REDIS_PREFIX", prefix.clone()),
            ("O365_AMQP_URL", amqp_url(&setup.amqp_addr)),
            ("O365_AMQP_EXCHANGE", exchange.clone()),
            ("O365_AMQP_WORK_QUEUE", work_queue.clone()),
            ("O365_WORKER_CONCURRENCY", "8".into()),
            ("O365_RETRY_BASE", "200ms".into()),
            ("O365_RETRY_MAX", "2s".into()),
            ("O365_RECONCILE_INTERVAL", "2s".into()),
            ("O365_RECONCILE_LOOKBACK", "1h".into()),
            ("O365_SHUTDOWN_TIMEOUT", "10s".into()),
            ("O365_HTTP_TIMEOUT", "5s".into()),
            ("O365_LOG_FORMAT", "pretty".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for (k, v) in setup.extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v));
        }
        // `RELIABILITY_EXTRA_ENV="O365_ENABLE_RECONCILER=false;..."` overrides the relay's
        // environment: the way to check that a test fails when a mechanism is switched off.
        if let Ok(extra) = std::env::var("RELIABILITY_EXTRA_ENV") {
            for pair in extra.split(';').filter(|p| !p.trim().is_empty()) {
                if let Some((k, v)) = pair.split_once('=') {
                    env.retain(|(ek, _)| ek != k.trim());
                    env.push((k.trim().to_string(), v.to_string()));
                }
            }
        }
        // The sink exists before the relay publishes (records are published as mandatory).
        let conn = Connection::connect(&amqp_url(AMQP_ADDR), ConnectionProperties::default())
            .await
            .expect("RabbitMQ is running on 127.0.0.1:5672");
        let ch = conn.create_channel().await.unwrap();
        o365_relay::broker::bind_all_records(
            &ch,
            &exchange,
            &sink,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let mut consumer = ch
            .basic_consume(
                sink.as_str().into(),
                format!("sink-{id}").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let r = received.clone();
        let collector = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                let mut r = r.lock().unwrap();
                r.total += 1;
                *r.per_id.entry(id).or_insert(0) += 1;
            }
        });
        Harness {
            name: setup.name.to_string(),
            sim,
            id,
            exchange,
            work_queue,
            sink,
            prefix,
            public_port,
            admin_port,
            dir,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            received,
            amqp: Some(conn),
            collector: Some(collector),
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
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_o365-relay"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "RUST_LOG",
                std::env::var("RELAY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env(
                "HOSTNAME",
                format!("reliability-{}-{}", self.id, self.starts),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("o365-relay starts");
        RelayProc { child, log }
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/readyz", self.admin_url()))
                .send()
                .await
            {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "relay not ready within {wait:?}; log in {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let ch = self.amqp.as_ref()?.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "ok".into()).await;
        Some(q.message_count())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(c) = self.collector.take() {
            c.abort();
        }
        let conn = self.amqp.take();
        let mut queues = vec![
            self.sink.clone(),
            self.work_queue.clone(),
            format!("{}.dead", self.work_queue),
        ];
        queues.extend(o365_relay::work_queue::retry_queue_names(&self.work_queue));
        let exchange = self.exchange.clone();
        let prefix = self.prefix.clone();
        // Async clean-up from a synchronous drop (also while unwinding): its own runtime on
        // its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                drop(conn);
                if let Ok(conn) =
                    Connection::connect(&amqp_url(AMQP_ADDR), ConnectionProperties::default()).await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        for q in queues {
                            let _ = ch
                                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                        let _ = ch
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
                if let Ok(store) =
                    o365_relay::store::Store::new(&format!("redis://{REDIS_ADDR}"), &prefix)
                {
                    let _ = store.purge_prefix().await;
                }
            });
        })
        .join();
        if std::thread::panicking() || std::env::var_os("RELIABILITY_KEEP_LOGS").is_some() {
            eprintln!("{}: relay logs kept in {}", self.name, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
