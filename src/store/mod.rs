//! Redis: the one owner of every key the relay keeps. Each concern has a typed view that
//! builds its own keys under `O365_REDIS_PREFIX` and takes domain types, never raw keys:
//!
//! Why it is built so: docs/DESIGN.md, "store".

pub mod activity;
pub mod admin_sessions;
pub mod checkpoints;
pub(crate) mod coalesce;
pub mod consent;
pub mod dedup;
pub mod leases;
pub mod migrate;
pub mod parking;
pub mod quota;
pub mod replicas;
pub mod subscriptions;
pub mod tenants;
pub mod tokens;

pub use leases::Lease;

mod topology;

use crate::config::{RedisMode, RedisSettings};
use redis::AsyncCommands;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use topology::{Conn, Target};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    #[error("redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Bound on marker writes kept in memory during a Redis outage (about 100 bytes each).
const MAX_DEFERRED: usize = 500_000;

/// Pipelines of a batch that spans slots, sent at once in cluster mode.
const BATCH_GROUPS_IN_FLIGHT: usize = 32;

/// Check-and-delete: releases a lock or lease only when we still hold it.
const RELEASE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;

pub struct Store {
    prefix: String,
    mode: RedisMode,
    target: Target,
    /// With rediss://, which CA the server's certificate is checked against (for messages).
    tls: Option<String>,
    conn: Mutex<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    down: AtomicBool,
    /// Marker writes that failed while Redis was down: (key, value, expiry).
    deferred: Mutex<Vec<(String, String, Instant)>>,
    /// While Redis is down, one call a second is let through to probe it; the others fail
    /// at once instead of each waiting on the connection manager's reconnect.
    last_probe: Mutex<Option<Instant>>,
    /// The webhook's notification counts not yet written ([`Store::count_notified`]).
    notified: coalesce::Coalesced<activity::Notified>,
    /// In-flight markers waiting to be written together ([`Store::mark_enqueued_soon`]).
    enqueued: coalesce::Coalesced<dedup::InFlight>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("mode", &self.mode.as_str())
            .finish()
    }
}

/// A tenant's id as it appears in a key: in a cluster, inside braces — a hash tag — so every
/// key of one tenant lies in one slot and its scripts and pipelines may touch several of them;
/// elsewhere as it is, so a standalone or Sentinel deployment keeps the key names of earlier
/// versions (nothing to migrate on upgrade).
pub(crate) struct TenantSegment<'a> {
    tenant: &'a str,
    tagged: bool,
}

impl TenantSegment<'_> {
    /// Appends the segment to `out` (what `Display` writes, without the formatting machinery:
    /// for names built per record).
    pub(crate) fn push_to(&self, out: &mut String) {
        if self.tagged {
            out.push('{');
            out.push_str(self.tenant);
            out.push('}');
        } else {
            out.push_str(self.tenant);
        }
    }
}

impl fmt::Display for TenantSegment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tagged {
            write!(f, "{{{}}}", self.tenant)
        } else {
            f.write_str(self.tenant)
        }
    }
}

impl Store {
    /// One standalone server (tests and the demo).
    pub fn new(url: &str, prefix: &str) -> StoreResult<Store> {
        Store::open(&RedisSettings::standalone(url, prefix))
    }

    /// The store over the topology `settings` describe. With rediss://, the servers'
    /// certificates are verified against the private CA of `O365_REDIS_CA_PATH`, else against
    /// the system's CA store; verification is never off (the configuration refuses redis-rs's
    /// `#insecure`). docs/OPERATIONS.md, "Managed Redis and RabbitMQ (TLS)" and "Outgrowing
    /// one machine".
    pub fn open(settings: &RedisSettings) -> StoreResult<Store> {
        let target = Target::new(settings).map_err(StoreError::Unavailable)?;
        let tls = settings.is_tls().then(|| match &settings.ca {
            Some(ca) => format!("CA {}", ca.path.display()),
            None => "system CA store".to_string(),
        });
        Ok(Store {
            prefix: settings.prefix.clone(),
            mode: settings.mode.clone(),
            target,
            tls,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            down: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
            notified: activity::notified_buffer(),
            enqueued: dedup::enqueued_buffer(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topology (`O365_REDIS_MODE`).
    pub fn mode(&self) -> &RedisMode {
        &self.mode
    }

    /// `None` for plain Redis; with rediss://, what the certificate is checked against
    /// (`CA /path` or `system CA store`), for `o365-relay check`.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// A connection failure as an operator reads it: a failed TLS handshake names the variables
    /// to look at instead of passing on rustls' words alone.
    fn connect_error(&self, e: String) -> StoreError {
        match &self.tls {
            Some(trust) if crate::config::is_tls_failure(&e) => StoreError::Unavailable(format!(
                "TLS handshake with Redis failed: {e} (verified against: {trust}; check O365_REDIS_CA_PATH, and that the host name in O365_REDIS_URL is one the certificate names)"
            )),
            _ => StoreError::Unavailable(e),
        }
    }

    /// A multiplexed connection; (re)connects lazily, at most once a second while Redis is down,
    /// so a dead Redis costs callers a fast error instead of a hang.
    async fn conn(&self) -> StoreResult<Conn> {
        if self.down.load(Ordering::SeqCst) {
            let mut last = self.last_probe.lock().expect("poisoned");
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return Err(StoreError::Unavailable(
                    "down (probed once a second)".into(),
                ));
            }
            *last = Some(Instant::now());
        }
        if let Some(c) = self.conn.lock().expect("poisoned").clone() {
            return Ok(c);
        }
        // One task connects and the others wait for it (while Redis is down only the one
        // probe a second gets this far).
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.lock().expect("poisoned").clone() {
            return Ok(c);
        }
        // Sentinel asks up to every sentinel and then the master: give it their time.
        let budget = match &self.target {
            Target::Sentinel(s) => {
                (topology::CONNECT_TIMEOUT + topology::RESPONSE_TIMEOUT) * (s.count() as u32 + 1)
            }
            _ => Duration::from_millis(1500),
        };
        match tokio::time::timeout(budget, self.target.connect()).await {
            Ok(Ok(c)) => {
                *self.conn.lock().expect("poisoned") = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(self.observe_err(self.connect_error(e))),
            Err(_) => {
                let e = self.why_tls_connect_fails().await;
                Err(self.observe_err(e))
            }
        }
    }

    /// The connection manager keeps retrying a refused TLS handshake until the timeout, which
    /// hides the reason: with rediss://, one plain attempt tells it.
    async fn why_tls_connect_fails(&self) -> StoreError {
        let timed_out = StoreError::Unavailable("connect timed out".into());
        let (Some(client), Some(_)) = (self.target.standalone(), &self.tls) else {
            return timed_out;
        };
        match tokio::time::timeout(
            Duration::from_secs(1),
            client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Err(e)) => self.connect_error(e.to_string()),
            _ => timed_out,
        }
    }

    fn observe_err(&self, e: StoreError) -> StoreError {
        let is_outage = match &e {
            StoreError::Unavailable(_) => true,
            StoreError::Command(r) => {
                r.is_io_error()
                    || r.is_timeout()
                    || r.is_connection_dropped()
                    || r.is_connection_refusal()
                    || r.kind() == redis::ErrorKind::ReadOnly
            }
        };
        // Behind Sentinel the connection manager would reconnect to the same address, which
        // may be a dead master or one demoted to a replica (`READONLY`): forget it, so the next
        // call asks the sentinels again.
        if is_outage && matches!(self.mode, RedisMode::Sentinel { .. }) {
            *self.conn.lock().expect("poisoned") = None;
        }
        if is_outage && !self.down.swap(true, Ordering::SeqCst) {
            tracing::warn!(error = %e, "Redis is unreachable; relaying continues without the shared cache and de-duplication.");
        }
        e
    }

    fn observe<T>(&self, r: Result<T, redis::RedisError>) -> StoreResult<T> {
        match r {
            Ok(v) => {
                if self.down.swap(false, Ordering::SeqCst) {
                    tracing::info!("Redis is reachable again.");
                }
                Ok(v)
            }
            Err(e) => Err(self.observe_err(StoreError::Command(e))),
        }
    }

    /// Writes at once what the coalesced buffers hold (notification counts, in-flight
    /// markers), instead of at the end of their windows: the graceful stop calls it last, so
    /// nothing counted or marked before the stop is lost with the process.
    pub async fn flush_coalesced(&self) -> StoreResult<()> {
        let (counts, markers) =
            tokio::join!(self.notified.flush_now(self), self.enqueued.flush_now(self));
        counts.and(markers)
    }

    /// Whether the last Redis call failed for want of a connection.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        self.observe(r).map(|_| ())
    }

    // ---- typed views ----------------------------------------------------------------------

    /// The shared token cache and refresh lock.
    pub fn tokens(&self) -> tokens::TokenCache<'_> {
        tokens::TokenCache::new(self)
    }

    /// Blob markers and record claims.
    pub fn dedup(&self) -> dedup::Dedup<'_> {
        dedup::Dedup::new(self)
    }

    /// The tenant registry.
    pub fn tenants(&self) -> tenants::TenantRegistry<'_> {
        tenants::TenantRegistry::new(self)
    }

    /// The per-tenant Management API budget.
    pub fn quota(&self) -> quota::Quota<'_> {
        quota::Quota::new(self)
    }

    /// Reconciliation checkpoints.
    pub fn checkpoints(&self) -> checkpoints::Checkpoints<'_> {
        checkpoints::Checkpoints::new(self)
    }

    /// Consent states' single use, and their signing key.
    pub fn consent(&self) -> consent::ConsentStates<'_> {
        consent::ConsentStates::new(self)
    }

    /// Per-tenant activity for the status page.
    pub fn activity(&self) -> activity::Activity<'_> {
        activity::Activity::new(self)
    }

    /// Replica heartbeats and lease holders.
    pub fn replicas(&self) -> replicas::Replicas<'_> {
        replicas::Replicas::new(self)
    }

    /// The tenants allowed to onboard, as added through the admin API.
    pub fn consent_allowlist(&self) -> consent::ConsentAllowlist<'_> {
        consent::ConsentAllowlist::new(self)
    }

    /// Guards that space out subscription starts.
    pub fn start_guards(&self) -> subscriptions::StartGuards<'_> {
        subscriptions::StartGuards::new(self)
    }

    /// Requests to release parked jobs and reconcile un-parked tenants.
    pub fn parking(&self) -> parking::ParkingRequests<'_> {
        parking::ParkingRequests::new(self)
    }

    /// The status page's sign-in sessions.
    pub fn admin_sessions(&self) -> admin_sessions::AdminSessions<'_> {
        admin_sessions::AdminSessions::new(self)
    }

    /// Tenants the subscription keeper found healthy.
    pub fn keeper_checks(&self) -> subscriptions::KeeperChecks<'_> {
        subscriptions::KeeperChecks::new(self)
    }

    // ---- deferred markers --------------------------------------------------------------------

    /// Writes `key = value PX ttl` for each pair, one pipeline per slot; nothing kept when Redis
    /// is down.
    async fn set_many_px(&self, writes: &[(String, Duration)], value: &str) -> StoreResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::for_store(self, writes.len());
        for (k, ttl) in writes {
            batch.push(k, set_px_cmd(k, value, *ttl));
        }
        self.run::<redis::Value>(batch).await.map(|_| ())
    }

    /// Writes `key = value PX ttl` for each pair; what cannot be written now (Redis down) is
    /// kept in memory and written by [`Store::flush_deferred`] once Redis is back, so markers
    /// of work done during an outage still suppress duplicates afterwards.
    async fn set_many_or_defer(
        &self,
        writes: Vec<(String, &str)>,
        ttl: Duration,
    ) -> StoreResult<()> {
        let mut batch = Batch::default();
        for (k, v) in &writes {
            batch.push(k, set_px_cmd(k, v, ttl));
        }
        let result = self.run::<redis::Value>(batch).await.map(|_| ());
        if result.is_err() {
            let expires = Instant::now() + ttl;
            let mut d = self.deferred.lock().expect("poisoned");
            for (k, v) in writes {
                if d.len() >= MAX_DEFERRED {
                    break;
                }
                d.push((k, v.to_string(), expires));
            }
        }
        result
    }

    /// Writes the markers deferred during an outage. Returns how many were written.
    pub async fn flush_deferred(&self) -> StoreResult<usize> {
        let pending: Vec<(String, String, Instant)> =
            std::mem::take(&mut *self.deferred.lock().expect("poisoned"));
        let now = Instant::now();
        let live: Vec<&(String, String, Instant)> =
            pending.iter().filter(|(_, _, e)| *e > now).collect();
        if live.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::default();
        for (k, v, e) in &live {
            batch.push(k, set_px_cmd(k, v, e.duration_since(now)));
        }
        let result = self.run::<redis::Value>(batch).await.map(|_| ());
        match result {
            Ok(()) => Ok(live.len()),
            Err(e) => {
                let mut d = self.deferred.lock().expect("poisoned");
                d.extend(live.into_iter().cloned());
                Err(e)
            }
        }
    }

    /// Writes the markers deferred during a Redis outage once it is back, checking every
    /// `every` until `stop`, and a last time then. A background loop (`marker_flusher`).
    pub async fn keep_flushing_deferred(
        &self,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! { _ = stop.cancelled() => break, _ = tokio::time::sleep(every) => {} }
            if self.deferred_len() > 0 {
                if let Ok(n) = self.flush_deferred().await {
                    tracing::info!(
                        markers = n,
                        "Wrote the de-duplication markers deferred during the Redis outage."
                    );
                }
            }
        }
        let _ = self.flush_deferred().await;
    }

    /// How many marker writes wait for Redis.
    pub fn deferred_len(&self) -> usize {
        self.deferred.lock().expect("poisoned").len()
    }

    /// Deletes every key under this store's prefix (tests and `demo` clean up with it). In a
    /// cluster, every master is scanned (a failed master that is still listed is skipped).
    pub async fn purge_prefix(&self) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let pattern = format!("{}*", self.prefix);
        let mut n = 0;
        for node in self.masters(&mut c).await? {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let r = c.on_node(&node, &scan).await;
                let (next, keys): (u64, Vec<String>) =
                    self.observe(r.and_then(|v| redis::from_redis_value(&v)))?;
                // One DEL per key: redis-rs splits a multi-key DEL by slot, but a key a
                // failover moved meanwhile is then still found.
                let mut batch = Batch::default();
                for k in keys {
                    let mut del = redis::cmd("DEL");
                    del.arg(&k);
                    batch.push(&k, del);
                }
                for deleted in self.run::<u64>(batch).await? {
                    n += deleted;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(n)
    }

    /// The servers that hold keys: the cluster's live masters, or the one server.
    async fn masters(&self, c: &mut Conn) -> StoreResult<Vec<topology::Node>> {
        match c {
            Conn::Single(_) => Ok(vec![topology::Node {
                host: String::new(),
                port: 0,
            }]),
            Conn::Cluster(_) => {
                let r: Result<String, _> = redis::cmd("CLUSTER").arg("NODES").query_async(c).await;
                Ok(topology::parse_cluster_nodes(&self.observe(r)?).masters)
            }
        }
    }

    /// What the relay found of the topology, for `o365-relay check`: the mode, and the nodes
    /// that answered (masters, replicas, sentinels).
    pub async fn report(&self) -> StoreResult<TopologyReport> {
        let mut c = self.conn().await?;
        let info = |text: &str, field: &str| -> Option<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        match (&self.target, &mut c) {
            (Target::Cluster(_), Conn::Cluster(_)) => {
                let r: Result<String, _> =
                    redis::cmd("CLUSTER").arg("NODES").query_async(&mut c).await;
                let view = topology::parse_cluster_nodes(&self.observe(r)?);
                let r: Result<String, _> =
                    redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await;
                let state = info(&self.observe(r)?, "cluster_state").unwrap_or_default();
                Ok(TopologyReport::Cluster {
                    masters: view.masters.len(),
                    replicas: view.replicas,
                    failed: view.failed,
                    slots: view.slots,
                    state,
                })
            }
            (target, _) => {
                let r: Result<String, _> = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await;
                let text = self.observe(r)?;
                let replicas = info(&text, "connected_slaves")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let role = info(&text, "role").unwrap_or_default();
                Ok(match target {
                    Target::Sentinel(s) => TopologyReport::Sentinel {
                        master: s.master_name().to_string(),
                        sentinels: s.count(),
                        replicas,
                        role,
                    },
                    _ => TopologyReport::Standalone { replicas, role },
                })
            }
        }
    }
}

/// `SET key value PX ttl` (at least a millisecond).
fn set_px_cmd(key: &str, value: &str, ttl: Duration) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key)
        .arg(value)
        .arg("PX")
        .arg(ttl.as_millis().max(1) as u64);
    cmd
}

/// What `o365-relay check` says of the topology ([`Store::report`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopologyReport {
    Standalone {
        role: String,
        replicas: usize,
    },
    Cluster {
        masters: usize,
        replicas: usize,
        failed: usize,
        slots: u32,
        state: String,
    },
    Sentinel {
        master: String,
        sentinels: usize,
        role: String,
        replicas: usize,
    },
}

impl fmt::Display for TopologyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyReport::Standalone { role, replicas } => {
                write!(f, "standalone ({role}, {replicas} replicas attached)")
            }
            TopologyReport::Cluster {
                masters,
                replicas,
                failed,
                slots,
                state,
            } => {
                write!(
                    f,
                    "cluster: {masters} masters serving {slots} of 16384 slots, {replicas} replicas, state {state}"
                )?;
                if *failed > 0 {
                    write!(f, ", {failed} nodes marked failed")?;
                }
                Ok(())
            }
            TopologyReport::Sentinel {
                master,
                sentinels,
                role,
                replicas,
            } => write!(
                f,
                "sentinel: master '{master}' ({role}, {replicas} replicas attached), {sentinels} sentinels configured"
            ),
        }
    }
}

/// Commands sent together: one pipeline, or in a cluster one pipeline per slot (a cluster
/// refuses a pipeline that spans slots), sent at once. Results come back in push order.
#[derive(Default)]
pub(crate) struct Batch {
    cmds: Vec<(u16, redis::Cmd)>,
    /// Outside a cluster (one pipeline takes every command), slots are not computed.
    unslotted: bool,
}

impl Batch {
    /// An empty batch for `store`'s topology, with room for `n` commands.
    fn for_store(store: &Store, n: usize) -> Batch {
        Batch {
            cmds: Vec::with_capacity(n),
            unslotted: !store.is_cluster(),
        }
    }

    /// Adds `cmd`, whose key (the one that picks its slot) is `key`.
    fn push(&mut self, key: &str, cmd: redis::Cmd) {
        let slot = if self.unslotted {
            0
        } else {
            topology::slot(key.as_bytes())
        };
        self.cmds.push((slot, cmd));
    }

    fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }
}

/// Keys and generic commands, for the typed views only.
impl Store {
    /// `{prefix}{rest}`: every key of the relay.
    fn key(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }

    fn is_cluster(&self) -> bool {
        self.mode == RedisMode::Cluster
    }

    /// The tenant's id as its keys carry it: the hash tag `{tenant}` in a cluster, the id
    /// itself elsewhere (see [`TenantSegment`]).
    fn tenant<'t>(&self, t: &'t crate::domain::TenantId) -> TenantSegment<'t> {
        TenantSegment {
            tenant: t.as_str(),
            tagged: self.is_cluster(),
        }
    }

    /// In a cluster, `:{group}`, appended to the names of deployment-wide keys that one script
    /// touches together so they share a slot; nothing elsewhere (names as before).
    fn group(&self, group: &str) -> String {
        if self.is_cluster() {
            format!(":{{{group}}}")
        } else {
            String::new()
        }
    }

    /// Sends a batch: one pipeline, or in a cluster one per slot, at most
    /// [`BATCH_GROUPS_IN_FLIGHT`] at once. Each reply is converted to `T`.
    async fn run<T: redis::FromRedisValue>(&self, batch: Batch) -> StoreResult<Vec<T>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.conn().await?;
        let values: Result<Vec<redis::Value>, redis::RedisError> = if !self.is_cluster() {
            let mut pipe = redis::pipe();
            for (_, cmd) in batch.cmds {
                pipe.add_command(cmd);
            }
            let mut c = c;
            pipe.query_async(&mut c).await
        } else {
            use futures_util::stream::{StreamExt, TryStreamExt};
            let n = batch.cmds.len();
            let mut groups: std::collections::BTreeMap<u16, Vec<(usize, redis::Cmd)>> =
                Default::default();
            for (i, (slot, cmd)) in batch.cmds.into_iter().enumerate() {
                groups.entry(slot).or_default().push((i, cmd));
            }
            let replies: Result<Vec<Vec<(usize, redis::Value)>>, redis::RedisError> =
                futures_util::stream::iter(groups.into_values().map(|group| {
                    let mut c = c.clone();
                    async move {
                        let mut pipe = redis::pipe();
                        let order: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
                        for (_, cmd) in group {
                            pipe.add_command(cmd);
                        }
                        let values: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                        Ok::<_, redis::RedisError>(order.into_iter().zip(values).collect())
                    }
                }))
                .buffer_unordered(BATCH_GROUPS_IN_FLIGHT)
                .try_collect()
                .await;
            replies.map(|groups| {
                let mut ordered = vec![redis::Value::Nil; n];
                for (i, v) in groups.into_iter().flatten() {
                    ordered[i] = v;
                }
                ordered
            })
        };
        let values = self.observe(values)?;
        values
            .iter()
            .map(|v| redis::from_redis_value(v).map_err(StoreError::Command))
            .collect()
    }

    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        let r = c.get(key).await;
        self.observe(r)
    }

    async fn set_px(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<(), _> = set_px_cmd(key, value, ttl).query_async(&mut c).await;
        self.observe(r)
    }

    async fn del(&self, key: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<(), _> = c.del(key).await;
        self.observe(r)
    }

    /// `SET key value NX PX ttl`: true when the key was created.
    async fn set_nx_px(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let r: Result<Option<String>, _> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await;
        self.observe(r).map(|v| v.is_some())
    }

    /// Deletes `key` only if it still holds `value` (our lock or lease).
    async fn release(&self, key: &str, value: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = redis::Script::new(RELEASE)
            .key(key)
            .arg(value)
            .invoke_async(&mut c)
            .await;
        self.observe(r).map(|n| n == 1)
    }

    /// `GET` for each key, in one round trip.
    async fn get_many(&self, keys: &[String]) -> StoreResult<Vec<Option<String>>> {
        let mut batch = Batch::default();
        for k in keys {
            batch.push(k, redis::Cmd::get(k));
        }
        self.run(batch).await
    }

    /// `EXISTS` for each key, in one round trip.
    async fn exists_many(&self, keys: &[String]) -> StoreResult<Vec<bool>> {
        let mut batch = Batch::default();
        for k in keys {
            batch.push(k, redis::Cmd::exists(k));
        }
        self.run(batch).await
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), under a prefix of the test's own that it purges
    //! at the end (every key it writes also expires within minutes).
    use super::*;
    use crate::domain::{ContentType, TenantId};
    use std::sync::Arc;

    pub(super) const TENANT: &str = "0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11";

    /// [`TENANT`], parsed.
    pub(super) fn tenant() -> TenantId {
        TenantId::parse(TENANT).expect("valid tenant id")
    }

    pub(super) fn store() -> Store {
        let prefix = format!("o365relay:test:store:{}:", uuid::Uuid::new_v4().simple());
        Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL")
    }

    pub(super) async fn keys(store: &Store) -> Vec<String> {
        let mut c = store.conn().await.expect("Redis answers");
        let mut keys: Vec<String> = c
            .keys(format!("{}*", store.prefix()))
            .await
            .expect("Redis answers");
        for k in keys.iter_mut() {
            *k = k[store.prefix().len()..].to_string();
        }
        keys.sort();
        keys
    }

    /// Replicas of the previous version share these keys: their names and values must not
    /// change.
    #[tokio::test]
    async fn every_view_writes_the_keys_replicas_share() {
        let store = store();
        let t = tenant();
        let ct: ContentType = "Audit.Exchange".parse().expect("valid content type");
        let min = Duration::from_secs(60);
        let end = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00+00:00")
            .expect("valid time")
            .with_timezone(&chrono::Utc);

        store
            .tokens()
            .put(&t, "{\"token\":1}", min)
            .await
            .expect("put");
        assert!(store.tokens().try_lock(&t, "me", min).await.expect("lock"));
        store.tenants().put(&t, "{}").await.expect("put");
        store
            .checkpoints()
            .set(&t, ct, end, min)
            .await
            .expect("set");
        assert!(store.consent().use_once("s1", min).await.expect("used"));
        assert_eq!(
            store.consent().state_key("a-key").await.expect("read"),
            Some("a-key".to_string())
        );
        assert!(store.consent_allowlist().add(&t).await.expect("allowed"));
        assert!(store
            .start_guards()
            .try_take(&t, ct, min)
            .await
            .expect("taken"));
        let lease = Lease::new(
            Arc::new(Store::new("redis://127.0.0.1:6379", store.prefix()).expect("valid URL")),
            "keeper",
            min,
        );
        assert!(lease.try_hold().await);
        assert_eq!(
            store.quota().hit(&t, 5).await.expect("answered"),
            quota::Hit::Admitted
        );
        store
            .admin_sessions()
            .open("hash-of-a-session-id", "fingerprint", min)
            .await
            .expect("opened");
        assert_eq!(
            keys(&store).await,
            vec![
                "admin-session:hash-of-a-session-id".to_string(),
                format!("checkpoint:{t}:Audit.Exchange"),
                "consent-allowed".to_string(),
                "consent-state-key".to_string(),
                "consent-used:s1".to_string(),
                "lease:keeper".to_string(),
                format!("quota:{t}:0"),
                format!("sub-start:{t}:Audit.Exchange"),
                "tenants".to_string(),
                format!("token-lock:{t}"),
                format!("token:{t}"),
            ]
        );
        for (key, value) in [
            (format!("token:{t}"), "{\"token\":1}"),
            (format!("token-lock:{t}"), "me"),
            (
                format!("checkpoint:{t}:Audit.Exchange"),
                "2024-05-01T10:00:00+00:00",
            ),
            ("consent-used:s1".to_string(), "1"),
            ("consent-state-key".to_string(), "a-key"),
            (
                "admin-session:hash-of-a-session-id".to_string(),
                "fingerprint",
            ),
        ] {
            let got = store.get(&format!("{}{key}", store.prefix())).await;
            assert_eq!(got.expect("read").as_deref(), Some(value), "{key}");
        }
        store.purge_prefix().await.expect("purged");
    }
}
