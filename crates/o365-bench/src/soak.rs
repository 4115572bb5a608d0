//! `o365-bench soak`: several `o365-relay serve` processes (three by default) sharing one Redis
//! prefix, exchange and work queue, against one in-process simulator with three tenants, at a
//! steady rate with 10 % of the notifications lost, for N minutes — while replicas are
//! SIGKILLed and restarted, Redis is restarted once and the relays' RabbitMQ connections are
//! closed once (RELIABILITY.md, "Soak: three replicas").
//!
//! Pieces: the real `o365-relay` binary next to this one in the target directory (each replica
//! on fixed ports of its own, so a restart binds them again); in front of their webhooks a
//! round-robin TCP balancer standing in for the Kubernetes Service (a dead replica's
//! connections go to the next one); a durable sink queue bound `#` to the exchange, read by a
//! consumer that acks after counting and reconnects. Everything is named uniquely and removed
//! at the end, also when the run fails or is interrupted (ResourceGuard, the processes' drop).
//!
//! Figures: sent = distinct record `Id`s the simulator put into blobs; received = distinct
//! `message_id`s that reached the sink; lost = sent − received; duplicated = deliveries −
//! distinct. Recovery of a fault = from the fault until the replicas it touched answer
//! `/readyz` 200 (after a RabbitMQ cut: and each has a new connection to RabbitMQ) and, after
//! that, the received counter moves again.

use anyhow::{anyhow, bail, Context};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use o365_sim::{Faults, Simulator, CONTENT_TYPES};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use test_support::{
    process, sink, Names, RelayCommand, RelayEnv, RelayProcess, ResourceGuard, SimBuilder, Sink,
    SinkQueue, AMQP, TENANT_A, TENANT_B,
};
use tokio::net::{TcpListener, TcpStream};

/// The third tenant (the test harness names two).
const TENANT_C: &str = "c3d2e1f0-a9b8-4c7d-8e6f-5a4b3c2d1e0f";
const TENANTS: [&str; 3] = [TENANT_A, TENANT_B, TENANT_C];
const SECRET: &str = "soak-client-secret";
const AMQP_PORT: u16 = 5672;

#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Minutes of steady publishing (a drain follows).
    #[arg(long)]
    minutes: f64,
    /// Relay processes.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Blobs per second, round-robin over 3 tenants × 5 content types.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Records per blob.
    #[arg(long, default_value_t = 25)]
    records: usize,
    /// Share of notifications the simulator never delivers (reconciliation recovers them).
    #[arg(long, default_value_t = 0.1)]
    drop: f64,
    /// SIGKILL a random replica (and restart it) this often; a run shorter than this kills
    /// one at a quarter of the run.
    #[arg(long, default_value = "4m", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// The relays' `O365_RECONCILE_INTERVAL`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    reconcile_interval: Duration,
    /// The relays' `O365_RECONCILE_LOOKBACK` (also how much is re-relayed after Redis lost
    /// its data).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    lookback: Duration,
    /// How long to wait, after publishing stopped, for every record.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// The relay binary (default: `o365-relay` next to this binary).
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Keep the relays' logs also when nothing was lost.
    #[arg(long)]
    keep_logs: bool,
}

/// Runs the soak and prints its report; failure when a record was lost or the run could not
/// be carried out.
pub async fn run(args: SoakArgs) -> ExitCode {
    let outcome = tokio::select! {
        r = soak(args) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    match outcome {
        Ok(report) if report.lost == 0 && report.unexpected == 0 => ExitCode::SUCCESS,
        Ok(report) => {
            eprintln!(
                "o365-bench soak: {} of {} records lost, {} unexpected",
                report.lost, report.sent, report.unexpected
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("o365-bench soak: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

struct Outcome {
    sent: usize,
    lost: usize,
    unexpected: usize,
    crashes: u32,
}

async fn soak(args: SoakArgs) -> anyhow::Result<Outcome> {
    if args.replicas == 0 || args.rate <= 0.0 || args.minutes <= 0.0 || args.records == 0 {
        bail!("--replicas, --rate, --records and --minutes must be positive");
    }
    let bin = relay_bin(args.relay_bin.as_deref())?;
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let names = Names::new("soak");
    let q = o365_relay::pipeline::work_queue::QueueNames::new(&names.work_queue);
    let mut guard = ResourceGuard::for_relay(&names, [q.dead.clone()].into_iter().chain(q.retry));
    // The soak's own Redis (it is restarted mid-run, which must not touch anyone else's data);
    // stopped when the soak ends, whatever happens.
    let redis = Arc::new(SoakRedis::start()?);
    let dir = std::env::temp_dir().join(format!("o365-soak-{}", names.id));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let plan = plan(duration, args.kill_every);

    println!(
        "o365-bench soak — {} replicas of {} for {:.1} min: {} tenants × {} content types, {} blobs/s × {} records, {:.0} % of notifications dropped, reconcile every {}, look-back {}",
        args.replicas,
        bin.display(),
        args.minutes,
        TENANTS.len(),
        CONTENT_TYPES.len(),
        args.rate,
        args.records,
        args.drop * 100.0,
        humantime::format_duration(args.reconcile_interval),
        humantime::format_duration(args.lookback),
    );
    println!(
        "date {}; logs in {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        dir.display()
    );
    println!(
        "faults planned: {}",
        plan.iter()
            .map(|(at, f)| format!("{} at {}", f.name(), clock(*at)))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let sim = SimBuilder::new()
        .client_secret(SECRET)
        .tenants(&TENANTS)
        .try_start()
        .await?;
    let result = async {
        // The sink exists before any relay publishes (records are published mandatory).
        let declared = Sink::bind(AMQP, &names.exchange, &names.sink, SinkQueue::Durable)
            .await
            .context("RabbitMQ on 127.0.0.1:5672")?;
        let counts = Arc::new(Counts::default());
        let reader = tokio::spawn(read_sink(names.sink.clone(), counts.clone()));

        let balancer = Balancer::start().await?;
        let env = RelayEnv::new(&names, &sim.url())
            .redis_url(redis.url())
            .client_secret(SECRET)
            .public_url(format!("http://127.0.0.1:{}", balancer.port))
            .tenants(&TENANTS)
            .set("O365_RECONCILE_INTERVAL", secs(args.reconcile_interval))
            .set("O365_RECONCILE_LOOKBACK", secs(args.lookback))
            .set("O365_SHUTDOWN_TIMEOUT", "10s")
            .set("O365_LOG_FORMAT", "json");
        let mut fleet = Fleet {
            redis: redis.clone(),
            bin,
            dir: dir.clone(),
            id: names.id.clone(),
            env,
            slots: Vec::new(),
            procs: Vec::new(),
            crashes: 0,
            start: Instant::now(),
        };
        for i in 0..args.replicas {
            fleet.add_slot(i);
        }
        balancer.set_backends(fleet.slots.iter().map(|s| s.public_port).collect());
        for i in 0..args.replicas {
            fleet.spawn(i);
        }
        for i in 0..args.replicas {
            fleet.wait_ready(i, Duration::from_secs(90)).await?;
        }
        start_subscriptions(&sim, &fleet.slots[0].admin_url()).await?;
        sim.set_faults(Faults {
            drop_notification: args.drop,
            ..Faults::default()
        });

        // Steady publishing; faults on schedule; RSS and progress every second.
        fleet.start = Instant::now();
        let publisher = tokio::spawn(publish(sim.clone(), args.rate, args.records, duration));
        let mut watchers = Vec::new();
        let mut next = 0;
        let progress_every = if duration >= Duration::from_secs(600) {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(15)
        };
        let mut last_progress = Duration::ZERO;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let t = fleet.start.elapsed();
            fleet.sample().await;
            while next < plan.len() && plan[next].0 <= t {
                let watcher = fleet.fault(plan[next].1, &counts).await?;
                watchers.push(watcher);
                next += 1;
            }
            if t >= last_progress + progress_every {
                last_progress = t;
                progress(&fleet, &sim, &counts);
            }
            if t >= duration {
                break;
            }
        }
        let blobs = publisher.await.context("the publisher")?;
        let published_for = fleet.start.elapsed();

        // Drain: every distinct record the simulator put into a blob, or the timeout.
        let expected = sim.unique_record_ids();
        let drain_start = Instant::now();
        let mut drained = None;
        while drain_start.elapsed() < args.drain_timeout {
            if counts.missing(&expected) == 0 {
                drained = Some(drain_start.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            fleet.sample().await;
        }
        // Late duplicates.
        tokio::time::sleep(Duration::from_secs(5)).await;
        fleet.sample().await;

        let mut faults = Vec::new();
        for w in watchers {
            faults.push(w.await.context("a fault watcher")?);
        }
        let dead = match Connection::connect(AMQP, ConnectionProperties::default()).await {
            Ok(c) => {
                let d = sink::depth(&c, &q.dead).await;
                let _ = c.close(200, "bye".into()).await;
                d
            }
            Err(_) => None,
        };
        let stopped = fleet.stop().await;
        reader.abort();
        declared.close().await;

        let (received, deliveries, unexpected, reconnects) = counts.summary(&expected);
        let report = Report {
            args: &args,
            blobs,
            published_for,
            dropped: sim.notifications_dropped(),
            delivered: sim.notifications_delivered(),
            sent: expected.len(),
            received,
            deliveries,
            unexpected,
            drained,
            dead,
            faults,
            procs: &fleet.procs,
            stopped,
            crashes: fleet.crashes,
            tokens: TENANTS
                .iter()
                .map(|t| TenantCalls {
                    tenant: t,
                    tokens: sim.token_requests(t),
                    refused: sim.refused_token_requests(t),
                    calls: sim.management_calls(t),
                    max_per_minute: sim.max_calls_per_minute(t),
                })
                .collect(),
            content_gets: sim.content_gets(),
            list_calls: sim.list_calls(),
            sink_reconnects: reconnects,
        };
        report.print();
        Ok::<_, anyhow::Error>(Outcome {
            sent: report.sent,
            lost: report.sent - report.received,
            unexpected,
            crashes: fleet.crashes,
        })
    }
    .await;
    sim.stop().await;
    guard.release().await;
    match &result {
        Ok(o) if o.lost == 0 && o.unexpected == 0 && o.crashes == 0 && !args.keep_logs => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        _ => eprintln!("relay logs kept in {}", dir.display()),
    }
    result
}

/// `o365-relay` next to this binary, or the one given; an error saying how to build it.
fn relay_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()
            .context("where this binary is")?
            .with_file_name("o365-relay"),
    };
    if !bin.is_file() {
        bail!(
            "the relay binary {} is missing: build it first with `cargo build --bins` (or `cargo build --release --bins` for a release o365-bench), or pass --relay-bin",
            bin.display()
        );
    }
    Ok(bin)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// `m:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

// ---------------------------------------------------------------------------------------------
// The fault plan
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    RedisRestart,
    AmqpCut,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "SIGKILL a replica",
            Fault::RedisRestart => "Redis restart",
            Fault::AmqpCut => "RabbitMQ connections cut",
        }
    }
}

/// When each fault happens, from the start of publishing: a kill every `kill_every` (one at a
/// quarter of a shorter run), Redis restarted at half the run and the RabbitMQ connections cut
/// at three quarters; a kill within a minute of those two moves a minute past them, and none
/// falls in the last 10 s.
fn plan(duration: Duration, kill_every: Duration) -> Vec<(Duration, Fault)> {
    let redis = duration / 2;
    let amqp = duration * 3 / 4;
    let last = duration.saturating_sub(Duration::from_secs(10));
    let mut kills = Vec::new();
    if !kill_every.is_zero() {
        let mut t = kill_every;
        while t < last {
            kills.push(t);
            t += kill_every;
        }
    }
    if kills.is_empty() {
        kills.push(duration / 4);
    }
    let minute = Duration::from_secs(60);
    let mut plan: Vec<(Duration, Fault)> = Vec::new();
    for mut k in kills {
        for other in [redis, amqp] {
            if k.abs_diff(other) < minute && duration >= Duration::from_secs(300) {
                k = other + minute;
            }
        }
        if k < last && !plan.iter().any(|(t, _)| *t == k) {
            plan.push((k, Fault::Kill));
        }
    }
    plan.push((redis, Fault::RedisRestart));
    plan.push((amqp, Fault::AmqpCut));
    plan.sort_by_key(|(t, _)| *t);
    plan
}

// ---------------------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------------------

struct Slot {
    public_port: u16,
    admin_port: u16,
    current: Option<RelayProcess>,
    /// Index into `Fleet::procs` of the current process.
    stat: usize,
    starts: u32,
}

impl Slot {
    fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

/// One relay process from start to end.
struct ProcStat {
    replica: usize,
    pid: u32,
    started: Duration,
    rss_ready: Option<u64>,
    rss_1min: Option<u64>,
    rss_last: Option<u64>,
    ended: Option<(Duration, &'static str)>,
}

struct Fleet {
    bin: PathBuf,
    dir: PathBuf,
    id: String,
    env: RelayEnv,
    slots: Vec<Slot>,
    procs: Vec<ProcStat>,
    /// Processes that exited by themselves.
    crashes: u32,
    /// The start of publishing.
    start: Instant,
    /// The soak's own Redis, restarted by [`Fault::RedisRestart`].
    redis: Arc<SoakRedis>,
}

impl Fleet {
    fn add_slot(&mut self, i: usize) {
        let (public_port, admin_port) = (test_support::free_port(), test_support::free_port());
        debug_assert_eq!(i, self.slots.len());
        self.slots.push(Slot {
            public_port,
            admin_port,
            current: None,
            stat: 0,
            starts: 0,
        });
    }

    fn spawn(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        slot.starts += 1;
        let log = self.dir.join(format!("relay-{i}-{}.log", slot.starts));
        let p = RelayCommand::new(&self.bin, &["serve"])
            .inherit("PATH")
            .env("RUST_LOG", "info")
            .env("HOSTNAME", format!("soak-{}-r{i}-{}", self.id, slot.starts))
            .envs(
                self.env
                    .clone()
                    .listen_on(slot.public_port, slot.admin_port)
                    .into_vars(),
            )
            .spawn(log);
        self.procs.push(ProcStat {
            replica: i,
            pid: p.pid(),
            started: self.start.elapsed(),
            rss_ready: None,
            rss_1min: None,
            rss_last: vm_rss_kb(p.pid()),
            ended: None,
        });
        slot.stat = self.procs.len() - 1;
        slot.current = Some(p);
    }

    async fn wait_ready(&mut self, i: usize, wait: Duration) -> anyhow::Result<()> {
        let url = self.slots[i].admin_url();
        let deadline = Instant::now() + wait;
        loop {
            if process::readyz(&url).await {
                let stat = &mut self.procs[self.slots[i].stat];
                stat.rss_ready = vm_rss_kb(stat.pid);
                return Ok(());
            }
            let slot = &mut self.slots[i];
            if let Some(p) = slot.current.as_mut() {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!(
                        "replica {i} exited ({status}) before it was ready; log {}",
                        p.log.display()
                    );
                }
            }
            if Instant::now() >= deadline {
                bail!("replica {i} not ready within {wait:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn admin_urls(&self) -> Vec<String> {
        self.slots.iter().map(Slot::admin_url).collect()
    }

    fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|s| s.current.as_ref().map(RelayProcess::pid))
            .collect()
    }

    /// RSS of every live process; the one at readiness and after a minute once. A process that
    /// exited by itself (a crash: a finding) is reported and started again, as Kubernetes would.
    async fn sample(&mut self) {
        for i in 0..self.slots.len() {
            let exited = self.slots[i]
                .current
                .as_mut()
                .and_then(|p| p.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                let now = self.start.elapsed();
                let stat = &mut self.procs[self.slots[i].stat];
                stat.ended = Some((now, "EXITED BY ITSELF"));
                println!(
                    "[{}] replica {i} (pid {}) EXITED BY ITSELF ({status}); starting it again",
                    clock(now),
                    stat.pid
                );
                self.slots[i].current = None;
                self.crashes += 1;
                self.spawn(i);
            }
            let url = self.slots[i].admin_url();
            let stat = &mut self.procs[self.slots[i].stat];
            if stat.ended.is_some() {
                continue;
            }
            let rss = vm_rss_kb(stat.pid);
            if rss.is_some() {
                stat.rss_last = rss;
            }
            if stat.rss_ready.is_none() && process::readyz(&url).await {
                stat.rss_ready = vm_rss_kb(stat.pid);
            }
            if stat.rss_1min.is_none()
                && self.start.elapsed() >= stat.started + Duration::from_secs(60)
            {
                stat.rss_1min = rss;
            }
        }
    }

    /// Carries out `fault` now; the returned task measures the recovery.
    async fn fault(
        &mut self,
        fault: Fault,
        counts: &Arc<Counts>,
    ) -> anyhow::Result<tokio::task::JoinHandle<FaultRecord>> {
        let at = self.start.elapsed();
        let mut t0 = Instant::now();
        let (detail, check) = match fault {
            Fault::Kill => {
                let i = (uuid::Uuid::new_v4().as_u128() % self.slots.len() as u128) as usize;
                let now = self.start.elapsed();
                let slot = &mut self.slots[i];
                let stat = &mut self.procs[slot.stat];
                if let Some(rss) = vm_rss_kb(stat.pid) {
                    stat.rss_last = Some(rss);
                }
                let old = stat.pid;
                if let Some(mut p) = slot.current.take() {
                    p.sigkill();
                }
                stat.ended = Some((now, "SIGKILLed"));
                self.spawn(i);
                let new = self.procs[self.slots[i].stat].pid;
                (
                    format!("replica {i} (pid {old}), restarted at once as pid {new}"),
                    Check::Ready(vec![self.slots[i].admin_url()]),
                )
            }
            Fault::RedisRestart => {
                let down = self.redis.restart().await?;
                (
                    format!(
                        "`shutdown nosave`, started again, PING after {:.1} s (all keys lost)",
                        down.as_secs_f64()
                    ),
                    Check::Ready(self.admin_urls()),
                )
            }
            Fault::AmqpCut => {
                let pids = self.pids();
                let (began, closed) = cut_amqp(&pids)?;
                t0 = began;
                let n: usize = closed.values().map(HashSet::len).sum();
                (
                    format!(
                        "{n} connections of {} relays closed with `rabbitmqctl close_connection`",
                        pids.len()
                    ),
                    Check::Reconnected(self.admin_urls(), closed),
                )
            }
        };
        println!("[{}] {}: {detail}", clock(at), fault.name());
        Ok(tokio::spawn(watch_recovery(
            fault,
            at,
            detail,
            t0,
            check,
            counts.clone(),
        )))
    }

    /// SIGTERM to every live process; how many exited 0 within 30 s, of how many.
    async fn stop(&mut self) -> (usize, usize) {
        let now = self.start.elapsed();
        let mut ok = 0;
        let mut n = 0;
        for slot in &mut self.slots {
            let Some(mut p) = slot.current.take() else {
                continue;
            };
            n += 1;
            let stat = &mut self.procs[slot.stat];
            if let Some(rss) = vm_rss_kb(stat.pid) {
                stat.rss_last = Some(rss);
            }
            stat.ended = Some((now, "SIGTERM at the end"));
            p.sigterm();
            if p.wait_exit(Duration::from_secs(30))
                .await
                .is_some_and(|s| s.success())
            {
                ok += 1;
            }
        }
        (ok, n)
    }
}

/// `VmRSS` of `/proc/<pid>/status` in kB (proc(5)).
fn vm_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts every tenant's subscriptions with the balancer's webhook through one replica's admin
/// API, and checks the simulator has them enabled.
async fn start_subscriptions(sim: &Simulator, admin_url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    for t in TENANTS {
        let r = http
            .post(format!(
                "{admin_url}/admin/tenants/{t}/subscriptions/start?force=true"
            ))
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("subscriptions/start for {t}: {status} {body}");
        }
        let subs = sim.subscriptions(t);
        for ct in CONTENT_TYPES {
            if !subs
                .iter()
                .any(|s| s.content_type == ct && s.status == "enabled" && s.webhook.is_some())
            {
                bail!("{ct} of {t} not started with a webhook: {body}");
            }
        }
    }
    Ok(())
}

/// One blob every `1/rate` s, round-robin over the tenants and content types, for `duration`;
/// the number of blobs.
async fn publish(sim: Simulator, rate: f64, records: usize, duration: Duration) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        tick.tick().await;
        let i = n as usize;
        let tenant = TENANTS[i % TENANTS.len()];
        let ct = CONTENT_TYPES[(i / TENANTS.len()) % CONTENT_TYPES.len()];
        sim.publish(tenant, ct, 1, Some(records)).await;
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

/// Runs a command to the end; its standard output, or an error with what it printed.
pub(crate) fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A Redis server of the soak's own, on a free loopback port, keeping nothing on disk: the
/// soak restarts it (`shutdown nosave`), which on the machine's Redis would drop every other
/// user's keys. Shut down on drop. Section 8 ([`crate::dedup_memory`]) measures its memory in
/// one of these too.
pub(crate) struct SoakRedis {
    port: String,
    dir: PathBuf,
}

impl SoakRedis {
    pub(crate) fn start() -> anyhow::Result<SoakRedis> {
        let port = test_support::free_port().to_string();
        let dir = std::env::temp_dir().join(format!("o365-soak-redis-{port}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let redis = SoakRedis { port, dir };
        redis.launch()?;
        redis.wait_up(Duration::from_secs(30))?;
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `used_memory` of `INFO memory`, in bytes.
    pub(crate) fn used_memory(&self) -> anyhow::Result<u64> {
        let info = run_cmd(
            "redis-cli",
            &["-h", "127.0.0.1", "-p", &self.port, "info", "memory"],
        )?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix("used_memory:"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO memory: {info}"))
    }

    fn launch(&self) -> anyhow::Result<()> {
        let dir = self.dir.display().to_string();
        let log = self.dir.join("redis.log").display().to_string();
        run_cmd(
            "redis-server",
            &[
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
                "--logfile",
                &log,
            ],
        )?;
        Ok(())
    }

    fn up(&self) -> bool {
        run_cmd("redis-cli", &["-h", "127.0.0.1", "-p", &self.port, "ping"])
            .is_ok_and(|s| s.trim() == "PONG")
    }

    fn wait_up(&self, wait: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + wait;
        while !self.up() {
            if Instant::now() >= deadline {
                bail!(
                    "the soak's Redis (port {}) did not answer PING within {wait:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn shutdown(&self) {
        // The connection closes as Redis exits; redis-cli may report that as an error.
        let _ = run_cmd(
            "redis-cli",
            &["-h", "127.0.0.1", "-p", &self.port, "shutdown", "nosave"],
        );
    }

    /// `shutdown nosave`, start again, wait for PING; how long Redis was gone.
    async fn restart(&self) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        self.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.up() {
            if Instant::now() >= deadline {
                bail!("Redis did not shut down");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.launch()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.up() {
            if Instant::now() >= deadline {
                bail!("Redis did not answer PING within 30 s after its restart");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(t0.elapsed())
    }
}

impl Drop for SoakRedis {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Local ports of the TCP connections `pid` holds to RabbitMQ (its socket inodes in
/// `/proc/<pid>/fd`, matched in `/proc/net/tcp` and `tcp6`; proc(5)).
fn amqp_ports(pid: u32) -> HashSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            let (Some(local), Some(remote), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
                continue;
            };
            if port(remote) == Some(AMQP_PORT) && inodes.contains(*inode) {
                if let Some(p) = port(local) {
                    ports.insert(p);
                }
            }
        }
    }
    ports
}

/// Closes every RabbitMQ connection of the relay processes `pids` (found by the client's port;
/// no other connection, such as the sink's or another test's, is touched), all at once; when
/// the closing began and, per pid, the local ports closed.
fn cut_amqp(pids: &[u32]) -> anyhow::Result<(Instant, HashMap<u32, HashSet<u16>>)> {
    let mine: HashMap<u32, HashSet<u16>> = pids.iter().map(|&p| (p, amqp_ports(p))).collect();
    let ports: HashSet<u16> = mine.values().flatten().copied().collect();
    if ports.is_empty() {
        bail!("the relays hold no connection to RabbitMQ to cut");
    }
    let listing = run_cmd(
        "rabbitmqctl",
        &[
            "list_connections",
            "pid",
            "peer_port",
            "--no-table-headers",
            "--quiet",
        ],
    )?;
    let targets: Vec<&str> = listing
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let conn = f.next()?;
            let port = f.next()?.parse::<u16>().ok()?;
            ports.contains(&port).then_some(conn)
        })
        .collect();
    if targets.is_empty() {
        bail!("none of the relays' connections (client ports {ports:?}) is listed by rabbitmqctl");
    }
    // One `rabbitmqctl` per connection, side by side: each takes about a second to start.
    let began = Instant::now();
    let children: Vec<_> = targets
        .iter()
        .map(|conn| {
            Command::new("rabbitmqctl")
                .args(["close_connection", conn, "soak: connection cut on purpose"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect();
    for (conn, child) in targets.iter().zip(children) {
        let out = child
            .and_then(|c| c.wait_with_output())
            .context("run rabbitmqctl")?;
        if !out.status.success() {
            bail!(
                "rabbitmqctl close_connection {conn}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok((began, mine))
}

/// What a fault's recovery waits for.
enum Check {
    /// These admin URLs answer `/readyz` 200.
    Ready(Vec<String>),
    /// And each process holds a RabbitMQ connection other than those closed.
    Reconnected(Vec<String>, HashMap<u32, HashSet<u16>>),
}

impl Check {
    async fn holds(&self) -> bool {
        let urls = match self {
            Check::Ready(u) => u,
            Check::Reconnected(u, closed) => {
                let reconnected = closed
                    .iter()
                    .all(|(pid, old)| amqp_ports(*pid).difference(old).next().is_some());
                if !reconnected {
                    return false;
                }
                u
            }
        };
        for u in urls {
            if !process::readyz(u).await {
                return false;
            }
        }
        true
    }
}

struct FaultRecord {
    fault: Fault,
    at: Duration,
    detail: String,
    /// Until the replicas were ready (and reconnected).
    ready: Option<Duration>,
    /// Distinct records that arrived between the fault and readiness.
    during: u64,
    /// Until the received counter moved after readiness.
    recovery: Option<Duration>,
}

/// Polls every 100 ms, up to 10 minutes, until `check` holds and then the received counter
/// moves.
async fn watch_recovery(
    fault: Fault,
    at: Duration,
    detail: String,
    t0: Instant,
    check: Check,
    counts: Arc<Counts>,
) -> FaultRecord {
    let c0 = counts.distinct();
    let limit = Duration::from_secs(600);
    let mut ready = None;
    let mut at_ready = 0;
    let mut recovery = None;
    while t0.elapsed() < limit {
        match ready {
            None => {
                if check.holds().await {
                    ready = Some(t0.elapsed());
                    at_ready = counts.distinct();
                }
            }
            Some(_) => {
                if counts.distinct() > at_ready {
                    recovery = Some(t0.elapsed());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    FaultRecord {
        fault,
        at,
        detail,
        ready,
        during: if ready.is_some() { at_ready - c0 } else { 0 },
        recovery,
    }
}

// ---------------------------------------------------------------------------------------------
// The webhook's Service: a round-robin TCP balancer
// ---------------------------------------------------------------------------------------------

/// Spreads connections over the replicas' public ports in turn; a replica that refuses (dead,
/// restarting) is skipped, as a Kubernetes Service skips an unready pod.
struct Balancer {
    port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    async fn start() -> anyhow::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let backends: Arc<Mutex<Vec<u16>>> = Arc::default();
        let b = backends.clone();
        let task = tokio::spawn(async move {
            let next = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
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
        Ok(Balancer {
            port,
            backends,
            task,
        })
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

// ---------------------------------------------------------------------------------------------
// The sink
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    per_id: Mutex<HashMap<String, u32>>,
    distinct: AtomicU64,
    total: AtomicU64,
    reconnects: AtomicU64,
}

impl Counts {
    fn record(&self, id: String) {
        let mut m = self.per_id.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(id).or_insert(0);
        *n += 1;
        if *n == 1 {
            self.distinct.fetch_add(1, Ordering::SeqCst);
        }
        self.total.fetch_add(1, Ordering::SeqCst);
    }

    fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::SeqCst)
    }

    fn missing(&self, expected: &HashSet<String>) -> usize {
        let m = self.per_id.lock().unwrap_or_else(|e| e.into_inner());
        expected.iter().filter(|id| !m.contains_key(*id)).count()
    }

    /// (received of `expected`, deliveries, distinct ids nobody published, sink reconnects).
    fn summary(&self, expected: &HashSet<String>) -> (usize, u64, usize, u64) {
        let m = self.per_id.lock().unwrap_or_else(|e| e.into_inner());
        let received = expected.iter().filter(|id| m.contains_key(*id)).count();
        let unexpected = m.keys().filter(|id| !expected.contains(*id)).count();
        (
            received,
            self.total.load(Ordering::SeqCst),
            unexpected,
            self.reconnects.load(Ordering::SeqCst),
        )
    }
}

/// Reads the sink queue for ever, acking each record after counting it; reconnects when the
/// connection goes (a record delivered but not acked is delivered again).
async fn read_sink(queue: String, counts: Arc<Counts>) {
    loop {
        if let Err(e) = consume(&queue, &counts).await {
            eprintln!("sink reader: {e}; reconnecting");
        }
        counts.reconnects.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn consume(queue: &str, counts: &Counts) -> Result<(), lapin::Error> {
    let conn = Connection::connect(
        AMQP,
        ConnectionProperties::default().with_connection_name("o365-bench soak sink".into()),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("soak-{}", test_support::unique()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        counts.record(sink::message_id(&d));
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

fn progress(fleet: &Fleet, sim: &Simulator, counts: &Counts) {
    let rss: Vec<String> = fleet
        .slots
        .iter()
        .map(|s| {
            fleet.procs[s.stat]
                .rss_last
                .map_or("-".into(), |kb| format!("{:.1}", kb as f64 / 1024.0))
        })
        .collect();
    println!(
        "[{}] records published {} · received {} distinct, {} deliveries · notifications dropped {} · RSS MB {}",
        clock(fleet.start.elapsed()),
        sim.records_published(),
        counts.distinct(),
        counts.total.load(Ordering::SeqCst),
        sim.notifications_dropped(),
        rss.join(" / ")
    );
}

struct TenantCalls {
    tenant: &'static str,
    tokens: u64,
    refused: u64,
    calls: u64,
    max_per_minute: u64,
}

struct Report<'a> {
    args: &'a SoakArgs,
    blobs: u64,
    published_for: Duration,
    dropped: u64,
    delivered: u64,
    sent: usize,
    received: usize,
    deliveries: u64,
    unexpected: usize,
    drained: Option<Duration>,
    dead: Option<u32>,
    faults: Vec<FaultRecord>,
    procs: &'a [ProcStat],
    stopped: (usize, usize),
    crashes: u32,
    tokens: Vec<TenantCalls>,
    content_gets: u64,
    list_calls: u64,
    sink_reconnects: u64,
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or("–".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
}

fn secs_or(d: Option<Duration>, none: &str) -> String {
    d.map_or(none.into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

impl Report<'_> {
    fn print(&self) {
        let a = self.args;
        let lost = self.sent - self.received;
        println!(
            "\n## o365-bench soak: {} replicas, {:.1} min\n",
            a.replicas, a.minutes
        );
        println!("| figure | value |\n|---|---:|");
        let rows: Vec<(&str, String)> = vec![
            (
                "publishing",
                format!(
                    "{:.0} s, {} blobs ({} blobs/s × {} records, {} tenants × {} content types)",
                    self.published_for.as_secs_f64(),
                    self.blobs,
                    a.rate,
                    a.records,
                    TENANTS.len(),
                    CONTENT_TYPES.len()
                ),
            ),
            (
                "notifications dropped / delivered",
                format!("{} / {}", self.dropped, self.delivered),
            ),
            ("records sent (distinct Ids)", self.sent.to_string()),
            ("received (distinct)", self.received.to_string()),
            ("**lost**", format!("**{lost}**")),
            (
                "duplicated (deliveries − distinct)",
                format!(
                    "{} ({} deliveries)",
                    self.deliveries
                        .saturating_sub(self.received as u64 + self.unexpected as u64),
                    self.deliveries
                ),
            ),
            ("unexpected (never published)", self.unexpected.to_string()),
            (
                "drain (end of publishing → last record)",
                secs_or(self.drained, "not within the drain timeout"),
            ),
            (
                "dead-lettered blobs",
                self.dead.map_or("?".into(), |d| d.to_string()),
            ),
            (
                "content GETs / listing calls",
                format!("{} / {}", self.content_gets, self.list_calls),
            ),
            (
                "replicas exiting 0 on SIGTERM at the end",
                format!("{} of {}", self.stopped.0, self.stopped.1),
            ),
            (
                "replicas that exited by themselves",
                self.crashes.to_string(),
            ),
            ("sink reconnects", self.sink_reconnects.to_string()),
        ];
        for (k, v) in rows {
            println!("| {k} | {v} |");
        }

        println!("\n| # | at | fault | ready after | records during | recovery |");
        println!("|---:|---:|---|---:|---:|---:|");
        for (n, f) in self.faults.iter().enumerate() {
            println!(
                "| {} | {} | {}: {} | {} | {} | {} |",
                n + 1,
                clock(f.at),
                f.fault.name(),
                f.detail,
                secs_or(f.ready, "not ready"),
                f.during,
                secs_or(f.recovery, "not recovered")
            );
        }

        println!("\n| replica | pid | started | RSS at ready | after 1 min | at end | ended |");
        println!("|---:|---:|---:|---:|---:|---:|---|");
        for p in self.procs {
            let ended = p.ended.map_or("running".into(), |(t, how)| {
                format!("{} at {}", how, clock(t))
            });
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.replica,
                p.pid,
                clock(p.started),
                mb(p.rss_ready),
                mb(p.rss_1min),
                mb(p.rss_last),
                ended
            );
        }

        println!("\n| tenant | token requests | refused | Management API calls | most in 60 s |");
        println!("|---|---:|---:|---:|---:|");
        for t in &self.tokens {
            println!(
                "| {} | {} | {} | {} | {} |",
                t.tenant, t.tokens, t.refused, t.calls, t.max_per_minute
            );
        }
        println!(
            "\nSOAK-RESULT sent={} received={} lost={lost} duplicated={} unexpected={}",
            self.sent,
            self.received,
            self.deliveries
                .saturating_sub(self.received as u64 + self.unexpected as u64),
            self.unexpected
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_gets_one_of_each_fault() {
        let p = plan(Duration::from_secs(120), Duration::from_secs(240));
        let kinds: Vec<Fault> = p.iter().map(|(_, f)| *f).collect();
        assert_eq!(kinds, [Fault::Kill, Fault::RedisRestart, Fault::AmqpCut]);
        assert_eq!(p[0].0, Duration::from_secs(30));
    }

    #[test]
    fn kills_keep_a_minute_away_from_the_other_faults() {
        let p = plan(Duration::from_secs(3600), Duration::from_secs(240));
        let kills = p.iter().filter(|(_, f)| *f == Fault::Kill).count();
        assert_eq!(kills, 14);
        let others: Vec<Duration> = p
            .iter()
            .filter(|(_, f)| *f != Fault::Kill)
            .map(|(t, _)| *t)
            .collect();
        for (t, f) in &p {
            if *f == Fault::Kill {
                assert!(others
                    .iter()
                    .all(|o| t.abs_diff(*o) >= Duration::from_secs(60)));
                assert!(*t < Duration::from_secs(3590));
            }
        }
    }
}
