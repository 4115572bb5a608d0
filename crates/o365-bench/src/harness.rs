//! What every section shares: the connections and names of a run, the simulator, the relay's
//! environment, the relay child process, notifying its webhook, counting what reaches the sink,
//! and removing everything a section created.
//!
//! Queue names, the sink binding, the notification body and the relay's configuration come from
//! the relay's and the simulator's own code, never re-typed here.

use crate::procfs;
use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use o365_relay::config::Settings;
use o365_relay::store::Store;
use o365_sim::{SimBlob, SimConfig, Simulator};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The relay's in-process parts (section 5 drives the reconciler on them directly). The one
/// place this benchmark names the type.
pub use o365_relay::app::Parts;

pub const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const TENANT_B: &str = "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
pub const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";
const SECRET: &str = "bench-client-secret-value";
/// Keep-alive connections kept by the HTTP client (section 1 uses 64 at once).
const HTTP_POOL: usize = 128;

/// The run: its options, its unique id, and the connections the sections share.
pub struct Ctx {
    pub quick: bool,
    pub run_id: String,
    pub auth_id: String,
    pub amqp_url: String,
    redis_url: String,
    pub relay_bin: Option<PathBuf>,
    http: reqwest::Client,
    amqp: Connection,
    /// Relay logs; removed at the end.
    dir: PathBuf,
}

/// Per-section names, all unique to the run.
pub struct Names {
    tag: String,
    pub exchange: String,
    work: String,
    pub sink: String,
    pub extra_queues: Vec<String>,
    prefix: String,
    sim_url: String,
}

impl Ctx {
    /// Connects to RabbitMQ and checks Redis; fails when either is not reachable.
    pub async fn connect(
        quick: bool,
        amqp_url: &str,
        redis_url: &str,
        relay_bin: Option<PathBuf>,
    ) -> anyhow::Result<Ctx> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
        let dir = std::env::temp_dir().join(format!("o365-bench-{run_id}"));
        std::fs::create_dir_all(&dir)?;
        let amqp = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .with_context(|| format!("RabbitMQ is not reachable at {amqp_url}"))?;
        let store = Store::new(redis_url, "o365bench:")?;
        store
            .ping()
            .await
            .with_context(|| format!("Redis is not reachable at {redis_url}"))?;
        Ok(Ctx {
            quick,
            run_id,
            auth_id: format!("bench-auth-{}", uuid::Uuid::new_v4().simple()),
            amqp_url: amqp_url.to_string(),
            redis_url: redis_url.to_string(),
            relay_bin,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(HTTP_POOL)
                .build()?,
            amqp,
            dir,
        })
    }

    /// Closes the shared connection and removes the relay logs.
    pub async fn close(&self) {
        let _ = self.amqp.close(200, "bench done".into()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    pub fn names(&self, tag: &str, sim: &Simulator) -> Names {
        Names {
            tag: tag.to_string(),
            exchange: format!("bench.{}.{tag}.audit", self.run_id),
            work: format!("bench.{}.{tag}.content", self.run_id),
            sink: format!("bench.{}.{tag}.sink", self.run_id),
            extra_queues: Vec::new(),
            prefix: format!("o365bench:{}:{tag}:", self.run_id),
            sim_url: sim.url(),
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.amqp.create_channel().await?)
    }

    /// Topic exchange + a durable classic sink queue bound `#` (declared before the relay
    /// publishes: records are published mandatory).
    pub async fn declare_sink(&self, n: &Names) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        o365_relay::broker::bind_all_records(
            &ch,
            &n.exchange,
            &n.sink,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_type("classic"),
        )
        .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// A durable queue of `kind` (`quorum`, `classic`).
    pub async fn declare_queue(&self, queue: &str, kind: &str) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_type(kind),
        )
        .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// Deletes every queue (the relay's work, retry and dead-letter queues by the relay's own
    /// naming), the exchange and every Redis key of the section.
    pub async fn cleanup(&self, n: &Names) {
        if let Ok(ch) = self.channel().await {
            let work = o365_relay::work_queue::Names::new(&n.work);
            let mut queues = vec![n.sink.clone(), work.work, work.dead];
            queues.extend(work.retry);
            queues.extend(n.extra_queues.iter().cloned());
            for q in queues {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = ch
                .exchange_delete(n.exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await;
            let _ = ch.close(200, "ok".into()).await;
        }
        if let Ok(store) = Store::new(&self.redis_url, &n.prefix) {
            let _ = store.purge_prefix().await;
        }
    }

    /// The relay's environment for a section: the simulator as Entra ID and the Management
    /// API, the section's names, background loops other than the workers off.
    fn relay_env(&self, n: &Names, public_port: u16, admin_port: u16) -> Vec<(String, String)> {
        [
            ("O365_CLIENT_ID", CLIENT_ID.to_string()),
            ("O365_CLIENT_SECRET", SECRET.into()),
            ("O365_WEBHOOK_AUTH_ID", self.auth_id.clone()),
            ("O365_PUBLIC_URL", format!("http://127.0.0.1:{public_port}")),
            ("O365_TENANTS", format!("{TENANT_A},{TENANT_B}")),
            ("O365_LOGIN_URL", n.sim_url.clone()),
            ("O365_MANAGE_URL", n.sim_url.clone()),
            ("O365_LISTEN", format!("127.0.0.1:{public_port}")),
            ("O365_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("O365_REDIS_URL", self.redis_url.clone()),
            ("O365_REDIS_PREFIX", n.prefix.clone()),
            ("O365_AMQP_URL", self.amqp_url.clone()),
            ("O365_AMQP_EXCHANGE", n.exchange.clone()),
            ("O365_AMQP_WORK_QUEUE", n.work.clone()),
            ("O365_AMQP_QUEUE_TYPE", "quorum".into()),
            ("O365_ENABLE_RECONCILER", "false".into()),
            ("O365_ENABLE_KEEPER", "false".into()),
            ("O365_LOG_FORMAT", "json".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The relay's settings for a section, as its own configuration parses them, with `extra`
    /// variables set or replaced.
    pub fn relay_settings(&self, n: &Names, extra: &[(&str, String)]) -> anyhow::Result<Settings> {
        let vars = with(self.relay_env(n, free_port()?, free_port()?), extra);
        Settings::from_vars(vars).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The relay's parts in this process, on the section's settings (no listeners, no loops).
    pub fn relay_parts(&self, n: &Names, extra: &[(&str, String)]) -> anyhow::Result<Arc<Parts>> {
        Parts::new(self.relay_settings(n, extra)?)
    }

    /// POSTs notifications for `blobs` (as the simulator would, at most
    /// [`o365_sim::MAX_BLOBS_PER_POST`] per POST) round-robin to the relays' webhooks.
    pub async fn notify(&self, relays: &[&RelayProc], blobs: &[SimBlob]) -> anyhow::Result<()> {
        for (i, chunk) in blobs.chunks(o365_sim::MAX_BLOBS_PER_POST).enumerate() {
            let r = relays[i % relays.len()];
            let resp = self
                .http
                .post(format!("{}/webhook", r.public_url))
                .header("Webhook-AuthID", &self.auth_id)
                .header("Content-Type", "application/json; utf-8")
                .body(o365_sim::notification_body(CLIENT_ID, chunk))
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!(
                    "webhook answered {}: {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
        }
        Ok(())
    }
}

fn queue_type(kind: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
    args
}

/// `vars` with each of `extra` set (replacing a variable of the same name).
fn with(mut vars: Vec<(String, String)>, extra: &[(&str, String)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        vars.retain(|(vk, _)| vk != k);
        vars.push((k.to_string(), v.clone()));
    }
    vars
}

/// A simulator serving `tenants`, `records_per_blob` records per published blob.
pub async fn start_sim(tenants: &[&str], records_per_blob: usize) -> anyhow::Result<Simulator> {
    let config = SimConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        records_per_blob,
        ..SimConfig::default()
    };
    Simulator::start(config, "127.0.0.1:0").await
}

pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A running relay process.
pub struct RelayProc {
    child: Child,
    pub pid: u32,
    pub public_url: String,
    admin_url: String,
    log: PathBuf,
}

impl RelayProc {
    /// Starts a relay (`o365-bench serve-relay`, or `--relay-bin` with `serve`) on the
    /// section's environment with `extra` variables set, and waits until `/readyz` answers 200
    /// (Redis and RabbitMQ reachable, topology declared).
    pub async fn spawn(ctx: &Ctx, names: &Names, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let public_port = free_port()?;
        let admin_port = free_port()?;
        let public_url = format!("http://127.0.0.1:{public_port}");
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        let log = ctx.dir.join(format!(
            "relay-{}-{}.log",
            names.tag,
            uuid::Uuid::new_v4().simple()
        ));
        let mut cmd = match &ctx.relay_bin {
            Some(bin) => {
                let mut c = Command::new(bin);
                c.arg("serve");
                c
            }
            None => {
                let mut c = Command::new(std::env::current_exe()?);
                c.arg("serve-relay");
                c
            }
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("O365_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(with(ctx.relay_env(names, public_port, admin_port), extra))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().context("cannot start the relay process")?;
        let pid = child.id();
        let mut p = RelayProc {
            child,
            pid,
            public_url,
            admin_url,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("the relay exited at start ({status}): {}", tail(&p.log, 20));
            }
            if let Ok(r) = ctx.http.get(format!("{}/readyz", p.admin_url)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                p.kill();
                bail!("the relay never became ready: {}", tail(&p.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(p)
    }

    /// User + system CPU seconds so far.
    pub fn cpu_secs(&self) -> f64 {
        procfs::cpu_secs(&format!("/proc/{}/stat", self.pid))
    }

    /// (VmHWM, VmRSS) in kB.
    pub fn memory_kb(&self) -> (u64, u64) {
        procfs::memory_kb(self.pid)
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counts messages arriving on a queue (no-ack consumer) until stopped.
pub struct SinkCounter {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    channel: Channel,
}

impl SinkCounter {
    pub async fn start(ctx: &Ctx, queue: &str) -> anyhow::Result<SinkCounter> {
        let channel = ctx.channel().await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("bench-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(_)) = consumer.next().await {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(SinkCounter {
            count,
            task,
            channel,
        })
    }

    fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
    }

    /// Waits until `want` messages arrived; `Err` after `timeout`.
    pub async fn wait_for(&self, want: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get() >= want {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {} of {want} messages arrived within {timeout:?}",
                    self.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.channel.close(200, "ok".into()).await;
        self.task.abort();
    }
}
