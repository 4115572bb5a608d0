//! `o365-bench` — measures o365-relay against the physical ceiling of this machine, side by
//! side in the same run (issue 5). Five sections:
//!
//! 1. webhook ingest vs a bare lapin confirmed publisher (same messages, same queue type,
//!    same number in flight);
//! 2. end to end (simulator blob → records confirmed on the exchange) vs a bare confirmed,
//!    pipelined publish of the same record bytes; relay CPU seconds per 100k records;
//! 3. token efficiency: three relay processes sharing Redis, two tenants;
//! 4. memory: peak RSS relaying one 256 MB blob, and at idle;
//! 5. reconciliation cost: 7 days × 5 content types, 10,000 blobs, 0 % and 10 % missing.
//!
//! The relay under test runs as a child process (`o365-bench` re-executes itself as
//! `o365-bench serve-relay`, which is `o365-relay serve` linked from the same library, so a
//! `cargo run --bin o365-bench` never measures a stale `o365-relay`; `--relay-bin PATH` uses a
//! real `o365-relay` binary instead). Its CPU and memory come from `/proc/<pid>`. The simulator,
//! the load generators, the ceilings and the sink consumer run in this process. Everything it
//! creates (queues, exchanges, Redis keys, processes) is removed at the end.
//!
//! `--quick` runs every section at tiny sizes in seconds (CI); there is no pass/fail on speed.

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use o365_relay::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use o365_relay::records::AuditRecord;
use o365_relay::sink::RecordSink;
use o365_relay::store::Store;
use o365_sim::{SimBlob, SimConfig, Simulator, CONTENT_TYPES};
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const TENANT_B: &str = "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";
const SECRET: &str = "bench-client-secret-value";
/// The relay's records per confirm round (src/worker.rs `BATCH`); the ceiling uses the same.
const BATCH: usize = 500;
/// The relay's default `O365_WORKER_CONCURRENCY`.
const WORKER_CONCURRENCY: usize = 16;
/// Concurrent webhook connections / publishes in flight in section 1.
const INGEST_CONCURRENCY: usize = 64;

#[derive(Parser, Debug)]
#[command(
    name = "o365-bench",
    about = "Benchmarks o365-relay against the machine's ceiling (issue 5)"
)]
struct Args {
    /// Tiny sizes, seconds in total (CI); no pass/fail on speed.
    #[arg(long)]
    quick: bool,
    /// Sections to run (comma-separated, 1-5).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5")]
    sections: Vec<u8>,
    /// Run this `o365-relay` binary (`<bin> serve`) instead of re-executing o365-bench.
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Seconds per ingest measurement (section 1); default 10 (quick: 1).
    #[arg(long)]
    ingest_secs: Option<f64>,
    /// Rounds of (ceiling, relay) in sections 1 and 2; the best round of each is reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// Blobs of 1,000 records in section 2; default 100 (quick: 4).
    #[arg(long)]
    e2e_blobs: Option<usize>,
    /// Blob size in MB for section 4; default 256 (quick: 8).
    #[arg(long)]
    blob_mb: Option<usize>,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Internal: run the relay exactly as `o365-relay serve` does (configuration from the
    /// environment); also stops when stdin closes, so it never outlives the benchmark.
    #[command(hide = true)]
    ServeRelay,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Some(Cmd::ServeRelay) = args.command {
        return rt.block_on(serve_relay());
    }
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o365-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------------------------------
// The relay child
// ------------------------------------------------------------------------------------------

/// `o365-relay serve`, from the same library code (src/main.rs `serve`).
async fn serve_relay() -> ExitCode {
    let settings = match o365_relay::config::Settings::from_env() {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("o365-bench serve-relay: configuration is invalid:");
            for line in &errors.0 {
                eprintln!("  {line}");
            }
            return ExitCode::from(2);
        }
    };
    o365_relay::telemetry::init(settings.log_format);
    let app = match o365_relay::app::Application::build(settings).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("o365-bench serve-relay: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let token = app.shutdown_token();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = rx => {}
        }
        token.cancel();
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// A running relay process.
struct RelayProc {
    child: Child,
    pid: u32,
    public_url: String,
    admin_url: String,
    log: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl RelayProc {
    async fn spawn(ctx: &Ctx, names: &Names, extra: &[(&str, String)]) -> anyhow::Result<Self> {
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
        let mut vars: Vec<(&str, String)> = vec![
            ("O365_CLIENT_ID", CLIENT_ID.into()),
            ("O365_CLIENT_SECRET", SECRET.into()),
            ("O365_WEBHOOK_AUTH_ID", ctx.auth_id.clone()),
            ("O365_PUBLIC_URL", public_url.clone()),
            ("O365_TENANTS", format!("{TENANT_A},{TENANT_B}")),
            ("O365_LOGIN_URL", names.sim_url.clone()),
            ("O365_MANAGE_URL", names.sim_url.clone()),
            ("O365_LISTEN", format!("127.0.0.1:{public_port}")),
            ("O365_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}")),
            ("O365_REDIS_URL", ctx.redis_url.clone()),
            ("O365_REDIS_PREFIX", names.prefix.clone()),
            ("O365_AMQP_URL", ctx.amqp_url.clone()),
            ("O365_AMQP_EXCHANGE", names.exchange.clone()),
            ("O365_AMQP_WORK_QUEUE", names.work.clone()),
            ("O365_AMQP_QUEUE_TYPE", "quorum".into()),
            ("O365_ENABLE_RECONCILER", "false".into()),
            ("O365_ENABLE_KEEPER", "false".into()),
            ("O365_LOG_FORMAT", "json".into()),
            ("RUST_LOG", "warn".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(vk, _)| vk != k);
            vars.push((k, v.clone()));
        }
        cmd.envs(vars)
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
        // Ready = /readyz 200 (Redis and RabbitMQ reachable, topology declared).
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
    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(&format!("/proc/{}/stat", self.pid))
    }

    /// (VmHWM, VmRSS) in kB.
    fn memory_kb(&self) -> (u64, u64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM, then SIGKILL after 10 s.
    async fn stop(mut self) {
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

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a `/proc/<pid>/stat`, in seconds.
fn proc_cpu_secs(path: &str) -> f64 {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime is field 14, stime 15 (1-based) = index 11, 12 after the name.
    (ticks(11) + ticks(12)) / clk_tck()
}

/// The RabbitMQ server process (`beam.smp`), to account its CPU.
fn rabbit_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == "beam.smp").then_some(pid)
    })
}

/// (busy, total) jiffies of the whole machine from `/proc/stat`.
fn machine_jiffies() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

/// CPU seconds of the participants at one instant.
#[derive(Clone, Copy)]
struct CpuSnap {
    relay: f64,
    bench: f64,
    rabbit: f64,
    busy: f64,
    total: f64,
}

impl CpuSnap {
    fn take(relay: Option<&RelayProc>, rabbit: Option<u32>) -> CpuSnap {
        let (busy, total) = machine_jiffies();
        CpuSnap {
            relay: relay.map_or(0.0, |r| r.cpu_secs()),
            bench: proc_cpu_secs("/proc/self/stat"),
            rabbit: rabbit.map_or(0.0, |p| proc_cpu_secs(&format!("/proc/{p}/stat"))),
            busy,
            total,
        }
    }

    /// "relay X µs + this process Y µs + RabbitMQ Z µs per op; machine N % busy".
    fn per_op(&self, later: &CpuSnap, ops: f64, this: &str) -> String {
        let us = |a: f64, b: f64| (b - a) / ops.max(1.0) * 1e6;
        let busy = (later.busy - self.busy) / (later.total - self.total).max(1.0) * 100.0;
        let relay = us(self.relay, later.relay);
        let mut parts = Vec::new();
        if relay > 0.0 {
            parts.push(format!("relay {relay:.0} µs"));
        }
        parts.push(format!("{this} {:.0} µs", us(self.bench, later.bench)));
        if later.rabbit > 0.0 {
            parts.push(format!("RabbitMQ {:.0} µs", us(self.rabbit, later.rabbit)));
        }
        format!(
            "CPU per op: {}; machine {busy:.0} % busy",
            parts.join(" + ")
        )
    }
}

// ------------------------------------------------------------------------------------------
// Context, names, clean-up
// ------------------------------------------------------------------------------------------

struct Ctx {
    quick: bool,
    run_id: String,
    auth_id: String,
    amqp_url: String,
    redis_url: String,
    relay_bin: Option<PathBuf>,
    http: reqwest::Client,
    amqp: Connection,
    dir: PathBuf,
}

/// Per-section names, all unique to the run.
struct Names {
    tag: String,
    exchange: String,
    work: String,
    sink: String,
    extra_queues: Vec<String>,
    prefix: String,
    sim_url: String,
}

impl Ctx {
    fn names(&self, tag: &str, sim: &Simulator) -> Names {
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

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.amqp.create_channel().await?)
    }

    /// Topic exchange + a durable classic sink queue bound `#` (declared before the relay
    /// publishes: records are published mandatory).
    async fn declare_sink(&self, n: &Names) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        o365_relay::broker::bind_all_records(
            &ch,
            &n.exchange,
            &n.sink,
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

    /// Deletes every queue, the exchange and every Redis key of the section.
    async fn cleanup(&self, n: &Names) {
        if let Ok(ch) = self.channel().await {
            let mut queues = vec![n.sink.clone(), n.work.clone(), format!("{}.dead", n.work)];
            queues.extend(o365_relay::work_queue::retry_queue_names(&n.work));
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
}

async fn start_sim(tenants: &[&str], records_per_blob: usize) -> anyhow::Result<Simulator> {
    let config = SimConfig {
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        records_per_blob,
        ..SimConfig::default()
    };
    Simulator::start(config, "127.0.0.1:0").await
}

/// The notification Microsoft would send for `blobs`.
fn notification(blobs: &[SimBlob]) -> Vec<u8> {
    let v: Vec<serde_json::Value> = blobs
        .iter()
        .map(|b| {
            serde_json::json!({
                "tenantId": b.tenant_id, "clientId": CLIENT_ID, "contentType": b.content_type,
                "contentId": b.content_id, "contentUri": b.content_uri,
                "contentCreated": b.content_created, "contentExpiration": b.content_expiration,
            })
        })
        .collect();
    serde_json::to_vec(&v).expect("json")
}

/// POSTs notifications for `blobs` (at most 100 per POST, as Microsoft does) round-robin to
/// the relays' webhooks.
async fn notify(ctx: &Ctx, relays: &[&RelayProc], blobs: &[SimBlob]) -> anyhow::Result<()> {
    for (i, chunk) in blobs.chunks(100).enumerate() {
        let r = relays[i % relays.len()];
        let resp = ctx
            .http
            .post(format!("{}/webhook", r.public_url))
            .header("Webhook-AuthID", &ctx.auth_id)
            .header("Content-Type", "application/json; utf-8")
            .body(notification(chunk))
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

/// A Microsoft-shaped content id (`{12}${12}${hex}{workload}${hex}$04`).
fn content_id() -> String {
    let n = 100_000_000_000u64 + (rand::random::<u64>() % 900_000_000_000);
    format!(
        "{n:012}${n:012}${}spo2015043022${}$04",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Counts messages arriving on a queue (no-ack consumer) until dropped.
struct SinkCounter {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    channel: Channel,
}

impl SinkCounter {
    async fn start(ctx: &Ctx, queue: &str) -> anyhow::Result<SinkCounter> {
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

    fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
    }

    /// Waits until `want` messages arrived; `Err` after `timeout`.
    async fn wait_for(&self, want: u64, timeout: Duration) -> anyhow::Result<Instant> {
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

    async fn stop(self) {
        let _ = self.channel.close(200, "ok".into()).await;
        self.task.abort();
    }
}

// ------------------------------------------------------------------------------------------
// Output
// ------------------------------------------------------------------------------------------

/// One line of the final table.
struct Row {
    section: &'static str,
    measure: String,
    relay: String,
    ceiling: String,
    ratio: String,
    target: String,
}

impl Row {
    fn new(section: &'static str, measure: impl Into<String>, relay: impl Into<String>) -> Row {
        Row {
            section,
            measure: measure.into(),
            relay: relay.into(),
            ceiling: "".into(),
            ratio: "".into(),
            target: "".into(),
        }
    }
    fn ceiling(mut self, c: impl Into<String>) -> Row {
        self.ceiling = c.into();
        self
    }
    fn ratio(mut self, r: f64, target: f64) -> Row {
        self.ratio = format!("{r:.2}");
        self.target = format!(
            "≥ {target} {}",
            if r >= target { "(met)" } else { "(missed)" }
        );
        self
    }
    fn target(mut self, t: impl Into<String>) -> Row {
        self.target = t.into();
        self
    }
}

fn print_table(rows: &[Row]) {
    let head = [
        "section",
        "measure",
        "o365-relay",
        "ceiling",
        "ratio",
        "target",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.section,
                r.measure.as_str(),
                r.relay.as_str(),
                r.ceiling.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for i in 0..6 {
            w[i] = w[i].max(c[i].chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let parts: Vec<String> = (0..6)
            .map(|i| format!("{}{}", c[i], " ".repeat(w[i] - c[i].chars().count())))
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    println!("{}", line(head));
    let sep: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
    println!("|-{}-|", sep.join("-|-"));
    for c in cells {
        println!("{}", line(c));
    }
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{model}, {cpus} CPUs, {mem_gb:.1} GiB RAM, load average {load}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

// ------------------------------------------------------------------------------------------
// Main
// ------------------------------------------------------------------------------------------

async fn run(args: Args) -> anyhow::Result<()> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_string();
    let dir = std::env::temp_dir().join(format!("o365-bench-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let amqp = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .with_context(|| format!("RabbitMQ is not reachable at {}", args.amqp_url))?;
    let store = Store::new(&args.redis_url, "o365bench:")?;
    store
        .ping()
        .await
        .with_context(|| format!("Redis is not reachable at {}", args.redis_url))?;
    let ctx = Ctx {
        quick: args.quick,
        run_id,
        auth_id: format!("bench-auth-{}", uuid::Uuid::new_v4().simple()),
        amqp_url: args.amqp_url.clone(),
        redis_url: args.redis_url.clone(),
        relay_bin: args.relay_bin.clone(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(INGEST_CONCURRENCY * 2)
            .build()?,
        amqp,
        dir: dir.clone(),
    };
    let started = Instant::now();
    println!(
        "o365-bench{} — {}",
        if ctx.quick { " --quick" } else { "" },
        machine()
    );
    println!(
        "date {}; relay under test: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        match &ctx.relay_bin {
            Some(b) => format!("{} serve", b.display()),
            None => "o365-bench serve-relay (= o365-relay serve)".into(),
        }
    );
    let rounds = args.rounds.unwrap_or(if ctx.quick { 1 } else { 2 }).max(1);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for s in &args.sections {
        println!();
        let r = match s {
            1 => {
                let secs = args
                    .ingest_secs
                    .unwrap_or(if ctx.quick { 1.0 } else { 10.0 });
                section_ingest(&ctx, Duration::from_secs_f64(secs), rounds).await
            }
            2 => {
                let blobs = args.e2e_blobs.unwrap_or(if ctx.quick { 4 } else { 100 });
                section_e2e(&ctx, blobs, rounds).await
            }
            3 => section_tokens(&ctx, if ctx.quick { 40 } else { 2000 }).await,
            4 => {
                section_memory(
                    &ctx,
                    args.blob_mb.unwrap_or(if ctx.quick { 8 } else { 256 }),
                )
                .await
            }
            5 => section_reconcile(&ctx, if ctx.quick { 500 } else { 10_000 }).await,
            other => Err(anyhow::anyhow!("no section {other}")),
        };
        match r {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                println!("section {s} FAILED: {e:#}");
                failures.push(format!("section {s}: {e:#}"));
            }
        }
    }
    let _ = ctx.amqp.close(200, "bench done".into()).await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\n## o365-bench results ({:.0} s)\n",
        started.elapsed().as_secs_f64()
    );
    print_table(&rows);
    if !failures.is_empty() {
        bail!(
            "{} section(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 1. Webhook ingest
// ------------------------------------------------------------------------------------------

struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    n: usize,
    errors: u64,
}

fn summarise(mut lat: Vec<Duration>, elapsed: Duration, errors: u64) -> Load {
    lat.sort();
    Load {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        n: lat.len(),
        errors,
    }
}

fn single_blob_notification(sim_url: &str, tenant: &str) -> Vec<u8> {
    let id = content_id();
    let now = chrono::Utc::now();
    let body = serde_json::json!([{
        "tenantId": tenant, "clientId": CLIENT_ID, "contentType": "Audit.SharePoint",
        "contentId": id,
        "contentUri": format!("{sim_url}/api/v1.0/{tenant}/activity/feed/audit/{id}"),
        "contentCreated": now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "contentExpiration": (now + chrono::Duration::days(7)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    }]);
    serde_json::to_vec(&body).expect("json")
}

/// One keep-alive HTTP/1.1 connection posting notifications until `end`: a lean client
/// (one write per request, minimal response parsing), because on a 2-core machine the load
/// generator's CPU is taken from the relay under test (reqwest cost ~56 µs per request here).
async fn post_loop(
    addr: std::net::SocketAddr,
    auth: String,
    sim_url: String,
    end: Instant,
) -> (Vec<Duration>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = vec![0u8; 8192];
    let mut req = Vec::with_capacity(2048);
    while Instant::now() < end {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn.insert(s)
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let body = single_blob_notification(&sim_url, TENANT_A);
        req.clear();
        req.extend_from_slice(
            format!(
                "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nWebhook-AuthID: {auth}\r\nContent-Type: application/json; utf-8\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        req.extend_from_slice(&body);
        let t0 = Instant::now();
        let ok = async {
            s.write_all(&req).await.ok()?;
            let mut have = 0;
            loop {
                if have == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = s.read(&mut buf[have..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
                let Some(head) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let headers = std::str::from_utf8(&buf[..head]).ok()?;
                let len: usize = headers
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if have >= head + 4 + len {
                    return Some(headers.starts_with("HTTP/1.1 200"));
                }
            }
        }
        .await;
        match ok {
            Some(true) => lat.push(t0.elapsed()),
            Some(false) => errors += 1,
            None => {
                errors += 1;
                conn = None;
            }
        }
    }
    (lat, errors)
}

/// 64 connections posting single-blob notifications for `dur`.
async fn webhook_load(ctx: &Ctx, relay: &RelayProc, sim_url: &str, dur: Duration) -> Load {
    let addr: std::net::SocketAddr = relay
        .public_url
        .trim_start_matches("http://")
        .parse()
        .expect("relay address");
    let started = Instant::now();
    let end = started + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..INGEST_CONCURRENCY {
        tasks.spawn(post_loop(
            addr,
            ctx.auth_id.clone(),
            sim_url.to_string(),
            end,
        ));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    while let Some(Ok((mut l, e))) = tasks.join_next().await {
        lat.append(&mut l);
        errors += e;
    }
    summarise(lat, started.elapsed(), errors)
}

/// The ceiling: the same work messages, published with confirms by bare lapin to a quorum
/// queue, 64 in flight (64 publish-then-await-confirm loops on one channel, as the relay's
/// webhook handlers share its one publisher channel).
async fn bare_work_publish(
    ctx: &Ctx,
    queue: &str,
    sim_url: &str,
    dur: Duration,
) -> anyhow::Result<Load> {
    let conn = Connection::connect(&ctx.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let started = Instant::now();
    let end = started + dur;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..INGEST_CONCURRENCY {
        let (ch, queue, sim_url, errors) = (
            ch.clone(),
            queue.to_string(),
            sim_url.to_string(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let id = content_id();
                let item = WorkItem {
                    tenant_id: TenantId::parse(TENANT_A).expect("tenant"),
                    content_type: ContentType::SharePoint,
                    content_uri: format!("{sim_url}/api/v1.0/{TENANT_A}/activity/feed/audit/{id}"),
                    content_id: ContentId::parse(&id).expect("content id"),
                    content_created: Some(chrono::Utc::now().to_rfc3339()),
                    content_expiration: Some(chrono::Utc::now().to_rfc3339()),
                    source: Source::Webhook,
                };
                let t0 = Instant::now();
                let (body, props) = o365_relay::work_queue::encode(&item).expect("encodable");
                let ok = match ch
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        props,
                    )
                    .await
                {
                    Ok(c) => matches!(c.await, Ok(lapin::Confirmation::Ack(None))),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t0.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(Ok(mut l)) = tasks.join_next().await {
        lat.append(&mut l);
    }
    let load = summarise(lat, started.elapsed(), errors.load(Ordering::Relaxed));
    let _ = conn.close(200, "ok".into()).await;
    Ok(load)
}

async fn declare_quorum(ctx: &Ctx, queue: &str) -> anyhow::Result<()> {
    let ch = ctx.channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
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

async fn section_ingest(ctx: &Ctx, dur: Duration, rounds: usize) -> anyhow::Result<Vec<Row>> {
    println!(
        "1. webhook ingest: {INGEST_CONCURRENCY} connections, single-blob notifications, {:.0} s per measurement, {rounds} round(s)",
        dur.as_secs_f64()
    );
    let sim = start_sim(&[TENANT_A], 1).await?;
    let mut names = ctx.names("ingest", &sim);
    let ceiling_queue = format!("bench.{}.ingest.ceiling", ctx.run_id);
    names.extra_queues.push(ceiling_queue.clone());
    let result = async {
        ctx.declare_sink(&names).await?;
        declare_quorum(ctx, &ceiling_queue).await?;
        let relay =
            RelayProc::spawn(ctx, &names, &[("O365_ENABLE_WORKERS", "false".into())]).await?;
        let sim_url = sim.url();
        // Warm up both paths (connections, JIT-free but lazy allocations, queue leaders).
        let warm = Duration::from_millis(if ctx.quick { 200 } else { 1000 });
        webhook_load(ctx, &relay, &sim_url, warm).await;
        bare_work_publish(ctx, &ceiling_queue, &sim_url, warm).await?;
        let (mut best_relay, mut best_ceiling): (Option<Load>, Option<Load>) = (None, None);
        let mut cpu = 0.0;
        let mut accepted = 0usize;
        let rabbit = rabbit_pid();
        for round in 1..=rounds {
            let s0 = CpuSnap::take(None, rabbit);
            let c = bare_work_publish(ctx, &ceiling_queue, &sim_url, dur).await?;
            let s1 = CpuSnap::take(None, rabbit);
            let cpu0 = relay.cpu_secs();
            let s2 = CpuSnap::take(Some(&relay), rabbit);
            let r = webhook_load(ctx, &relay, &sim_url, dur).await;
            let s3 = CpuSnap::take(Some(&relay), rabbit);
            cpu += relay.cpu_secs() - cpu0;
            accepted += r.n;
            println!(
                "   round {round}: relay {:.0}/s (p50 {}, p99 {}, {} errors) | bare lapin {:.0}/s (p50 {}, p99 {}, {} errors)",
                r.rate, ms(r.p50), ms(r.p99), r.errors, c.rate, ms(c.p50), ms(c.p99), c.errors
            );
            println!(
                "     relay path   {}",
                s2.per_op(&s3, r.n as f64, "HTTP load generator")
            );
            println!(
                "     ceiling path {}",
                s0.per_op(&s1, c.n as f64, "bare lapin publisher")
            );
            if best_relay.as_ref().is_none_or(|b| r.rate > b.rate) {
                best_relay = Some(r);
            }
            if best_ceiling.as_ref().is_none_or(|b| c.rate > b.rate) {
                best_ceiling = Some(c);
            }
        }
        relay.stop().await;
        let (r, c) = (best_relay.expect("rounds"), best_ceiling.expect("rounds"));
        if r.errors > 0 {
            println!("   warning: {} webhook requests were not answered 200", r.errors);
        }
        println!(
            "   relay CPU {:.2} s per 10k notifications",
            cpu / accepted.max(1) as f64 * 10_000.0
        );
        Ok::<_, anyhow::Error>(vec![
            Row::new("1 ingest", "notifications/s (64 conns)", format!("{:.0}", r.rate))
                .ceiling(format!("{:.0}", c.rate))
                .ratio(r.rate / c.rate, 0.8),
            Row::new("1 ingest", "latency p50", ms(r.p50)).ceiling(ms(c.p50)),
            Row::new("1 ingest", "latency p99", ms(r.p99)).ceiling(ms(c.p99)),
        ])
    }
    .await;
    ctx.cleanup(&names).await;
    sim.stop().await;
    result
}

// ------------------------------------------------------------------------------------------
// 2. End to end
// ------------------------------------------------------------------------------------------

/// A record as the relay publishes it: routing key, body, properties.
struct Prepared {
    routing_key: String,
    raw: Bytes,
    props: lapin::BasicProperties,
}

/// What the relay publishes for `blobs`: each distinct record once (the relay de-duplicates
/// across blobs), grouped per blob, with the relay's properties and headers.
/// `seen` spans rounds: the simulator repeats records of a round's last blobs in the next
/// round's first ones, and the relay (rightly) publishes those only once.
fn prepare(blobs: &[SimBlob], seen: &mut HashSet<String>) -> Vec<Vec<Prepared>> {
    blobs
        .iter()
        .map(|b| {
            b.records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let rec = AuditRecord::parse(Bytes::from(r.clone()), i).ok()?;
                    if !seen.insert(rec.id.clone()) {
                        return None;
                    }
                    let item = WorkItem {
                        tenant_id: TenantId::parse(&b.tenant_id).ok()?,
                        content_type: b.content_type.parse().ok()?,
                        content_id: ContentId::parse(&b.content_id).ok()?,
                        content_uri: b.content_uri.clone(),
                        content_created: None,
                        content_expiration: None,
                        source: Source::Webhook,
                    };
                    Some(Prepared {
                        routing_key: RecordSink::routing_key(&item),
                        props: RecordSink::properties(&item, &rec),
                        raw: rec.raw,
                    })
                })
                .collect()
        })
        .collect()
}

/// The ceiling: bare confirmed publish of the same records to the same exchange, batches of
/// 500 pipelined (publish all, then await all confirms), blobs handled 16 at a time on one
/// channel — the relay's structure minus fetching, parsing and Redis.
async fn bare_record_publish(
    ctx: &Ctx,
    exchange: &str,
    blobs: Arc<Vec<Vec<Prepared>>>,
) -> anyhow::Result<()> {
    let conn = Connection::connect(&ctx.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WORKER_CONCURRENCY.min(blobs.len()) {
        let (ch, blobs, next, exchange) = (
            ch.clone(),
            blobs.clone(),
            next.clone(),
            exchange.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(blob) = blobs.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                for batch in blob.chunks(BATCH) {
                    let mut pending = Vec::with_capacity(batch.len());
                    for p in batch {
                        pending.push(
                            ch.basic_publish(
                                exchange.as_str().into(),
                                p.routing_key.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                &p.raw,
                                p.props.clone(),
                            )
                            .await?,
                        );
                    }
                    for c in pending {
                        if !matches!(c.await?, lapin::Confirmation::Ack(None)) {
                            bail!("bare publish not confirmed");
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

fn avg_record_bytes(blobs: &[SimBlob]) -> f64 {
    let (n, bytes) = blobs
        .iter()
        .flat_map(|b| &b.records)
        .fold((0usize, 0usize), |(n, s), r| (n + 1, s + r.len()));
    bytes as f64 / n.max(1) as f64
}

async fn section_e2e(ctx: &Ctx, n_blobs: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let per_blob = 1000;
    println!("2. end to end: {n_blobs} blobs × {per_blob} records, worker concurrency {WORKER_CONCURRENCY}, {rounds} round(s)");
    let sim = start_sim(&[TENANT_A], per_blob).await?;
    let names = ctx.names("e2e", &sim);
    let result = async {
        ctx.declare_sink(&names).await?;
        let relay = RelayProc::spawn(ctx, &names, &[]).await?;
        let sink = SinkCounter::start(ctx, &names.sink).await?;
        let mut best: Option<(f64, f64, u64)> = None; // (relay rec/s, cpu s per 100k, records)
        let mut best_ceiling: Option<f64> = None;
        let mut avg = 0.0;
        let mut seen = HashSet::new();
        let rabbit = rabbit_pid();
        for round in 1..=rounds {
            // Fresh blobs every round (the relay would skip relayed ones).
            let mut blobs = Vec::new();
            for i in 0..n_blobs {
                let ct = CONTENT_TYPES[i % CONTENT_TYPES.len()];
                blobs.extend(sim.publish(TENANT_A, ct, 1, None).await);
            }
            avg = avg_record_bytes(&blobs);
            let prepared = prepare(&blobs, &mut seen);
            let want: u64 = prepared.iter().map(|b| b.len() as u64).sum();

            // Ceiling first.
            sink.reset();
            let prepared = Arc::new(prepared);
            let s0 = CpuSnap::take(None, rabbit);
            let t0 = Instant::now();
            bare_record_publish(ctx, &names.exchange, prepared.clone()).await?;
            let t1 = sink.wait_for(want, Duration::from_secs(300)).await?;
            let s1 = CpuSnap::take(None, rabbit);
            let ceiling = want as f64 / (t1 - t0).as_secs_f64();
            tokio::time::sleep(Duration::from_millis(200)).await;

            // The relay: notify, then wait for every distinct record on the sink.
            sink.reset();
            let cpu0 = relay.cpu_secs();
            let s2 = CpuSnap::take(Some(&relay), rabbit);
            let t0 = Instant::now();
            notify(ctx, &[&relay], &blobs).await?;
            let t1 = sink.wait_for(want, Duration::from_secs(600)).await?;
            let s3 = CpuSnap::take(Some(&relay), rabbit);
            let cpu = relay.cpu_secs() - cpu0;
            let rate = want as f64 / (t1 - t0).as_secs_f64();
            let cpu100k = cpu / want as f64 * 100_000.0;
            println!(
                "   round {round}: {want} distinct records (avg {avg:.0} B): relay {rate:.0} rec/s, {cpu100k:.2} CPU s/100k | bare publish {ceiling:.0} rec/s"
            );
            println!(
                "     relay path   {}",
                s2.per_op(&s3, want as f64, "simulator + sink consumer")
            );
            println!(
                "     ceiling path {}",
                s0.per_op(&s1, want as f64, "bare publisher + sink consumer")
            );
            if best.is_none_or(|b| rate > b.0) {
                best = Some((rate, cpu100k, want));
            }
            if best_ceiling.is_none_or(|b| ceiling > b) {
                best_ceiling = Some(ceiling);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        sink.stop().await;
        relay.stop().await;
        let (rate, cpu100k, _) = best.expect("rounds");
        let ceiling = best_ceiling.expect("rounds");
        Ok::<_, anyhow::Error>(vec![
            Row::new(
                "2 end to end",
                format!("records/s ({n_blobs}×{per_blob}, ~{avg:.0} B)"),
                format!("{rate:.0}"),
            )
            .ceiling(format!("{ceiling:.0}"))
            .ratio(rate / ceiling, 0.7),
            Row::new("2 end to end", "relay CPU s per 100k records", format!("{cpu100k:.2}")),
        ])
    }
    .await;
    ctx.cleanup(&names).await;
    sim.stop().await;
    result
}

// ------------------------------------------------------------------------------------------
// 3. Token efficiency
// ------------------------------------------------------------------------------------------

async fn section_tokens(ctx: &Ctx, n_blobs: usize) -> anyhow::Result<Vec<Row>> {
    println!("3. token efficiency: 3 relay processes sharing Redis, 2 tenants, {n_blobs} blobs");
    let sim = start_sim(&[TENANT_A, TENANT_B], 5).await?;
    let names = ctx.names("tokens", &sim);
    let result = async {
        ctx.declare_sink(&names).await?;
        let mut relays = Vec::new();
        for _ in 0..3 {
            relays.push(RelayProc::spawn(ctx, &names, &[]).await?);
        }
        let sink = SinkCounter::start(ctx, &names.sink).await?;
        let mut blobs = Vec::new();
        for (i, t) in [TENANT_A, TENANT_B].iter().enumerate() {
            let mine = n_blobs / 2 + if i == 0 { n_blobs % 2 } else { 0 };
            for (j, ct) in CONTENT_TYPES.iter().enumerate() {
                let k = mine / 5 + usize::from(j < mine % 5);
                blobs.extend(sim.publish(t, ct, k, None).await);
            }
        }
        let want = sim.unique_record_ids().len() as u64;
        let t0 = Instant::now();
        let refs: Vec<&RelayProc> = relays.iter().collect();
        notify(ctx, &refs, &blobs).await?;
        let t1 = sink.wait_for(want, Duration::from_secs(600)).await?;
        let (a, b) = (sim.token_requests(TENANT_A), sim.token_requests(TENANT_B));
        println!(
            "   {} blobs, {want} records relayed in {:.1} s by 3 processes; content GETs {}; token requests: tenant A {a}, tenant B {b} (token lifetime 1 h)",
            blobs.len(),
            (t1 - t0).as_secs_f64(),
            sim.content_gets()
        );
        sink.stop().await;
        for r in relays {
            r.stop().await;
        }
        let ok = a == 1 && b == 1;
        Ok::<_, anyhow::Error>(vec![Row::new(
            "3 tokens",
            format!("token requests per tenant ({} blobs, 3 procs)", blobs.len()),
            format!("{a} / {b}"),
        )
        .target(format!(
            "1 each per lifetime {}",
            if ok { "(met)" } else { "(missed)" }
        ))])
    }
    .await;
    ctx.cleanup(&names).await;
    sim.stop().await;
    result
}

// ------------------------------------------------------------------------------------------
// 4. Memory
// ------------------------------------------------------------------------------------------

/// ~1 KB records in Microsoft's shape (SharePoint FileAccessed), each a distinct `Id`.
fn big_records(total_bytes: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(total_bytes / 1000 + 1);
    let mut size = 0;
    let pad = "x".repeat(560);
    let mut i = 0u64;
    while size < total_bytes {
        let r = format!(
            r#"{{"CreationTime":"2026-11-26T04:12:00","Id":"{}","Operation":"FileAccessed","OrganizationId":"{TENANT_A}","RecordType":6,"UserKey":"i:0h.f|membership|1003200096971f55@live.com","UserType":0,"Version":1,"Workload":"SharePoint","ClientIP":"203.0.113.{}","ObjectId":"https://contoso.sharepoint.com/sites/finance/Shared Documents/{pad}/report-{i}.xlsx","UserId":"megan.bowen@contoso.onmicrosoft.com","EventSource":"SharePoint","ItemType":"File","ListItemUniqueId":"{}","Site":"d5180cfc-3479-44d6-b410-8c985ac894e3","UserAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64)","WebId":"8f5a3b1c-2d4e-4f60-8a9b-0c1d2e3f4a5b","SourceFileExtension":"xlsx","SourceFileName":"report-{i}.xlsx"}}"#,
            uuid::Uuid::new_v4(),
            i % 250,
            uuid::Uuid::new_v4(),
        );
        size += r.len() + 1;
        out.push(r);
        i += 1;
    }
    out
}

async fn section_memory(ctx: &Ctx, blob_mb: usize) -> anyhow::Result<Vec<Row>> {
    println!("4. memory: one {blob_mb} MB blob of ~1 KB records, relay as a child process");
    let sim = start_sim(&[TENANT_A], 1).await?;
    let names = ctx.names("memory", &sim);
    let result = async {
        ctx.declare_sink(&names).await?;
        let relay = RelayProc::spawn(ctx, &names, &[]).await?;
        let sink = SinkCounter::start(ctx, &names.sink).await?;
        tokio::time::sleep(Duration::from_millis(if ctx.quick { 500 } else { 2000 })).await;
        let (idle_hwm, idle_rss) = relay.memory_kb();
        let records = big_records(blob_mb * 1024 * 1024);
        let want = records.len() as u64;
        let blob = sim.publish_raw(TENANT_A, "Audit.SharePoint", records).await;
        let peak = Arc::new(Mutex::new(0u64));
        let sampling = {
            let (pid, peak) = (relay.pid, peak.clone());
            tokio::spawn(async move {
                loop {
                    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                    if let Some(kb) = s
                        .lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        let mut p = peak.lock().expect("peak");
                        *p = (*p).max(kb);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let t0 = Instant::now();
        notify(ctx, &[&relay], std::slice::from_ref(&blob)).await?;
        drop(blob);
        let t1 = sink.wait_for(want, Duration::from_secs(900)).await?;
        sampling.abort();
        let (hwm, rss_after) = relay.memory_kb();
        println!(
            "   {want} records ({blob_mb} MB) relayed in {:.1} s; idle RSS {} (HWM at idle {}), peak RSS {} (sampled max {}), RSS after {}",
            (t1 - t0).as_secs_f64(),
            mb(idle_rss),
            mb(idle_hwm),
            mb(hwm),
            mb(*peak.lock().expect("peak")),
            mb(rss_after),
        );
        sink.stop().await;
        relay.stop().await;
        let above = hwm.saturating_sub(idle_rss);
        Ok::<_, anyhow::Error>(vec![
            Row::new("4 memory", "RSS at idle", mb(idle_rss)),
            Row::new(
                "4 memory",
                format!("peak RSS, one {blob_mb} MB blob"),
                mb(hwm),
            ),
            Row::new("4 memory", "peak above idle", mb(above)).target(format!(
                "≤ 64 MB {}",
                if above <= 64 * 1024 { "(met)" } else { "(missed)" }
            )),
        ])
    }
    .await;
    ctx.cleanup(&names).await;
    sim.stop().await;
    result
}

// ------------------------------------------------------------------------------------------
// 5. Reconciliation cost
// ------------------------------------------------------------------------------------------

async fn section_reconcile(ctx: &Ctx, n_blobs: usize) -> anyhow::Result<Vec<Row>> {
    println!("5. reconciliation: 7 days × 5 content types, one tenant, {n_blobs} blobs available");
    let sim = start_sim(&[TENANT_A], 1).await?;
    let names = ctx.names("reconcile", &sim);
    let result = async {
        // In-process relay (no listeners, no loops): the reconciler is called directly.
        let public_url = format!("http://127.0.0.1:{}", free_port()?);
        let vars: Vec<(String, String)> = [
            ("O365_CLIENT_ID", CLIENT_ID.to_string()),
            ("O365_CLIENT_SECRET", SECRET.into()),
            ("O365_WEBHOOK_AUTH_ID", ctx.auth_id.clone()),
            ("O365_PUBLIC_URL", public_url),
            ("O365_TENANTS", TENANT_A.into()),
            ("O365_LOGIN_URL", names.sim_url.clone()),
            ("O365_MANAGE_URL", names.sim_url.clone()),
            ("O365_REDIS_URL", ctx.redis_url.clone()),
            ("O365_REDIS_PREFIX", names.prefix.clone()),
            ("O365_AMQP_URL", ctx.amqp_url.clone()),
            ("O365_AMQP_EXCHANGE", names.exchange.clone()),
            ("O365_AMQP_WORK_QUEUE", names.work.clone()),
            ("O365_RECONCILE_LOOKBACK", "7d".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let settings = o365_relay::config::Settings::from_vars(vars)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let relay = o365_relay::app::Parts::new(settings)?;
        relay.broker.ensure_connected().await?;
        let tenant = TenantId::parse(TENANT_A).map_err(|e| anyhow::anyhow!(e))?;
        // Listing needs enabled subscriptions; started without a webhook, so publishing
        // content notifies nobody.
        for ct in ContentType::ALL {
            relay
                .management
                .start_subscription(&tenant, ct, None)
                .await?;
        }
        let mut blobs = Vec::new();
        for (j, ct) in CONTENT_TYPES.iter().enumerate() {
            let k = n_blobs / 5 + usize::from(j < n_blobs % 5);
            blobs.extend(sim.publish(TENANT_A, ct, k, None).await);
        }
        // Mark 90 % relayed (10 % missing), as the workers would have.
        let missing_every = 10;
        let mark = |b: &SimBlob| {
            let relay = relay.clone();
            let tenant = tenant.clone();
            let id = ContentId::parse(&b.content_id).expect("content id");
            async move {
                relay
                    .store
                    .dedup()
                    .mark_relayed(&tenant, &id, Duration::from_secs(3600))
                    .await
            }
        };
        let marks: Vec<_> = blobs
            .iter()
            .enumerate()
            .filter(|(i, _)| i % missing_every != 0)
            .map(|(_, b)| mark(b))
            .collect();
        for chunk in futures_util::stream::iter(marks).buffer_unordered(64).collect::<Vec<_>>().await {
            chunk?;
        }
        // The reconciler's windows end at `now` in whole seconds: let the newest blobs fall in.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The token is fetched before timing (one request, reported in section 3).
        relay.tokens.get(&tenant).await?;
        let page = SimConfig::default().page_size;
        let mut rows = Vec::new();
        for case in ["10 % missing", "nothing missing"] {
            if case == "nothing missing" {
                let rest: Vec<_> = blobs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % missing_every == 0)
                    .map(|(_, b)| mark(b))
                    .collect();
                for r in futures_util::stream::iter(rest).buffer_unordered(64).collect::<Vec<_>>().await {
                    r?;
                }
            }
            let calls0 = sim.management_calls(TENANT_A);
            let lists0 = sim.list_calls();
            let t0 = Instant::now();
            let stats = relay.reconciler().pass().await;
            let wall = t0.elapsed();
            let calls = sim.management_calls(TENANT_A) - calls0;
            let lists = sim.list_calls() - lists0;
            println!(
                "   {case}: {:.2} s, {calls} Management API calls ({lists} subscriptions/content pages of ≤ {page}), listed {}, missing {}, enqueued {}, errors {}",
                wall.as_secs_f64(),
                stats.listed,
                stats.missing,
                stats.enqueued,
                stats.errors
            );
            if stats.errors > 0 {
                bail!("reconciliation reported {} errors", stats.errors);
            }
            rows.push(Row::new(
                "5 reconcile",
                format!("7 d × 5 types, {n_blobs} blobs, {case}"),
                format!("{:.2} s, {calls} calls, {} enqueued", wall.as_secs_f64(), stats.enqueued),
            ));
        }
        relay.broker.close().await;
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    ctx.cleanup(&names).await;
    sim.stop().await;
    result
}
