//! Redis: the one owner of every key the relay keeps (token cache, locks, tenant registry,
//! de-duplication markers, consent states, leases, checkpoints, quota windows). Every key is
//! built here under `O365_REDIS_PREFIX`.
//!
//! Redis is an accelerator, never a single point of failure for relaying: callers get a
//! [`StoreError`] and degrade (fetch tokens directly, relay without de-duplication). The outage
//! is logged once when it starts and once when it ends.

use crate::domain::{ContentId, ContentType, TenantId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Check-and-delete: releases a lock or lease only when we still hold it.
const RELEASE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;
/// Claims each KEYS[i] with ARGV[1] (PX ARGV[2]) unless taken: 1 = claimed now, 0 = already
/// published (`d`), 2 = claimed by someone else.
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    local v = redis.call('GET', k)
    if v == 'd' then out[i] = 0 elseif v == ARGV[1] then out[i] = 1 else out[i] = 2 end
  end
end
return out
"#;

/// What happened to a record claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Mine,
    Done,
    Pending,
}

/// Check-and-extend for leases.
const RENEW: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#;

pub struct Store {
    prefix: String,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
    down: AtomicBool,
    /// Marker writes that failed while Redis was down: (key, value, expiry).
    deferred: Mutex<Vec<(String, String, Instant)>>,
    /// While Redis is down, one call a second is let through to probe it; the others fail
    /// at once instead of each waiting on the connection manager's reconnect.
    last_probe: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Store {
    pub fn new(url: &str, prefix: &str) -> StoreResult<Store> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad URL: {e}")))?;
        Ok(Store {
            prefix: prefix.to_string(),
            client,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            down: AtomicBool::new(false),
            last_probe: Mutex::new(None),
            deferred: Mutex::new(Vec::new()),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A multiplexed connection; (re)connects lazily, at most once a second while Redis is down,
    /// so a dead Redis costs callers a fast error instead of a hang.
    async fn conn(&self) -> StoreResult<ConnectionManager> {
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
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(1)
            .set_max_delay(500);
        match tokio::time::timeout(
            Duration::from_millis(1500),
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        {
            Ok(Ok(c)) => {
                *self.conn.lock().expect("poisoned") = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(self.observe_err(StoreError::Unavailable(e.to_string()))),
            Err(_) => Err(self.observe_err(StoreError::Unavailable("connect timed out".into()))),
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
            }
        };
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

    /// Whether the last Redis call failed for want of a connection.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    pub async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<String, _> = redis::cmd("PING").query_async(&mut c).await;
        self.observe(r).map(|_| ())
    }

    // ---- keys --------------------------------------------------------------------------------

    fn key(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }
    fn token_key(&self, t: &TenantId) -> String {
        self.key(&format!("token:{t}"))
    }
    pub fn relayed_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.key(&format!("relayed:{t}:{c}"))
    }
    /// Set while a blob enqueued by reconciliation waits in the work or retry queue, so the
    /// next passes do not enqueue it again.
    pub fn reconcile_guard_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.key(&format!("reconcile-enqueued:{t}:{c}"))
    }
    /// Set when a blob was dead-lettered, so reconciliation does not enqueue it again and
    /// again while Microsoft still lists it (an operator requeues dead letters explicitly).
    pub fn dead_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.key(&format!("dead:{t}:{c}"))
    }
    fn record_key(&self, t: &TenantId, id: &str) -> String {
        self.key(&format!("rec:{t}:{id}"))
    }
    fn tenants_key(&self) -> String {
        self.key("tenants")
    }

    // ---- plain values ------------------------------------------------------------------------

    pub async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        let r = c.get(key).await;
        self.observe(r)
    }

    pub async fn set_px(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<(), _> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await;
        self.observe(r)
    }

    pub async fn del(&self, key: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<(), _> = c.del(key).await;
        self.observe(r)
    }

    /// `SET key value NX PX ttl`: true when the key was created.
    pub async fn set_nx_px(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
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
    pub async fn release(&self, key: &str, value: &str) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = redis::Script::new(RELEASE)
            .key(key)
            .arg(value)
            .invoke_async(&mut c)
            .await;
        self.observe(r).map(|n| n == 1)
    }

    /// Extends `key` by `ttl` only if it still holds `value`.
    pub async fn renew(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = redis::Script::new(RENEW)
            .key(key)
            .arg(value)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await;
        self.observe(r).map(|n| n == 1)
    }

    /// `GETDEL`: reads and consumes a single-use value.
    pub async fn take(&self, key: &str) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        let r = redis::cmd("GETDEL").arg(key).query_async(&mut c).await;
        self.observe(r)
    }

    /// Increments a counter that lives for `ttl` from its first increment.
    pub async fn incr_window(&self, key: &str, ttl: Duration) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let r: Result<(u64, i64), _> = redis::pipe()
            .atomic()
            .incr(key, 1u64)
            .pexpire(key, ttl.as_millis() as i64)
            .query_async(&mut c)
            .await;
        self.observe(r).map(|(n, _)| n)
    }

    // ---- tokens ------------------------------------------------------------------------------

    pub fn token_cache_key(&self, t: &TenantId) -> String {
        self.token_key(t)
    }
    pub fn token_lock_key(&self, t: &TenantId) -> String {
        self.key(&format!("token-lock:{t}"))
    }

    // ---- de-duplication ----------------------------------------------------------------------

    /// `EXISTS` for each key, in one round trip.
    pub async fn exists_many(&self, keys: &[String]) -> StoreResult<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.exists(k);
        }
        let r: Result<Vec<bool>, _> = pipe.query_async(&mut c).await;
        self.observe(r)
    }

    pub async fn is_relayed(&self, t: &TenantId, c: &ContentId) -> StoreResult<bool> {
        let mut conn = self.conn().await?;
        let r = conn.exists(self.relayed_key(t, c)).await;
        self.observe(r)
    }

    pub async fn mark_relayed(
        &self,
        t: &TenantId,
        c: &ContentId,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.set_many_or_defer(vec![(self.relayed_key(t, c), "1")], ttl)
            .await
    }

    pub async fn mark_dead(&self, t: &TenantId, c: &ContentId, ttl: Duration) -> StoreResult<()> {
        self.set_px(&self.dead_key(t, c), "1", ttl).await
    }

    /// Claims records for publishing, one round trip for the batch. Each key ends as
    /// `p:{owner}` (claimed, being published; expires after `claim_ttl` if the owner dies) or
    /// `d` (published). For each id: [`Claim::Mine`], [`Claim::Done`] or [`Claim::Pending`]
    /// (another worker is publishing it right now: wait, then ask again).
    pub async fn claim_records(
        &self,
        t: &TenantId,
        ids: &[&str],
        owner: &str,
        claim_ttl: Duration,
    ) -> StoreResult<Vec<Claim>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let script = redis::Script::new(CLAIM);
        let mut inv = script.prepare_invoke();
        for id in ids {
            inv.key(self.record_key(t, id));
        }
        inv.arg(format!("p:{owner}"))
            .arg(claim_ttl.as_millis().max(1) as u64);
        let r: Result<Vec<i64>, _> = inv.invoke_async(&mut c).await;
        self.observe(r).map(|v| {
            v.into_iter()
                .map(|n| match n {
                    1 => Claim::Mine,
                    0 => Claim::Done,
                    _ => Claim::Pending,
                })
                .collect()
        })
    }

    /// Marks published records done for `ttl`.
    pub async fn finish_records(
        &self,
        t: &TenantId,
        ids: &[&str],
        ttl: Duration,
    ) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let writes: Vec<(String, &str)> =
            ids.iter().map(|id| (self.record_key(t, id), "d")).collect();
        self.set_many_or_defer(writes, ttl).await
    }

    /// Writes `key = value PX ttl` for each pair; what cannot be written now (Redis down) is
    /// kept in memory and written by [`Store::flush_deferred`] once Redis is back, so markers
    /// of work done during an outage still suppress duplicates afterwards.
    async fn set_many_or_defer(
        &self,
        writes: Vec<(String, &str)>,
        ttl: Duration,
    ) -> StoreResult<()> {
        let result = async {
            let mut c = self.conn().await?;
            let mut pipe = redis::pipe();
            for (k, v) in &writes {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(*v)
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64)
                    .ignore();
            }
            let r: Result<(), _> = pipe.query_async(&mut c).await;
            self.observe(r)
        }
        .await;
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
        let result = async {
            let mut c = self.conn().await?;
            let mut pipe = redis::pipe();
            for (k, v, e) in &live {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(v)
                    .arg("PX")
                    .arg(e.duration_since(now).as_millis().max(1) as u64)
                    .ignore();
            }
            let r: Result<(), _> = pipe.query_async(&mut c).await;
            self.observe(r)
        }
        .await;
        match result {
            Ok(()) => Ok(live.len()),
            Err(e) => {
                let mut d = self.deferred.lock().expect("poisoned");
                d.extend(live.into_iter().cloned());
                Err(e)
            }
        }
    }

    /// How many marker writes wait for Redis.
    pub fn deferred_len(&self) -> usize {
        self.deferred.lock().expect("poisoned").len()
    }

    /// Gives up claims we still hold (publishing failed), so a retry can take them at once.
    pub async fn release_claims(&self, t: &TenantId, ids: &[&str], owner: &str) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(self.record_key(t, id))
                .arg(format!("p:{owner}"))
                .ignore();
        }
        let r: Result<(), _> = pipe.query_async(&mut c).await;
        self.observe(r)
    }

    // ---- tenant registry ---------------------------------------------------------------------

    pub async fn tenant_get(&self, t: &TenantId) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        let r = c.hget(self.tenants_key(), t.as_str()).await;
        self.observe(r)
    }

    pub async fn tenant_put(&self, t: &TenantId, json: &str) -> StoreResult<()> {
        let mut c = self.conn().await?;
        let r: Result<(), _> = c.hset(self.tenants_key(), t.as_str(), json).await;
        self.observe(r)
    }

    pub async fn tenant_remove(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.conn().await?;
        let r: Result<i64, _> = c.hdel(self.tenants_key(), t.as_str()).await;
        self.observe(r).map(|n| n > 0)
    }

    pub async fn tenant_all(&self) -> StoreResult<Vec<(String, String)>> {
        let mut c = self.conn().await?;
        let r = c.hgetall(self.tenants_key()).await;
        self.observe(r)
    }

    // ---- subscriptions, consent, reconciliation ----------------------------------------------

    pub fn start_guard_key(&self, t: &TenantId, ct: ContentType) -> String {
        self.key(&format!("sub-start:{t}:{ct}"))
    }
    pub fn consent_state_key(&self, state: &str) -> String {
        self.key(&format!("consent-state:{state}"))
    }
    pub fn lease_key(&self, name: &str) -> String {
        self.key(&format!("lease:{name}"))
    }
    pub fn checkpoint_key(&self, t: &TenantId, ct: ContentType) -> String {
        self.key(&format!("checkpoint:{t}:{ct}"))
    }
    pub fn quota_key(&self, t: &TenantId, window: u64) -> String {
        self.key(&format!("quota:{t}:{window}"))
    }

    /// Deletes every key under this store's prefix (tests and `demo` clean up with it).
    pub async fn purge_prefix(&self) -> StoreResult<u64> {
        let mut c = self.conn().await?;
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        let mut n = 0;
        loop {
            let r: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await;
            let (next, keys) = self.observe(r)?;
            if !keys.is_empty() {
                let r: Result<u64, _> = c.del(&keys).await;
                n += self.observe(r)?;
            }
            if next == 0 {
                return Ok(n);
            }
            cursor = next;
        }
    }
}

impl Store {
    /// Runs a Lua script on one key and returns its integer answer.
    pub async fn eval_i64(&self, script: &str, key: &str, args: &[String]) -> StoreResult<i64> {
        let mut c = self.conn().await?;
        let script = redis::Script::new(script);
        let mut inv = script.key(key);
        for a in args {
            inv.arg(a);
        }
        let r: Result<i64, _> = inv.invoke_async(&mut c).await;
        self.observe(r)
    }
}
