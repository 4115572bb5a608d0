//! Section 9, the scale curve: records/s end to end — simulator blobs of 1,000 records
//! notified round-robin to the relays' webhooks, until every distinct record (by message id) is
//! on a sink queue bound to the exchange — with 1, 2 and 3 relay processes, each against a
//! standalone redis-server of the section's own and against a Redis Cluster of three masters with
//! a replica each (`test_support::RedisCluster`, stopped when the section ends). Both are
//! configured alike (no persistence) and serve nothing else, so `INFO cpu` counts only the relays'
//! work. For every cell: the CPU each component spent per record (relays from `/proc/<pid>/stat`,
//! Redis from `INFO cpu` of every master and, separately, every replica, RabbitMQ from
//! `/proc/<pid>/stat` of the broker's `beam.smp`), how busy that made the machine, and what binds
//! first. The reference line is section 2's bare confirmed publish of the same records.
//!
//! Six tenants, chosen so that each cluster master serves two of them (a tenant's keys share one
//! slot, so tenants, not records, spread over the shards); the standalone cells use the same
//! six. Every measurement relays blobs it never saw before, with relay processes started for it,
//! on a Redis emptied for it (`FLUSHALL`; both Redis are the section's own).

use crate::e2e::{avg_record_bytes, bare_record_publish, prepare, PER_BLOB};
use crate::harness::{start_sim, Ctx, RelayProc, Section};
use crate::procfs::{cpu_secs, machine_jiffies, rabbit_pid_on};
use crate::report::Row;
use crate::soak::SoakRedis;
use anyhow::Context;
use o365_sim::{SimBlob, Simulator, CONTENT_TYPES, MAX_BLOBS_PER_POST};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_support::sink::Tally;
use test_support::{RedisCluster, Sink};

/// Relay processes per measurement.
const REPLICAS: [usize; 3] = [1, 2, 3];
/// With `--quick` (CI: the code path, not the curve): one relay against each topology.
const QUICK_REPLICAS: [usize; 1] = [1];
/// Tenants notified; a multiple of the cluster's masters.
const TENANTS: usize = 6;
/// Masters of the cluster (each with one replica: `RedisCluster::start`).
const MASTERS: usize = 3;
/// Blobs per notification (at most [`MAX_BLOBS_PER_POST`]): the relay's default per-tenant
/// concurrency (`O365_TENANT_CONCURRENCY`).
const POST_BLOBS: usize = 4;
const _: () = assert!(POST_BLOBS <= MAX_BLOBS_PER_POST);
/// How long one measurement may take before it fails.
const CELL_TIMEOUT: Duration = Duration::from_secs(600);
/// Above this share of its capacity a component is called saturated.
const SATURATED: f64 = 0.85;

/// One Redis server whose `INFO cpu` is read.
struct Server {
    port_or_url: String,
    conn: redis::aio::MultiplexedConnection,
}

impl Server {
    /// `FLUSHALL`: the server is the section's own.
    async fn flush(&mut self) -> anyhow::Result<()> {
        redis::cmd("FLUSHALL")
            .query_async::<()>(&mut self.conn)
            .await
            .with_context(|| format!("{}: FLUSHALL", self.port_or_url))
    }

    async fn connect(url: &str) -> anyhow::Result<Server> {
        let client = redis::Client::open(url)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("Redis is not reachable at {url}"))?;
        Ok(Server {
            port_or_url: url.to_string(),
            conn,
        })
    }

    /// `used_cpu_sys + used_cpu_user` in microseconds.
    async fn cpu_usec(&mut self) -> anyhow::Result<f64> {
        crate::e2e::redis_cpu_us(&mut self.conn)
            .await
            .with_context(|| self.port_or_url.clone())
    }
}

/// The Redis a relay is measured against.
enum Redis {
    /// A redis-server of the section's own (no persistence, like the cluster's nodes).
    Standalone { server: SoakRedis, conn: Server },
    /// A cluster of the section's own: its masters (the relay's work) and replicas (the
    /// replication stream), each read on its own.
    Cluster {
        cluster: RedisCluster,
        masters: Vec<Server>,
        replicas: Vec<Server>,
    },
}

/// Redis CPU at one instant, in microseconds.
struct RedisCpu {
    /// Each master on its own (the busiest one binds first).
    per_master: Vec<f64>,
    /// Summed over the replicas.
    replicas: f64,
}

impl Redis {
    fn label(&self) -> &'static str {
        match self {
            Redis::Standalone { .. } => "standalone",
            Redis::Cluster { .. } => "cluster 3×2",
        }
    }

    /// The relays' `O365_REDIS_MODE` and `O365_REDIS_URL`.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Redis::Standalone { server, .. } => vec![
                ("O365_REDIS_MODE", "standalone".to_string()),
                ("O365_REDIS_URL", server.url()),
            ],
            Redis::Cluster { cluster, .. } => vec![
                ("O365_REDIS_MODE", "cluster".to_string()),
                ("O365_REDIS_URL", cluster.seed_urls()),
            ],
        }
    }

    /// Empties every master (the replicas follow): each measurement starts from an empty Redis,
    /// so that no cell inherits the de-duplication buckets of the cells before it (a lookup
    /// walks a tenant-hour's bucket tree, deeper the more records the hour holds).
    async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Redis::Standalone { conn, .. } => conn.flush().await,
            Redis::Cluster { masters, .. } => {
                for m in masters.iter_mut() {
                    m.flush().await?;
                }
                Ok(())
            }
        }
    }

    async fn cpu(&mut self) -> anyhow::Result<RedisCpu> {
        match self {
            Redis::Standalone { conn, .. } => Ok(RedisCpu {
                per_master: vec![conn.cpu_usec().await?],
                replicas: 0.0,
            }),
            Redis::Cluster {
                masters, replicas, ..
            } => {
                let mut per_master = Vec::new();
                for m in masters.iter_mut() {
                    per_master.push(m.cpu_usec().await?);
                }
                let mut repl = 0.0;
                for r in replicas.iter_mut() {
                    repl += r.cpu_usec().await?;
                }
                Ok(RedisCpu {
                    per_master,
                    replicas: repl,
                })
            }
        }
    }
}

/// CPU of everything at one instant.
struct Snap {
    at: Instant,
    relays: f64,
    redis: RedisCpu,
    rabbit: f64,
    bench: f64,
    busy: f64,
    total: f64,
}

async fn snap(
    relays: &[RelayProc],
    redis: &mut Redis,
    rabbit: Option<u32>,
) -> anyhow::Result<Snap> {
    let redis = redis.cpu().await?;
    let (busy, total) = machine_jiffies();
    Ok(Snap {
        at: Instant::now(),
        relays: relays.iter().map(RelayProc::cpu_secs).sum(),
        redis,
        rabbit: rabbit.map_or(0.0, |p| cpu_secs(&format!("/proc/{p}/stat"))),
        bench: cpu_secs("/proc/self/stat"),
        busy,
        total,
    })
}

/// One measurement: N relays against one Redis.
#[derive(Clone, Debug)]
struct Cell {
    /// Distinct records relayed.
    records: u64,
    /// Deliveries on the sink beyond one per record (0 expected).
    duplicates: u64,
    rate: f64,
    /// CPU µs per record.
    relay_us: f64,
    redis_us: f64,
    replicas_us: f64,
    rabbit_us: f64,
    bench_us: f64,
    /// The busiest Redis master's share of its one core.
    redis_core: f64,
    /// Shares of the machine's cores.
    relay_share: f64,
    redis_share: f64,
    rabbit_share: f64,
    bench_share: f64,
    /// Components summed over cores × wall time, and the machine as `/proc/stat` saw it (others'
    /// work included).
    machine: f64,
    machine_proc: f64,
}

impl Cell {
    /// From CPU snapshots `a` (before the first notification) and `b` (after the last record
    /// arrived); `elapsed`: from the first notification to the last distinct record.
    fn measure(a: &Snap, b: &Snap, records: u64, duplicates: u64, elapsed: Duration) -> Cell {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let wall = (b.at - a.at).as_secs_f64();
        let n = records.max(1) as f64;
        let relay = b.relays - a.relays;
        let per_master: Vec<f64> = b
            .redis
            .per_master
            .iter()
            .zip(&a.redis.per_master)
            .map(|(b, a)| (b - a) / 1e6)
            .collect();
        let redis: f64 = per_master.iter().sum();
        let busiest = per_master.iter().copied().fold(0.0, f64::max);
        let replicas = (b.redis.replicas - a.redis.replicas) / 1e6;
        let rabbit = b.rabbit - a.rabbit;
        let bench = b.bench - a.bench;
        Cell {
            records,
            duplicates,
            rate: n / elapsed.as_secs_f64(),
            relay_us: relay / n * 1e6,
            redis_us: redis / n * 1e6,
            replicas_us: replicas / n * 1e6,
            rabbit_us: rabbit / n * 1e6,
            bench_us: bench / n * 1e6,
            redis_core: busiest / wall,
            relay_share: relay / (cores * wall),
            redis_share: (redis + replicas) / (cores * wall),
            rabbit_share: rabbit / (cores * wall),
            bench_share: bench / (cores * wall),
            machine: (relay + redis + replicas + rabbit + bench) / (cores * wall),
            machine_proc: (b.busy - a.busy) / (b.total - a.total).max(1.0),
        }
    }

    /// What binds first: one Redis core when its busiest server nears 100 % of it; else the
    /// machine's cores when they are saturated, naming the component with the largest share;
    /// else that component.
    fn binds(&self) -> String {
        let pct = |x: f64| format!("{:.0} %", x * 100.0);
        if self.redis_core >= SATURATED {
            return format!("one Redis core ({})", pct(self.redis_core));
        }
        let (who, share) = [
            ("relays", self.relay_share),
            ("Redis", self.redis_share),
            ("RabbitMQ", self.rabbit_share),
            ("simulator + sink", self.bench_share),
        ]
        .into_iter()
        .fold(("", 0.0), |m, c| if c.1 > m.1 { c } else { m });
        let busy = self.machine.max(self.machine_proc);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        if busy >= SATURATED {
            format!(
                "the machine's {cores} cores ({} busy; {who} {})",
                pct(busy),
                pct(share)
            )
        } else {
            format!("{who} ({}; machine {})", pct(share), pct(busy))
        }
    }

    fn line(&self) -> String {
        format!(
            "{} records ({} duplicate deliveries): {:.0} rec/s; CPU µs/record: relays {:.1}, Redis masters {:.1}{}, RabbitMQ {:.1}, simulator + sink {:.1}; busiest Redis master {:.0} % of a core; machine {:.0} % (components) / {:.0} % (/proc/stat); binds: {}",
            self.records,
            self.duplicates,
            self.rate,
            self.relay_us,
            self.redis_us,
            if self.replicas_us > 0.0 {
                format!(" (+ replicas {:.1})", self.replicas_us)
            } else {
                String::new()
            },
            self.rabbit_us,
            self.bench_us,
            self.redis_core * 100.0,
            self.machine * 100.0,
            self.machine_proc * 100.0,
            self.binds()
        )
    }
}

/// One Redis topology: the section (names, clean-up), its sink and the relays' environment.
struct Target {
    redis: Redis,
    section: Section,
    sink: Sink,
    /// Deliveries on the sink by message id (the record's `Id`), since the last reset.
    tally: Tally,
    env: Vec<(&'static str, String)>,
}

impl Target {
    async fn new(
        ctx: &Ctx,
        sim: &Simulator,
        redis: Redis,
        tenants: &[String],
    ) -> anyhow::Result<Target> {
        let tag = match redis {
            Redis::Standalone { .. } => "scale-standalone",
            Redis::Cluster { .. } => "scale-cluster",
        };
        let section = ctx.section(tag, sim);
        let mut env = vec![("O365_TENANTS", tenants.join(","))];
        env.extend(redis.env());
        let sink = match ctx.sink(&section).await {
            Ok(s) => s,
            Err(e) => {
                section.cleanup().await;
                return Err(e);
            }
        };
        let tally = match sink.tally().await {
            Ok(t) => t,
            Err(e) => {
                sink.close().await;
                section.cleanup().await;
                return Err(e.into());
            }
        };
        Ok(Target {
            redis,
            section,
            sink,
            tally,
            env,
        })
    }

    /// Removes the section's queues and exchange; the Redis servers (the standalone one and the
    /// cluster's nodes) are stopped and their files removed when `self.redis` drops.
    async fn close(self) {
        drop(self.tally);
        self.sink.close().await;
        self.section.cleanup().await;
    }

    /// Counts from zero again.
    fn reset(&self) {
        let mut r = self
            .tally
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.per_id.clear();
        r.total = 0;
    }

    /// (distinct records, deliveries) since the last reset.
    fn counts(&self) -> (u64, u64) {
        let r = self
            .tally
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (r.per_id.len() as u64, r.total)
    }

    /// Waits until `want` distinct records arrived, looking every 2 ms; when they did.
    async fn wait_distinct(&self, want: u64) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + CELL_TIMEOUT;
        loop {
            let (distinct, _) = self.counts();
            if distinct >= want {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "only {distinct} of {want} distinct records arrived within {CELL_TIMEOUT:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Relays `blobs` with `replicas` relay processes, from the first notification to the last
    /// distinct record on the sink.
    async fn measure(
        &mut self,
        ctx: &Ctx,
        replicas: usize,
        blobs: &[SimBlob],
        rabbit: Option<u32>,
    ) -> anyhow::Result<Cell> {
        // Distinct records: the simulator repeats some records of a blob in the next blob of its
        // tenant and content type, and the relay publishes them once. Redis is emptied first,
        // so records of earlier measurements count again.
        let want = blobs
            .iter()
            .flat_map(|b| &b.record_ids)
            .collect::<HashSet<_>>()
            .len() as u64;
        self.redis.flush().await?;
        let mut relays = Vec::new();
        for _ in 0..replicas {
            match RelayProc::spawn(ctx, &self.section, &self.env).await {
                Ok(r) => relays.push(r),
                Err(e) => {
                    futures_util::future::join_all(relays.into_iter().map(RelayProc::stop)).await;
                    return Err(e);
                }
            }
        }
        let r = self.relay(ctx, &relays, blobs, want, rabbit).await;
        futures_util::future::join_all(relays.into_iter().map(RelayProc::stop)).await;
        let (a, b, elapsed) = r?;
        // Late duplicates (a redelivered blob) would arrive now.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (distinct, total) = self.counts();
        Ok(Cell::measure(&a, &b, want, total - distinct, elapsed))
    }

    async fn relay(
        &mut self,
        ctx: &Ctx,
        relays: &[RelayProc],
        blobs: &[SimBlob],
        want: u64,
        rabbit: Option<u32>,
    ) -> anyhow::Result<(Snap, Snap, Duration)> {
        // Let the relays' start-up work (topology, first Redis round trips) settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.reset();
        let a = snap(relays, &mut self.redis, rabbit).await?;
        let t0 = Instant::now();
        for (i, chunk) in posts(blobs).into_iter().enumerate() {
            ctx.notify(&[&relays[i % relays.len()]], chunk).await?;
        }
        let t1 = self.wait_distinct(want).await?;
        let b = snap(relays, &mut self.redis, rabbit).await?;
        Ok((a, b, t1 - t0))
    }
}

/// The notifications for `blobs`, as Microsoft sends them: one tenant per POST, here
/// [`POST_BLOBS`] blobs each, the tenants' POSTs interleaved so that the work queue holds every
/// tenant's blobs from the start (a tenant's blobs in a row would be deferred by the relay's
/// per-tenant concurrency). The caller sends them round-robin over the relays' webhooks.
fn posts(blobs: &[SimBlob]) -> Vec<&[SimBlob]> {
    let per_tenant: Vec<Vec<&[SimBlob]>> = blobs
        .chunk_by(|a, b| a.tenant_id == b.tenant_id)
        .map(|bs| bs.chunks(POST_BLOBS).collect())
        .collect();
    let longest = per_tenant.iter().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| per_tenant.iter().filter_map(move |t| t.get(i).copied()))
        .collect()
}

/// `n` fresh blobs of [`PER_BLOB`] records, spread evenly over the tenants (each tenant's
/// together, over the content types in turn).
async fn fresh_blobs(sim: &Simulator, tenants: &[String], n: usize) -> Vec<SimBlob> {
    let mut blobs = Vec::with_capacity(n);
    for (k, t) in tenants.iter().enumerate() {
        let mine = n / tenants.len() + usize::from(k < n % tenants.len());
        for j in 0..mine {
            let ct = CONTENT_TYPES[j % CONTENT_TYPES.len()];
            blobs.extend(sim.publish(t, ct, 1, None).await);
        }
    }
    blobs
}

/// [`TENANTS`] simulator tenants, the same number on each master of `cluster`.
async fn spread_tenants(cluster: &RedisCluster) -> anyhow::Result<Vec<String>> {
    let masters = cluster.masters().await;
    let per_master = TENANTS / masters.len().max(1);
    let mut taken: BTreeMap<u16, usize> = BTreeMap::new();
    let mut tenants = Vec::new();
    for i in 0..10_000 {
        let t = o365_sim::generated_tenant(i);
        // Cluster mode keys carry the tenant id as their hash tag.
        let port = cluster.master_for_key(&format!("{{{t}}}")).await;
        let n = taken.entry(port).or_default();
        if *n < per_master {
            *n += 1;
            tenants.push(t);
            if tenants.len() == TENANTS {
                return Ok(tenants);
            }
        }
    }
    anyhow::bail!("no {TENANTS} tenants spread over the cluster's {masters:?}")
}

/// Starts the cluster (the harness panics when it cannot: turned into this section's error).
async fn start_cluster() -> anyhow::Result<Redis> {
    let cluster = tokio::spawn(RedisCluster::start_with(MASTERS, 1))
        .await
        .map_err(|e| anyhow::anyhow!("the Redis cluster did not start: {e}"))?;
    let mut masters = Vec::new();
    for p in cluster.masters().await {
        masters.push(Server::connect(&format!("redis://127.0.0.1:{p}")).await?);
    }
    let mut replicas = Vec::new();
    for p in cluster.replicas().await {
        replicas.push(Server::connect(&format!("redis://127.0.0.1:{p}")).await?);
    }
    anyhow::ensure!(
        masters.len() == MASTERS && replicas.len() == MASTERS,
        "the cluster has {} masters and {} replicas, not {MASTERS} and {MASTERS}",
        masters.len(),
        replicas.len()
    );
    Ok(Redis::Cluster {
        cluster,
        masters,
        replicas,
    })
}

/// Starts the standalone redis-server.
async fn start_standalone() -> anyhow::Result<Redis> {
    let server = tokio::task::spawn_blocking(SoakRedis::start)
        .await
        .map_err(|e| anyhow::anyhow!("the standalone Redis did not start: {e}"))?
        .context("start the section's own redis-server")?;
    let conn = Server::connect(&server.url()).await?;
    Ok(Redis::Standalone { server, conn })
}

pub async fn run(ctx: &Ctx, n_blobs: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let cluster = start_cluster().await?;
    let Redis::Cluster { cluster: c, .. } = &cluster else {
        unreachable!("start_cluster starts a cluster")
    };
    let tenants = spread_tenants(c).await?;
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let standalone = start_standalone().await?;
    let sim = start_sim(&names, PER_BLOB).await?;
    let mut targets = Vec::new();
    for redis in [standalone, cluster] {
        match Target::new(ctx, &sim, redis, &tenants).await {
            Ok(t) => targets.push(t),
            Err(e) => {
                for t in targets {
                    t.close().await;
                }
                sim.stop().await;
                return Err(e);
            }
        }
    }
    let replicas: &[usize] = if ctx.quick {
        &QUICK_REPLICAS
    } else {
        &REPLICAS
    };
    let result = measure_all(ctx, &sim, &tenants, &mut targets, replicas, n_blobs, rounds).await;
    for t in targets {
        t.close().await;
    }
    sim.stop().await;
    result
}

/// The AMQP port of `url` (5672 when it cannot be read).
fn amqp_port(url: &str) -> u16 {
    url.parse::<lapin::uri::AMQPUri>()
        .map_or(5672, |u| u.authority.port)
}

async fn measure_all(
    ctx: &Ctx,
    sim: &Simulator,
    tenants: &[String],
    targets: &mut [Target],
    replica_counts: &[usize],
    n_blobs: usize,
    rounds: usize,
) -> anyhow::Result<Vec<Row>> {
    let concurrency = ctx
        .relay_settings(&targets[0].section, &targets[0].env)?
        .worker_concurrency;
    let rabbit = rabbit_pid_on(amqp_port(&ctx.amqp_url));
    println!(
        "9. scale: {replica_counts:?} relay processes × (standalone Redis, Redis Cluster of {MASTERS} masters + 1 replica each), each Redis of the section's own; {n_blobs} blobs × {PER_BLOB} records per measurement over {TENANTS} tenants (2 per cluster master), worker concurrency {concurrency} per relay, {rounds} round(s); RabbitMQ pid {}",
        rabbit.map_or("not found (its CPU not counted)".to_string(), |p| p.to_string())
    );
    let mut best: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    let mut best_ceiling: Option<f64> = None;
    let mut avg = 0.0;
    for round in 1..=rounds {
        // Reference: section 2's bare confirmed publish of the first measurement's records.
        let first = fresh_blobs(sim, tenants, n_blobs).await;
        avg = avg_record_bytes(&first);
        let prepared = Arc::new(prepare(&first, &mut HashSet::new()));
        let want: u64 = prepared.iter().map(|b| b.len() as u64).sum();
        let t = &targets[0];
        t.reset();
        let t0 = Instant::now();
        bare_record_publish(ctx, &t.section.names.exchange, prepared, concurrency).await?;
        let t1 = t.wait_distinct(want).await?;
        let ceiling = want as f64 / (t1 - t0).as_secs_f64();
        println!(
            "   round {round}: bare publish {ceiling:.0} rec/s ({want} records, avg {avg:.0} B)"
        );
        best_ceiling = Some(best_ceiling.map_or(ceiling, |b: f64| b.max(ceiling)));
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut first = Some(first);
        for (ti, target) in targets.iter_mut().enumerate() {
            for (ri, &replicas) in replica_counts.iter().enumerate() {
                let blobs = match first.take() {
                    Some(b) => b,
                    None => fresh_blobs(sim, tenants, n_blobs).await,
                };
                let cell = target.measure(ctx, replicas, &blobs, rabbit).await?;
                println!(
                    "     {} Redis, {replicas} relay(s): {}",
                    target.redis.label(),
                    cell.line()
                );
                let e = best.entry((ti, ri)).or_insert_with(|| cell.clone());
                if cell.rate > e.rate {
                    *e = cell;
                }
            }
        }
    }
    let ceiling = best_ceiling.expect("rounds ≥ 1");
    println!("   best round of each (ratios against the best bare publish, {ceiling:.0} rec/s):");
    println!("   | Redis | relays | records/s | × bare publish | relay µs/rec | Redis µs/rec (masters + replicas) | busiest Redis master | RabbitMQ µs/rec | sim + sink µs/rec | machine (components / /proc/stat) | dup. | binds first |");
    println!("   |---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows = vec![Row::new(
        "9 scale",
        format!("bare publish ceiling, records/s ({n_blobs}×{PER_BLOB}, ~{avg:.0} B)"),
        format!("{ceiling:.0}"),
    )];
    for ((ti, ri), c) in &best {
        let label = targets[*ti].redis.label();
        let replicas = replica_counts[*ri];
        println!(
            "   | {label} | {replicas} | {:.0} | {:.2} | {:.1} | {:.1}{} | {:.0} % | {:.1} | {:.1} | {:.0} % / {:.0} % | {} | {} |",
            c.rate,
            c.rate / ceiling,
            c.relay_us,
            c.redis_us,
            if c.replicas_us > 0.0 {
                format!(" + {:.1}", c.replicas_us)
            } else {
                String::new()
            },
            c.redis_core * 100.0,
            c.rabbit_us,
            c.bench_us,
            c.machine * 100.0,
            c.machine_proc * 100.0,
            c.duplicates,
            c.binds()
        );
        rows.push(
            Row::new(
                "9 scale",
                format!(
                    "records/s, {replicas} relay(s), {label} Redis (relay / Redis / RabbitMQ µs per record {:.0} / {:.0} / {:.0})",
                    c.relay_us,
                    c.redis_us + c.replicas_us,
                    c.rabbit_us
                ),
                format!("{:.0}", c.rate),
            )
            .ceiling(format!("{ceiling:.0}"))
            .ratio_only(c.rate / ceiling)
            .target(format!("binds: {}", c.binds())),
        );
    }
    Ok(rows)
}
