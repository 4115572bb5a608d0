//! What every section shares, on the workspace's one test harness (`crates/test-support`):
//! the run's connections, a section's unique names and their clean-up, the simulator, the
//! relay's environment, the relay child process, notifying its webhook and the sink counter.
//!
//! What stays here is the benchmark's own: its overrides of the test relay's environment, its
//! choice of child binary (`serve-relay` of this binary, or `--relay-bin`), the relay's
//! in-process parts for section 5, and webhook notifications sent as Microsoft sends them.

use crate::procfs;
use anyhow::{bail, Context};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use o365_relay::config::Settings;
use o365_relay::store::Store;
use o365_sim::{SimBlob, Simulator};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use test_support::{
    free_port, unique, Names, RelayCommand, RelayEnv, RelayProcess, ResourceGuard, SimBuilder,
    Sink, SinkQueue,
};

pub use test_support::{CLIENT_ID, TENANT_A, TENANT_B};

/// The relay's in-process parts (section 5 drives the reconciler on them directly). The one
/// place this benchmark names the type.
pub use o365_relay::app::Parts;

/// The client secret the simulator accepts and the relay sends.
const SECRET: &str = "bench-client-secret-value";
/// Keep-alive connections kept by the HTTP client (section 1 uses 64 at once).
const HTTP_POOL: usize = 128;
/// How long a relay may take to answer `/readyz` 200 after it was started.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a relay may take to stop after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// The run: its options and the connections the sections share.
pub struct Ctx {
    pub quick: bool,
    pub amqp_url: String,
    redis_url: String,
    pub relay_bin: Option<PathBuf>,
    http: reqwest::Client,
    amqp: Connection,
    /// Relay logs; removed at the end.
    dir: PathBuf,
}

/// One section's names (exchange, work queue, sink queue, Redis prefix, webhook auth id), all
/// unique to it, and the guard that removes what it created — on [`Section::cleanup`], or when
/// dropped should the section panic.
pub struct Section {
    tag: String,
    pub names: Names,
    sim_url: String,
    guard: ResourceGuard,
}

impl Section {
    /// A queue of the section's own (the name is unique to it), removed with the rest.
    pub fn extra_queue(&mut self, suffix: &str) -> String {
        let queue = format!("bench-{}.{}.{suffix}", self.tag, self.names.id);
        self.guard.queues.push(queue.clone());
        queue
    }

    /// Deletes every queue (the sink, the relay's work, retry and dead-letter queues by the
    /// relay's own naming, the extra ones), the exchange and every Redis key of the section.
    pub async fn cleanup(mut self) {
        self.guard.release().await;
    }
}

impl Ctx {
    /// Connects to RabbitMQ and checks Redis; fails when either is not reachable.
    pub async fn connect(
        quick: bool,
        amqp_url: &str,
        redis_url: &str,
        relay_bin: Option<PathBuf>,
    ) -> anyhow::Result<Ctx> {
        let dir = std::env::temp_dir().join(format!("o365-bench-{}", unique()));
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

    /// Where child processes write their logs (removed at the end).
    pub fn log_dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Closes the shared connection and removes the relay logs.
    pub async fn close(&self) {
        let _ = self.amqp.close(200, "bench done".into()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Fresh names for section `tag` (`bench-{tag}.{id}.audit`, `bench-{tag}:{id}:`, …) with
    /// the simulator its relays use, and their clean-up on this run's RabbitMQ and Redis.
    pub fn section(&self, tag: &str, sim: &Simulator) -> Section {
        let names = Names::new(&format!("bench-{tag}"));
        let relay_queues = o365_relay::pipeline::work_queue::QueueNames::new(&names.work_queue);
        let guard = ResourceGuard::for_relay(
            &names,
            [relay_queues.dead].into_iter().chain(relay_queues.retry),
        )
        .amqp_url(&self.amqp_url)
        .redis_url(&self.redis_url);
        Section {
            tag: tag.to_string(),
            names,
            sim_url: sim.url(),
            guard,
        }
    }

    /// The section's sink: its exchange (declared as the relay declares it) and a durable queue
    /// bound `#`, on a connection of its own. Declared before the relay publishes: records are
    /// published mandatory.
    pub async fn sink(&self, s: &Section) -> anyhow::Result<Sink> {
        Ok(Sink::bind(
            &self.amqp_url,
            &s.names.exchange,
            &s.names.sink,
            SinkQueue::Durable,
        )
        .await?)
    }

    /// Empties `queue` (a measurement starts from an empty queue, as a webhook whose workers
    /// keep up sees it: a backlog left by the previous measurement makes RabbitMQ slower for
    /// whichever side comes next).
    pub async fn purge_queue(&self, queue: &str) -> anyhow::Result<()> {
        let ch = self.amqp.create_channel().await?;
        ch.queue_purge(queue.into(), Default::default()).await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// A durable queue of `kind` (`quorum`, `classic`).
    pub async fn declare_queue(&self, queue: &str, kind: &str) -> anyhow::Result<()> {
        let ch = self.amqp.create_channel().await?;
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(())
    }

    /// The relay's environment for a section: the test relay's ([`RelayEnv::new`]: the
    /// simulator as Entra ID and the Management API, the section's names) on this run's Redis
    /// and RabbitMQ, quorum work queues, background loops other than the workers off, JSON logs,
    /// then `extra`. `RelayEnv::new`'s short test timeouts (`O365_HTTP_TIMEOUT`,
    /// `O365_SHUTDOWN_TIMEOUT`) are left out: the relay runs with its defaults, as deployed, so
    /// a large blob (section 4) is fetched under the timeout operators get.
    fn relay_env(
        &self,
        s: &Section,
        public_port: u16,
        admin_port: u16,
        extra: &[(&str, String)],
    ) -> RelayEnv {
        RelayEnv::new(&s.names, &s.sim_url)
            .remove("O365_HTTP_TIMEOUT")
            .remove("O365_SHUTDOWN_TIMEOUT")
            .client_secret(SECRET)
            .public_url(format!("http://127.0.0.1:{public_port}"))
            .tenants(&[TENANT_A, TENANT_B])
            .listen_on(public_port, admin_port)
            .redis_url(&self.redis_url)
            .amqp_url(&self.amqp_url)
            .set("O365_AMQP_QUEUE_TYPE", "quorum")
            .without_background_loops()
            .set("O365_LOG_FORMAT", "json")
            .overrides(extra.iter().map(|(k, v)| (*k, v.clone())))
    }

    /// The relay's settings for a section, as its own configuration parses them, with `extra`
    /// variables set or replaced.
    pub fn relay_settings(
        &self,
        s: &Section,
        extra: &[(&str, String)],
    ) -> anyhow::Result<Settings> {
        let env = self.relay_env(s, free_port(), free_port(), extra);
        Settings::from_vars(env.into_vars()).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The relay's parts in this process, on the section's settings (no listeners, no loops).
    pub fn relay_parts(&self, s: &Section, extra: &[(&str, String)]) -> anyhow::Result<Arc<Parts>> {
        Parts::new(self.relay_settings(s, extra)?)
    }

    /// The body of a GET of `url` (a relay's `/metrics`).
    pub async fn get_text(&self, url: &str) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// POSTs notifications for `blobs` (as the simulator would, at most
    /// [`o365_sim::MAX_BLOBS_PER_POST`] per POST) round-robin to the relays' webhooks.
    pub async fn notify(&self, relays: &[&RelayProc], blobs: &[SimBlob]) -> anyhow::Result<()> {
        for (i, chunk) in blobs.chunks(o365_sim::MAX_BLOBS_PER_POST).enumerate() {
            let r = relays[i % relays.len()];
            let resp = self
                .http
                .post(format!("{}/webhook", r.public_url))
                .header("Webhook-AuthID", &r.auth_id)
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

/// A simulator serving `tenants`, `records_per_blob` records per published blob.
pub async fn start_sim(tenants: &[&str], records_per_blob: usize) -> anyhow::Result<Simulator> {
    SimBuilder::new()
        .tenants(tenants)
        .client_secret(SECRET)
        .configure(|c| c.records_per_blob = records_per_blob)
        .try_start()
        .await
}

/// A simulator serving `n` generated tenants ([`o365_sim::generated_tenant`]) and no other,
/// one record per published blob.
pub async fn start_sim_generated(n: usize) -> anyhow::Result<Simulator> {
    SimBuilder::new()
        .tenants::<&str>(&[])
        .client_secret(SECRET)
        .configure(|c| {
            c.generated_tenants = n;
            c.records_per_blob = 1;
        })
        .try_start()
        .await
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A running relay process; SIGKILLed when dropped.
pub struct RelayProc {
    process: RelayProcess,
    pub pid: u32,
    pub public_url: String,
    /// Its admin listener (`/metrics`).
    pub admin_url: String,
    /// What its webhook expects in `Webhook-AuthID`.
    pub auth_id: String,
}

impl RelayProc {
    /// Starts a relay (`o365-bench serve-relay`, or `--relay-bin` with `serve`) on the
    /// section's environment with `extra` variables set, and waits until `/readyz` answers 200
    /// (Redis and RabbitMQ reachable, topology declared). Its standard input is a pipe, so the
    /// relay stops with the benchmark however that ends.
    pub async fn spawn(ctx: &Ctx, s: &Section, extra: &[(&str, String)]) -> anyhow::Result<Self> {
        let (public_port, admin_port) = (free_port(), free_port());
        let log = ctx.dir.join(format!("relay-{}-{}.log", s.tag, unique()));
        let command = match &ctx.relay_bin {
            Some(bin) => RelayCommand::new(bin, &["serve"]),
            None => RelayCommand::new(std::env::current_exe()?, &["serve-relay"]),
        };
        let mut process = command
            .stdin_pipe()
            .env("RUST_LOG", "warn")
            .envs(ctx.relay_env(s, public_port, admin_port, extra).into_vars())
            .try_spawn(&log)
            .context("cannot start the relay process")?;
        let admin_url = format!("http://127.0.0.1:{admin_port}");
        if let Err(e) = process.try_wait_ready(&admin_url, READY_WAIT).await {
            process.sigkill();
            bail!("{e}: {}", tail(&process.logs(), 20));
        }
        Ok(RelayProc {
            pid: process.pid(),
            process,
            public_url: format!("http://127.0.0.1:{public_port}"),
            admin_url,
            auth_id: s.names.auth_id.clone(),
        })
    }

    /// Its `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(reqwest::get(format!("{}/metrics", self.admin_url))
            .await?
            .error_for_status()?
            .text()
            .await?)
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
        self.process.stop(STOP_GRACE).await;
    }
}
