//! Redis Cluster and Sentinel of a test's own, on free ports beside the machine's Redis (6379,
//! never touched): [`RedisCluster`] (three masters with a replica each, or another shape for a
//! benchmark) and [`RedisSentinel`] (a master, two replicas and three sentinels), each with the
//! faults a test needs (SIGKILL a master, wait for the failover) and torn down on drop.
//!
//! Every `redis-server` is a child of the test process (`--daemonize no`), killed and reaped on
//! drop, so a test that panics leaves no server and no zombie behind; its files (config, log)
//! live in one temporary directory, removed on drop. Startup polls and never sleeps a fixed time.

use crate::names::unique;
use crate::services::free_port;
use std::fmt::Write as _;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Hash slots of a Redis Cluster.
const SLOTS: u32 = 16384;
/// How long a topology may take to start before the harness gives up (several times what it
/// takes on a loaded 2-core machine).
const START_WAIT: Duration = Duration::from_secs(60);
/// Polling interval while waiting for a server, a topology or a failover.
const POLL: Duration = Duration::from_millis(20);
/// One command to one node; a node that does not answer within this is treated as down.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// `cluster-node-timeout`, and the sentinels' `down-after-milliseconds`: a dead master is
/// noticed after 2 s, so a failover takes about 3–5 s.
const NODE_TIMEOUT_MS: u32 = 2000;
/// The sentinels' `failover-timeout`.
const FAILOVER_TIMEOUT_MS: u32 = 10000;
/// Sentinels that must agree that the master is down.
const QUORUM: u32 = 2;
/// Sentinels started.
const SENTINELS: usize = 3;

// ---- processes ---------------------------------------------------------------------------------

/// One `redis-server` child; `child` is `None` once it was killed.
struct Server {
    port: u16,
    pid: u32,
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The servers of one topology and their directory; kills and reaps every server, then removes
/// the directory, on drop.
struct Servers {
    dir: PathBuf,
    servers: Vec<Server>,
}

impl Servers {
    fn new(kind: &str) -> Servers {
        let dir = std::env::temp_dir().join(format!("o365-redis-{kind}-{}", unique()));
        std::fs::create_dir_all(&dir).expect("create the topology's temporary directory");
        Servers {
            dir,
            servers: Vec::new(),
        }
    }

    /// Starts one `redis-server` per name, each with `args(port, its own directory)` on a port
    /// from `pick`, all at once, and waits until every one answers `PING`. Another process may
    /// take a port between `pick` and the server's bind: that server then exits, and it is tried
    /// again on another port.
    async fn start_all<A>(&mut self, names: &[String], pick: fn() -> u16, args: A) -> Vec<u16>
    where
        A: Fn(u16, &Path) -> Vec<String>,
    {
        let mut ports: Vec<u16> = names
            .iter()
            .map(|name| self.spawn_on(name, pick(), &args))
            .collect();
        for (name, port) in names.iter().zip(ports.iter_mut()) {
            let mut attempts = 1;
            while !self.await_ping(*port).await {
                let log = std::fs::read_to_string(&self.server(*port).log).unwrap_or_default();
                self.server(*port).kill();
                self.servers.retain(|s| s.port != *port);
                assert!(
                    attempts < 5,
                    "redis-server {name} did not start; its last log:\n{log}"
                );
                attempts += 1;
                *port = self.spawn_on(name, pick(), &args);
            }
        }
        ports
    }

    /// [`Servers::start_all`] for one server.
    async fn start<A>(&mut self, name: &str, pick: fn() -> u16, args: A) -> u16
    where
        A: Fn(u16, &Path) -> Vec<String>,
    {
        self.start_all(&[name.to_string()], pick, args).await[0]
    }

    /// Spawns `redis-server` `name` on `port` without waiting for it.
    fn spawn_on<A>(&mut self, name: &str, port: u16, args: &A) -> u16
    where
        A: Fn(u16, &Path) -> Vec<String>,
    {
        let dir = self.dir.join(format!("{name}-{port}"));
        std::fs::create_dir_all(&dir).expect("create a server's directory");
        let log = dir.join("server.log");
        let child = spawn(&args(port, &dir), &log);
        self.servers.push(Server {
            port,
            pid: child.id(),
            child: Some(child),
            log,
        });
        port
    }

    /// Waits until the server on `port` answers `PING`; `false` when it exited first.
    async fn await_ping(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if query::<String>(port, &redis::cmd("PING")).await.as_deref() == Some("PONG") {
                return true;
            }
            let s = self.server(port);
            let exited = s
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn server(&mut self, port: u16) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server of this topology on port {port}"))
    }

    fn is_live(&self, port: u16) -> bool {
        self.servers
            .iter()
            .any(|s| s.port == port && s.child.is_some())
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.servers
            .iter()
            .filter(|s| s.child.is_some())
            .map(|s| s.port)
    }

    fn kill(&mut self, port: u16) {
        self.server(port).kill();
    }

    /// The last lines of every server's log, for a panic message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for s in &self.servers {
            let log = std::fs::read_to_string(&s.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            let _ = writeln!(out, "--- port {} ({}):", s.port, s.log.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &mut self.servers {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn(args: &[String], log: &Path) -> Child {
    let out = File::create(log).expect("create a server's log");
    let err = out.try_clone().expect("clone a log file handle");
    Command::new("redis-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("redis-server runs (Debian's redis-server package)")
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= u16::MAX - 10000 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// The answer of the server on `port` to `cmd`; `None` when it is down, slow or says no.
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Option<T> {
    let ask = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        cmd.query_async(&mut c).await.ok()
    };
    tokio::time::timeout(QUERY_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
}

/// `field:value` of an `INFO` answer.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The role (`master`, `slave`, `sentinel`) the server on `port` gives in `ROLE`.
async fn role(port: u16) -> Option<String> {
    let answer: redis::Value = query(port, &redis::cmd("ROLE")).await?;
    let redis::Value::Array(items) = answer else {
        return None;
    };
    redis::from_redis_value(items.first()?).ok()
}

/// Polls `ready` until it is true; panics with `what` and the servers' logs after `wait`.
async fn wait_until<F, Fut>(servers: &Servers, what: &str, wait: Duration, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    while !ready().await {
        if Instant::now() >= deadline {
            panic!("{what} not within {wait:?}; logs:\n{}", servers.logs());
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---- Redis Cluster -------------------------------------------------------------------------------

/// A Redis Cluster of its own: `masters` masters with `replicas` replicas each (three and one by
/// default), on free ports, every slot covered and every replica in sync before
/// [`RedisCluster::start`] returns. Every node is SIGKILLed and its files removed on drop.
pub struct RedisCluster {
    servers: Servers,
    masters: usize,
    replicas: usize,
    /// When each killed node was killed: a failover is timed from there.
    killed: Vec<(u16, Instant)>,
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct NodeLine {
    id: String,
    port: u16,
    master: bool,
    /// `fail` or `fail?`: the node is, or may be, down.
    failing: bool,
    /// The master's id, for a replica.
    master_id: Option<String>,
    connected: bool,
    /// Slot ranges served, inclusive.
    slots: Vec<(u32, u32)>,
}

impl NodeLine {
    fn slot_count(&self) -> u32 {
        self.slots.iter().map(|(a, b)| b - a + 1).sum()
    }

    fn serves(&self, slot: u32) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// `CLUSTER NODES`: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping-sent> <pong-recv>
/// <config-epoch> <link-state> <slot>...`; slots being migrated (`[...]`) are left out.
fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some(NodeLine {
                id: f[0].to_string(),
                port,
                master: flags.contains(&"master"),
                failing: flags.iter().any(|x| *x == "fail" || *x == "fail?"),
                master_id: (f[3] != "-").then(|| f[3].to_string()),
                connected: f[7] == "connected",
                slots,
            })
        })
        .collect()
}

async fn cluster_nodes(port: u16) -> Option<Vec<NodeLine>> {
    let text: String = query(port, redis::cmd("CLUSTER").arg("NODES")).await?;
    Some(parse_nodes(&text))
}

async fn cluster_state_ok(port: u16) -> bool {
    let info: Option<String> = query(port, redis::cmd("CLUSTER").arg("INFO")).await;
    info.is_some_and(|i| info_field(&i, "cluster_state") == Some("ok"))
}

impl RedisCluster {
    /// Three masters with one replica each, ready: every slot served, every replica in sync.
    pub async fn start() -> RedisCluster {
        RedisCluster::start_with(3, 1).await
    }

    /// `masters` masters with `replicas` replicas each (e.g. one master for a benchmark's
    /// baseline). Three or more masters are joined by `redis-cli --cluster create`, which refuses
    /// fewer; one or two are joined by hand (`CLUSTER ADDSLOTSRANGE`, `MEET`, `REPLICATE`).
    ///
    /// About 2.2–3 s here: a master reports `cluster_state:ok` no sooner than 2 s after it
    /// started (Redis' `CLUSTER_WRITABLE_DELAY`), and `redis-cli` sleeps 1 s while the nodes
    /// meet; joining by hand is no faster than about 2.2 s for that reason.
    pub async fn start_with(masters: usize, replicas: usize) -> RedisCluster {
        assert!(masters >= 1, "a cluster needs a master");
        let mut servers = Servers::new("cluster");
        let names: Vec<String> = (0..masters * (1 + replicas))
            .map(|i| format!("node{i}"))
            .collect();
        let ports = servers
            .start_all(&names, cluster_port, |port, dir| {
                let mut a = strings(&["--port", &port.to_string(), "--bind", "127.0.0.1"]);
                a.extend(strings(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &dir.join("nodes.conf").display().to_string(),
                    "--cluster-node-timeout",
                    &NODE_TIMEOUT_MS.to_string(),
                    "--dir",
                    &dir.display().to_string(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    // A replica's first sync would otherwise wait 5 s for other replicas.
                    "--repl-diskless-sync-delay",
                    "0",
                ]));
                a
            })
            .await;
        let cluster = RedisCluster {
            servers,
            masters,
            replicas,
            killed: Vec::new(),
        };
        if masters >= 3 {
            cluster.create_with_redis_cli(&ports).await;
        } else {
            cluster.create_by_hand(&ports).await;
        }
        let (m, r) = (masters, masters * replicas);
        wait_until(
            &cluster.servers,
            &format!("a cluster of {m} masters and {r} replicas in sync"),
            START_WAIT,
            || cluster.is_complete(),
        )
        .await;
        cluster
    }

    async fn create_with_redis_cli(&self, ports: &[u16]) {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for p in ports {
            cmd.arg(format!("127.0.0.1:{p}"));
        }
        cmd.args([
            "--cluster-replicas",
            &self.replicas.to_string(),
            "--cluster-yes",
        ]);
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .expect("redis-cli runs (Debian's redis-tools package)");
        if !out.status.success() {
            panic!(
                "redis-cli --cluster create failed: {}\n{}\nlogs:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.servers.logs()
            );
        }
    }

    /// The first `masters` ports become masters with an even share of the slots, the others
    /// replicas, `replicas` per master in turn.
    async fn create_by_hand(&self, ports: &[u16]) {
        let (masters, replicas) = ports.split_at(self.masters);
        let share = SLOTS / masters.len() as u32;
        for (i, &port) in masters.iter().enumerate() {
            let first = i as u32 * share;
            let last = if i + 1 == masters.len() {
                SLOTS - 1
            } else {
                first + share - 1
            };
            let cmd = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .clone();
            self.must(port, &cmd, "CLUSTER ADDSLOTSRANGE").await;
            let epoch = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .clone();
            self.must(port, &epoch, "CLUSTER SET-CONFIG-EPOCH").await;
        }
        // Every pair meets directly: a replica then knows its master within one cluster cron
        // tick (100 ms) instead of through gossip (about a second).
        for (i, &port) in ports.iter().enumerate() {
            for &other in &ports[i + 1..] {
                let meet = redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(other)
                    .clone();
                self.must(port, &meet, "CLUSTER MEET").await;
            }
        }
        let mut ids = Vec::new();
        for &port in masters {
            let id: String = query(port, redis::cmd("CLUSTER").arg("MYID"))
                .await
                .expect("CLUSTER MYID answers");
            ids.push(id);
        }
        for (i, &port) in replicas.iter().enumerate() {
            let replicate = redis::cmd("CLUSTER")
                .arg("REPLICATE")
                .arg(&ids[i % masters.len()])
                .clone();
            // A node accepts REPLICATE only once it knows the master through gossip.
            wait_until(&self.servers, "a replica attached", START_WAIT, || {
                let replicate = replicate.clone();
                async move { query::<String>(port, &replicate).await.is_some() }
            })
            .await;
        }
    }

    async fn must(&self, port: u16, cmd: &redis::Cmd, what: &str) {
        if query::<String>(port, cmd).await.is_none() {
            panic!("{what} failed on {port}; logs:\n{}", self.servers.logs());
        }
    }

    /// Every node agrees: `cluster_state:ok`, the expected masters cover every slot, every
    /// replica is attached and connected, and every replica's link to its master is up and not
    /// syncing. (`cluster_state:ok` alone comes before the replicas attach.)
    async fn is_complete(&self) -> bool {
        let live: Vec<u16> = self.servers.live().collect();
        for &port in &live {
            if !cluster_state_ok(port).await {
                return false;
            }
            let Some(nodes) = cluster_nodes(port).await else {
                return false;
            };
            let masters: Vec<&NodeLine> = nodes
                .iter()
                .filter(|n| n.master && !n.failing && n.connected && n.slot_count() > 0)
                .collect();
            let covered: u32 = masters.iter().map(|n| n.slot_count()).sum();
            let replicas = nodes
                .iter()
                .filter(|n| !n.master && !n.failing && n.connected)
                .filter(|n| masters.iter().any(|m| Some(&m.id) == n.master_id.as_ref()))
                .count();
            if masters.len() != self.masters
                || covered != SLOTS
                || replicas != self.masters * self.replicas
            {
                return false;
            }
        }
        let mut replicas = Vec::new();
        for &port in &live {
            if role(port).await.as_deref() == Some("slave") {
                replicas.push(port);
            }
        }
        replicas_synced(&replicas).await
    }

    /// The view of the first live node that answers.
    async fn nodes(&self) -> Vec<NodeLine> {
        for port in self.servers.live() {
            if let Some(nodes) = cluster_nodes(port).await {
                return nodes;
            }
        }
        panic!("no node of the cluster answers CLUSTER NODES");
    }

    /// `redis://127.0.0.1:P` of every live node, comma-separated: the seed list of
    /// `O365_REDIS_URL` in `cluster` mode.
    pub fn seed_urls(&self) -> String {
        self.servers
            .live()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, killed ones too.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.servers.iter().map(|s| s.port).collect()
    }

    /// Every node's process id, killed ones too (to check that none outlives the cluster).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.servers.iter().map(|s| s.pid).collect()
    }

    /// The directory holding every node's files (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.servers.dir
    }

    /// The live masters' ports, serving slots (a killed master flagged `master,fail` is not one).
    pub async fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes()
            .await
            .into_iter()
            .filter(|n| n.master && !n.failing && n.slot_count() > 0)
            .map(|n| n.port)
            .filter(|&p| self.servers.is_live(p))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The live replicas' ports.
    pub async fn replicas(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .nodes()
            .await
            .into_iter()
            .filter(|n| !n.master && !n.failing)
            .map(|n| n.port)
            .filter(|&p| self.servers.is_live(p))
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the master serving `key`'s slot (`CLUSTER KEYSLOT`, then `CLUSTER NODES`).
    pub async fn master_for_key(&self, key: &str) -> u16 {
        let cmd = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).clone();
        let mut slot = None;
        for port in self.servers.live() {
            slot = query::<u32>(port, &cmd).await;
            if slot.is_some() {
                break;
            }
        }
        let slot = slot.expect("a live node answers CLUSTER KEYSLOT");
        self.nodes()
            .await
            .into_iter()
            .find(|n| n.master && !n.failing && n.serves(slot))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live master serves slot {slot} (of {key:?})"))
    }

    /// SIGKILLs the node on `port` (and reaps it); a failover is timed from now.
    pub fn kill(&mut self, port: u16) {
        self.servers.kill(port);
        self.killed.retain(|(p, _)| *p != port);
        self.killed.push((port, Instant::now()));
    }

    /// Waits until the killed master's slots are served by a live master again (one of its
    /// replicas promoted: every slot covered by live masters, as many masters as before) and
    /// every live node says `cluster_state:ok`. Returns the time since [`RedisCluster::kill`];
    /// panics after `timeout`.
    pub async fn wait_for_failover(&self, killed_port: u16, timeout: Duration) -> Duration {
        let since = self
            .killed
            .iter()
            .find(|(p, _)| *p == killed_port)
            .map(|(_, at)| *at)
            .unwrap_or_else(|| panic!("port {killed_port} was not killed through kill()"));
        let wait = timeout.saturating_sub(since.elapsed());
        wait_until(
            &self.servers,
            &format!("a replica of {killed_port} promoted"),
            wait,
            || self.failed_over(killed_port),
        )
        .await;
        since.elapsed()
    }

    async fn failed_over(&self, killed_port: u16) -> bool {
        for port in self.servers.live() {
            if !cluster_state_ok(port).await {
                return false;
            }
            let Some(nodes) = cluster_nodes(port).await else {
                return false;
            };
            let masters: Vec<&NodeLine> = nodes
                .iter()
                .filter(|n| n.master && !n.failing && n.slot_count() > 0)
                .filter(|n| n.port != killed_port && self.servers.is_live(n.port))
                .collect();
            let covered: u32 = masters.iter().map(|n| n.slot_count()).sum();
            if covered != SLOTS || masters.len() != self.masters {
                return false;
            }
        }
        true
    }

    /// CPU time (`used_cpu_sys + used_cpu_user` of `INFO cpu`) summed over the live masters, in
    /// microseconds: a benchmark's measure of the work the cluster did between two readings.
    pub async fn node_cpu_usec(&self) -> u64 {
        let mut total = 0.0;
        for port in self.masters().await {
            let info: String = query(port, redis::cmd("INFO").arg("cpu"))
                .await
                .unwrap_or_else(|| panic!("master {port} answers INFO cpu"));
            for field in ["used_cpu_sys", "used_cpu_user"] {
                total += info_field(&info, field)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        (total * 1e6).round() as u64
    }
}

// ---- Sentinel ------------------------------------------------------------------------------------

/// A master with two replicas watched by three sentinels (quorum 2), on free ports, under a master
/// name unique to this run; ready (every sentinel knows the master, both replicas and the
/// other sentinels) when [`RedisSentinel::start`] returns. Everything is SIGKILLed on drop.
pub struct RedisSentinel {
    servers: Servers,
    name: String,
    sentinels: Vec<u16>,
    /// The data nodes (master and replicas) as started.
    data: Vec<u16>,
    /// The master killed last and when.
    killed: Option<(u16, Instant)>,
}

/// `SENTINEL MASTER`, `SENTINEL REPLICAS`… answer with flat `field, value, …` lists.
fn field<'a>(pairs: &'a [String], name: &str) -> Option<&'a str> {
    pairs
        .chunks(2)
        .find(|kv| kv[0] == name)
        .and_then(|kv| kv.get(1))
        .map(String::as_str)
}

/// A 40-hex-digit sentinel id.
fn sentinel_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl RedisSentinel {
    /// A master, two replicas and three sentinels, ready for a failover.
    pub async fn start() -> RedisSentinel {
        RedisSentinel::start_with(2).await
    }

    /// A master with `replicas` replicas (at least one, for a failover to have a candidate).
    pub async fn start_with(replicas: usize) -> RedisSentinel {
        assert!(replicas >= 1, "a failover needs a replica");
        let mut servers = Servers::new("sentinel");
        let master = servers.start("master", free_port, data_node(None)).await;
        let names: Vec<String> = (0..replicas).map(|i| format!("replica{i}")).collect();
        let mut data = vec![master];
        data.extend(
            servers
                .start_all(&names, free_port, data_node(Some(master)))
                .await,
        );
        // Before the sentinels start: a sentinel reads a replica's INFO when it connects, then
        // every 10 s, so a replica still syncing then would keep it from being ready for 10 s.
        wait_until(&servers, "the replicas in sync", START_WAIT, || {
            replicas_synced(&data[1..])
        })
        .await;
        let name = format!("o365-{}", unique());
        let sentinels = start_sentinels(&mut servers, &name, &data).await;
        let s = RedisSentinel {
            servers,
            name,
            sentinels,
            data,
            killed: None,
        };
        wait_until(
            &s.servers,
            "every sentinel knows the master, its replicas and the other sentinels",
            START_WAIT,
            || s.is_complete(master, replicas),
        )
        .await;
        s
    }

    /// Every sentinel: `master` is the master (flags `master` only), every replica is known
    /// with its link to the master up, the other sentinels are known and reachable, and
    /// `SENTINEL CKQUORUM` says a failover can be authorised. Every replica is in sync.
    async fn is_complete(&self, master: u16, replicas: usize) -> bool {
        for &s in &self.sentinels {
            let m: Option<Vec<String>> =
                query(s, redis::cmd("SENTINEL").arg("MASTER").arg(&self.name)).await;
            let Some(m) = m else { return false };
            let right_master = field(&m, "port") == Some(&master.to_string())
                && field(&m, "flags") == Some("master")
                && field(&m, "num-slaves") == Some(&replicas.to_string())
                && field(&m, "num-other-sentinels") == Some(&(SENTINELS - 1).to_string());
            if !right_master {
                return false;
            }
            let reps: Option<Vec<Vec<String>>> =
                query(s, redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.name)).await;
            let reps_ok = reps.is_some_and(|reps| {
                reps.len() == replicas
                    && reps.iter().all(|r| {
                        field(r, "flags") == Some("slave")
                            && field(r, "master-link-status") == Some("ok")
                    })
            });
            let sents: Option<Vec<Vec<String>>> =
                query(s, redis::cmd("SENTINEL").arg("SENTINELS").arg(&self.name)).await;
            let sents_ok = sents.is_some_and(|ss| {
                ss.len() == SENTINELS - 1
                    && ss.iter().all(|x| field(x, "flags") == Some("sentinel"))
            });
            let quorum: Option<String> =
                query(s, redis::cmd("SENTINEL").arg("CKQUORUM").arg(&self.name)).await;
            if !(reps_ok && sents_ok && quorum.is_some_and(|q| q.starts_with("OK"))) {
                return false;
            }
        }
        replicas_synced(&self.data[1..]).await
    }

    /// `redis://127.0.0.1:P` of every sentinel, comma-separated: `O365_REDIS_URL` in `sentinel`
    /// mode.
    pub fn sentinel_urls(&self) -> String {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's name: `O365_REDIS_SENTINEL_MASTER` (unique to this run).
    pub fn master_name(&self) -> &str {
        &self.name
    }

    /// Every process's port: master, replicas, then sentinels, killed ones too.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.servers.iter().map(|s| s.port).collect()
    }

    /// Every process's id, killed ones too (to check that none outlives the topology).
    pub fn pids(&self) -> Vec<u32> {
        self.servers.servers.iter().map(|s| s.pid).collect()
    }

    /// The directory holding every process's files (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.servers.dir
    }

    /// The master's port as the live sentinels say now (the first that answers).
    pub async fn master_port(&self) -> u16 {
        for &s in &self.sentinels {
            if let Some(port) = self.master_by(s).await {
                return port;
            }
        }
        panic!("no sentinel names a master for {}", self.name)
    }

    async fn master_by(&self, sentinel: u16) -> Option<u16> {
        let cmd = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.name)
            .clone();
        let addr: Vec<String> = query(sentinel, &cmd).await?;
        addr.get(1)?.parse().ok()
    }

    /// SIGKILLs the current master (and reaps it); a failover is timed from now. Its port.
    /// After a failover, killing the promoted master fails over again to the next replica.
    pub async fn kill_master(&mut self) -> u16 {
        let port = self.master_port().await;
        self.servers.kill(port);
        self.killed = Some((port, Instant::now()));
        port
    }

    /// Waits until every sentinel names the same new master and it answers `ROLE` as master.
    /// Returns the time since [`RedisSentinel::kill_master`]; panics after `timeout`.
    pub async fn wait_for_failover(&self, timeout: Duration) -> Duration {
        let (killed, since) = self.killed.expect("kill_master() first");
        let wait = timeout.saturating_sub(since.elapsed());
        wait_until(
            &self.servers,
            &format!("a replica promoted in place of {killed}"),
            wait,
            || self.promoted(killed),
        )
        .await;
        since.elapsed()
    }

    /// Whether every sentinel names the same master, not `killed`, and it says it is one.
    async fn promoted(&self, killed: u16) -> bool {
        let mut named = Vec::new();
        for &s in &self.sentinels {
            named.push(self.master_by(s).await);
        }
        match named[0] {
            Some(new) if new != killed && named.iter().all(|n| *n == Some(new)) => {
                role(new).await.as_deref() == Some("master")
            }
            _ => false,
        }
    }
}

/// The arguments of a master (`replica_of` `None`) or a replica of a Sentinel topology.
fn data_node(replica_of: Option<u16>) -> impl Fn(u16, &Path) -> Vec<String> {
    move |port, dir| {
        let mut a = strings(&[
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--repl-diskless-sync-delay",
            "0",
        ]);
        if let Some(master) = replica_of {
            a.extend(strings(&["--replicaof", "127.0.0.1", &master.to_string()]));
        }
        a
    }
}

/// Whether every replica on `ports` has its link to its master up and no sync in progress.
async fn replicas_synced(ports: &[u16]) -> bool {
    for &port in ports {
        let info: Option<String> = query(port, redis::cmd("INFO").arg("replication")).await;
        let synced = info.is_some_and(|i| {
            info_field(&i, "master_link_status") == Some("up")
                && info_field(&i, "master_sync_in_progress") == Some("0")
        });
        if !synced {
            return false;
        }
    }
    true
}

/// Three sentinels watching `data[0]`, each configured with the others' and the replicas'
/// addresses and ids (`known-sentinel`, `known-replica`, what a sentinel writes to its own file
/// once it discovered them): without them they find each other through hello messages every
/// 2 s and take 5–8 s to be ready. Tried again on new ports when one fails to bind.
async fn start_sentinels(servers: &mut Servers, name: &str, data: &[u16]) -> Vec<u16> {
    let mut last_log = String::new();
    for _attempt in 0..5 {
        let ports: Vec<u16> = (0..SENTINELS).map(|_| free_port()).collect();
        let ids: Vec<String> = (0..SENTINELS).map(|_| sentinel_id()).collect();
        let mut started = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let dir = servers.dir.join(format!("sentinel{i}-{port}"));
            std::fs::create_dir_all(&dir).expect("create a sentinel's directory");
            let conf = dir.join("sentinel.conf");
            std::fs::write(&conf, sentinel_conf(name, i, &ports, &ids, data, &dir))
                .expect("write a sentinel's config");
            let log = dir.join("server.log");
            let args = vec![conf.display().to_string(), "--sentinel".to_string()];
            let child = spawn(&args, &log);
            servers.servers.push(Server {
                port,
                pid: child.id(),
                child: Some(child),
                log,
            });
            started.push(port);
        }
        let mut all = true;
        for &port in &started {
            all &= servers.await_ping(port).await;
        }
        if all {
            return started;
        }
        for &port in &started {
            last_log = std::fs::read_to_string(&servers.server(port).log).unwrap_or_default();
            servers.kill(port);
        }
        servers.servers.retain(|s| !started.contains(&s.port));
    }
    panic!("the sentinels did not start; a last log:\n{last_log}");
}

fn sentinel_conf(
    name: &str,
    me: usize,
    ports: &[u16],
    ids: &[String],
    data: &[u16],
    dir: &Path,
) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "port {}", ports[me]);
    let _ = writeln!(c, "bind 127.0.0.1");
    let _ = writeln!(c, "daemonize no");
    let _ = writeln!(c, "dir {}", dir.display());
    let _ = writeln!(c, "sentinel myid {}", ids[me]);
    let _ = writeln!(c, "sentinel monitor {name} 127.0.0.1 {} {QUORUM}", data[0]);
    let _ = writeln!(
        c,
        "sentinel down-after-milliseconds {name} {NODE_TIMEOUT_MS}"
    );
    let _ = writeln!(c, "sentinel failover-timeout {name} {FAILOVER_TIMEOUT_MS}");
    let _ = writeln!(c, "sentinel parallel-syncs {name} 1");
    for &replica in &data[1..] {
        let _ = writeln!(c, "sentinel known-replica {name} 127.0.0.1 {replica}");
    }
    for (i, (port, id)) in ports.iter().zip(ids).enumerate() {
        if i != me {
            let _ = writeln!(c, "sentinel known-sentinel {name} 127.0.0.1 {port} {id}");
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_are_read_with_their_slots_and_flags() {
        let text = "\
cc42 127.0.0.1:47002@57002 master - 0 1796624221087 2 connected 5461-10922
dd15 127.0.0.1:47004@57004 slave cc42 0 1796624221087 3 connected
fc88 127.0.0.1:47001@57001,host myself,master - 0 0 1 connected 0-5460 [77->-dd15]
6f09 127.0.0.1:47005@57005 master,fail - 0 0 5 disconnected 16383
";
        let nodes = parse_nodes(text);
        assert_eq!(nodes.len(), 4);
        assert_eq!(nodes[0].port, 47002);
        assert_eq!(nodes[0].slot_count(), 10922 - 5461 + 1);
        assert!(!nodes[1].master);
        assert_eq!(nodes[1].master_id.as_deref(), Some("cc42"));
        assert!(nodes[2].master && nodes[2].serves(0) && nodes[2].serves(5460));
        assert_eq!(nodes[2].slots, vec![(0, 5460)]);
        assert!(nodes[3].failing && !nodes[3].connected && nodes[3].serves(16383));
    }

    #[test]
    fn info_fields_are_found_by_their_whole_name() {
        let info =
            "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nmaster_sync_in_progress:0\r\n";
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master_sync_in_progress"), Some("0"));
        assert_eq!(info_field(info, "master_link"), None);
    }

    #[test]
    fn a_sentinel_id_is_forty_hex_digits() {
        let id = sentinel_id();
        assert_eq!(id.len(), 40);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
