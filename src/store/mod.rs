//! Redis: the one owner of every key the relay keeps. Each concern has a typed view that
//! builds its own keys under `O365_REDIS_PREFIX` and takes domain types, never raw keys:
//!
//! - [`Store::tokens`] — the shared token cache and its refresh lock ([`tokens`]);
//! - [`Store::dedup`] — blob markers (relayed, dead-lettered, enqueued by reconciliation) and
//!   the record claims and compact done markers behind [`dedup::Dedup::publish_once`] ([`dedup`]);
//! - [`Store::tenants`] — the tenant registry ([`tenants`]);
//! - [`Lease`] — "one replica at a time" ([`leases`]);
//! - [`Store::quota`] — the per-tenant request budget shared by replicas ([`quota`]);
//! - [`Store::checkpoints`] — reconciliation checkpoints ([`checkpoints`]);
//! - [`Store::consent`] — single-use consent states, bound to a browser and bounded in
//!   number, and [`Store::consent_allowlist`] — who may onboard ([`consent`]);
//! - [`Store::start_guards`] — the spacing of subscription starts ([`subscriptions`]);
//! - [`Store::parking`] — requests to release parked jobs and reconcile un-parked tenants
//!   ([`parking`]).
//!
//! This module keeps the connection, the outage bookkeeping and the generic commands; they are
//! private to the store.
//!
//! Redis is an accelerator, never a single point of failure for relaying: callers get a
//! [`StoreError`] and degrade (fetch tokens directly, relay without de-duplication). The outage
//! is logged once when it starts and once when it ends.

pub mod activity;
pub mod checkpoints;
pub mod consent;
pub mod dedup;
pub mod leases;
pub mod parking;
pub mod quota;
pub mod replicas;
pub mod subscriptions;
pub mod tenants;
pub mod tokens;

pub use leases::Lease;

use crate::config::PemFile;
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

/// Whether a connection error is the TLS layer refusing (an unknown issuer, a name mismatch, a
/// handshake alert) rather than the network.
pub(crate) fn is_tls_failure(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "alert", "ssl"]
        .iter()
        .any(|w| e.contains(w))
}

/// Bound on marker writes kept in memory during a Redis outage (about 100 bytes each).
const MAX_DEFERRED: usize = 500_000;

/// Check-and-delete: releases a lock or lease only when we still hold it.
const RELEASE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end"#;

pub struct Store {
    prefix: String,
    client: redis::Client,
    /// With rediss://, which CA the server's certificate is checked against (for messages).
    tls: Option<String>,
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
        Store::with_ca(url, prefix, None)
    }

    /// With a rediss:// URL, the server's certificate is verified against `ca` (the private CA
    /// of `O365_REDIS_CA_PATH`), else against the system's CA store; verification is never off
    /// (the configuration refuses redis-rs's `#insecure`). docs/OPERATIONS.md, "Managed Redis
    /// and RabbitMQ (TLS)".
    pub fn with_ca(url: &str, prefix: &str, ca: Option<&PemFile>) -> StoreResult<Store> {
        let is_tls = url.starts_with("rediss://");
        let client = match ca {
            Some(ca) if is_tls => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.pem.clone()),
                },
            )
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "the CA in O365_REDIS_CA_PATH ({}) is unusable: {e}",
                    ca.path.display()
                ))
            })?,
            _ => redis::Client::open(url)
                .map_err(|e| StoreError::Unavailable(format!("bad URL: {e}")))?,
        };
        let tls = is_tls.then(|| match ca {
            Some(ca) => format!("CA {}", ca.path.display()),
            None => "system CA store".to_string(),
        });
        Ok(Store {
            prefix: prefix.to_string(),
            client,
            tls,
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

    /// `None` for plain Redis; with rediss://, what the certificate is checked against
    /// (`CA /path` or `system CA store`), for `o365-relay check`.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// A connection failure as an operator reads it: a failed TLS handshake names the variables
    /// to look at instead of passing on rustls' words alone.
    fn connect_error(&self, e: String) -> StoreError {
        match &self.tls {
            Some(trust) if is_tls_failure(&e) => StoreError::Unavailable(format!(
                "TLS handshake with Redis failed: {e} (verified against: {trust}; check O365_REDIS_CA_PATH, and that the host name in O365_REDIS_URL is one the certificate names)"
            )),
            _ => StoreError::Unavailable(e),
        }
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
            Ok(Err(e)) => Err(self.observe_err(self.connect_error(e.to_string()))),
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
        if self.tls.is_none() {
            return timed_out;
        }
        match tokio::time::timeout(
            Duration::from_secs(1),
            self.client.get_multiplexed_async_connection(),
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

    /// Single-use consent states.
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

    /// Tenants the subscription keeper found healthy.
    pub fn keeper_checks(&self) -> subscriptions::KeeperChecks<'_> {
        subscriptions::KeeperChecks::new(self)
    }

    // ---- deferred markers --------------------------------------------------------------------

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

/// Keys and generic commands, for the typed views only.
impl Store {
    /// `{prefix}{rest}`: every key of the relay.
    fn key(&self, rest: &str) -> String {
        format!("{}{}", self.prefix, rest)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<String>> {
        let mut c = self.conn().await?;
        let r = c.get(key).await;
        self.observe(r)
    }

    async fn set_px(&self, key: &str, value: &str, ttl: Duration) -> StoreResult<()> {
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
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.conn().await?;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.get(k);
        }
        let r: Result<Vec<Option<String>>, _> = pipe.query_async(&mut c).await;
        self.observe(r)
    }

    /// `EXISTS` for each key, in one round trip.
    async fn exists_many(&self, keys: &[String]) -> StoreResult<Vec<bool>> {
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
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), under a prefix of the test's own that it purges
    //! at the end (every key it writes also expires within minutes).
    use super::*;
    use crate::domain::{ContentType, TenantId};
    use std::sync::Arc;

    const TENANT: &str = "0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11";

    fn store() -> Store {
        let prefix = format!("o365relay:test:store:{}:", uuid::Uuid::new_v4().simple());
        Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL")
    }

    async fn keys(store: &Store) -> Vec<String> {
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
        let t = TenantId::parse(TENANT).expect("valid tenant id");
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
        assert!(store
            .consent()
            .issue("s1", "hash-of-a-nonce", min, 10)
            .await
            .expect("issue"));
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
            quota::Admission::Admitted
        );
        assert_eq!(
            keys(&store).await,
            vec![
                format!("checkpoint:{t}:Audit.Exchange"),
                "consent-allowed".to_string(),
                "consent-state:s1".to_string(),
                "consent-states".to_string(),
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
            ("consent-state:s1".to_string(), "hash-of-a-nonce"),
        ] {
            let got = store.get(&format!("{}{key}", store.prefix())).await;
            assert_eq!(got.expect("read").as_deref(), Some(value), "{key}");
        }
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn a_keeper_check_holds_until_it_expires_or_is_doubted() {
        let store = store();
        let a = TenantId::parse(TENANT).expect("valid tenant id");
        let b = TenantId::parse("7d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09").expect("valid tenant id");
        let checks = store.keeper_checks();
        checks
            .healthy(&a, Duration::from_secs(60))
            .await
            .expect("set");
        checks
            .healthy(&b, Duration::from_millis(50))
            .await
            .expect("set");
        let both = [a.clone(), b.clone()];
        assert_eq!(
            checks.still_healthy(&both).await.expect("read"),
            [true, true]
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            checks.still_healthy(&both).await.expect("read"),
            [true, false]
        );
        checks.doubt(&a).await.expect("deleted");
        assert_eq!(
            checks.still_healthy(&both).await.expect("read"),
            [false, false]
        );
        assert_eq!(keys(&store).await, Vec::<String>::new());
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn a_consent_state_is_taken_once_and_only_by_its_browser() {
        use consent::Taken;
        let store = store();
        let ttl = Duration::from_secs(60);
        assert!(store
            .consent()
            .issue("s1", "h1", ttl, 10)
            .await
            .expect("issued"));
        // Another browser (or none) cannot use it, and does not burn it either.
        for other in ["h2", ""] {
            assert_eq!(
                store.consent().take("s1", other).await.expect("answered"),
                Taken::OtherBrowser
            );
        }
        assert_eq!(
            store.consent().take("s1", "h1").await.expect("answered"),
            Taken::Consumed
        );
        assert_eq!(
            store.consent().take("s1", "h1").await.expect("answered"),
            Taken::Unknown
        );
        assert_eq!(
            store
                .consent()
                .take("never-issued", "h1")
                .await
                .expect("answered"),
            Taken::Unknown
        );
        assert_eq!(store.consent().in_progress().await.expect("answered"), 0);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn consent_states_in_progress_are_capped_and_free_up_when_used_or_expired() {
        let store = store();
        let long = Duration::from_secs(60);
        for s in ["a", "b", "c"] {
            assert!(store
                .consent()
                .issue(s, "h", long, 3)
                .await
                .expect("issued"));
        }
        assert!(!store
            .consent()
            .issue("d", "h", long, 3)
            .await
            .expect("answered"));
        let mut c = store.conn().await.expect("Redis answers");
        let d: bool = c
            .exists(format!("{}consent-state:d", store.prefix()))
            .await
            .expect("answered");
        assert!(!d, "nothing is written above the cap");
        // Using one frees its place at once.
        store.consent().take("a", "h").await.expect("answered");
        assert!(store
            .consent()
            .issue("d", "h", long, 3)
            .await
            .expect("issued"));
        assert_eq!(store.consent().in_progress().await.expect("answered"), 3);
        // Expired ones are trimmed on the next issue (a state lives milliseconds here).
        let store2 = self::store();
        let short = Duration::from_millis(50);
        for s in ["x", "y"] {
            assert!(store2
                .consent()
                .issue(s, "h", short, 2)
                .await
                .expect("issued"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(store2
            .consent()
            .issue("z", "h", long, 2)
            .await
            .expect("issued"));
        assert_eq!(store2.consent().in_progress().await.expect("answered"), 1);
        store.purge_prefix().await.expect("purged");
        store2.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_consent_allowlist_adds_and_removes_tenants() {
        let store = store();
        let t = TenantId::parse(TENANT).expect("valid tenant id");
        let list = store.consent_allowlist();
        assert!(!list.contains(&t).await.expect("answered"));
        assert!(list.add(&t).await.expect("added"));
        assert!(!list.add(&t).await.expect("answered"), "already there");
        assert!(list.contains(&t).await.expect("answered"));
        assert_eq!(
            list.all().await.expect("answered"),
            vec![TENANT.to_string()]
        );
        assert!(list.remove(&t).await.expect("removed"));
        assert!(!list.remove(&t).await.expect("answered"));
        assert!(list.all().await.expect("answered").is_empty());
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_token_lock_is_held_by_one_holder_and_released_only_by_it() {
        let store = store();
        let t = TenantId::parse(TENANT).expect("valid tenant id");
        let tokens = store.tokens();
        let ttl = Duration::from_secs(60);
        assert!(tokens.try_lock(&t, "a", ttl).await.expect("answered"));
        assert!(!tokens.try_lock(&t, "b", ttl).await.expect("answered"));
        assert!(!tokens.unlock(&t, "b").await.expect("answered"));
        assert!(tokens.unlock(&t, "a").await.expect("answered"));
        assert!(tokens.try_lock(&t, "b", ttl).await.expect("answered"));
        tokens.put(&t, "{}", ttl).await.expect("put");
        tokens.remove(&t).await.expect("removed");
        assert_eq!(tokens.get(&t).await.expect("answered"), None);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_quota_admits_its_budget_then_says_how_long_to_wait() {
        let store = store();
        let t = TenantId::parse(TENANT).expect("valid tenant id");
        for _ in 0..3 {
            let admitted = store.quota().hit(&t, 3).await.expect("answered");
            assert_eq!(admitted, quota::Admission::Admitted);
        }
        match store.quota().hit(&t, 3).await.expect("answered") {
            quota::Admission::Wait(w) => {
                assert!(
                    w > Duration::from_secs(59) && w <= Duration::from_secs(62),
                    "{w:?}"
                )
            }
            other => panic!("the fourth request was {other:?}"),
        }
        store.purge_prefix().await.expect("purged");
    }

    /// The calendar, with the clock moved by hand (microseconds).
    mod calendar {
        use super::*;
        use quota::{Ask, Booking};

        const T0: i64 = 1_800_000_000_000_000;
        const SEC: i64 = 1_000_000;
        /// 61 s over a budget of 3.
        const PACE: i64 = 61 * SEC / 3;

        fn booked(b: Booking) -> i64 {
            match b {
                Booking::Booked(d) => d.as_micros() as i64,
                other => panic!("not booked: {other:?}"),
            }
        }

        async fn ask(store: &Store, t: &TenantId, ask: Ask, at: i64) -> Booking {
            store
                .quota()
                .book_at(t, 3, ask, at)
                .await
                .expect("answered")
        }

        fn due() -> Ask {
            Ask::Due {
                wait_up_to: Duration::from_secs(1),
            }
        }

        #[tokio::test]
        async fn a_tenant_over_its_budget_is_booked_a_pace_apart_from_when_the_budget_frees_up() {
            let store = store();
            let t = TenantId::parse(TENANT).expect("valid tenant id");
            for _ in 0..3 {
                assert_eq!(ask(&store, &t, Ask::Fresh, T0).await, Booking::Admitted);
            }
            // The oldest request leaves the 61 s window 61 s (and a millisecond) from now.
            let first = 61 * SEC + 1_000;
            assert_eq!(booked(ask(&store, &t, Ask::Fresh, T0).await), first);
            assert_eq!(booked(ask(&store, &t, Ask::Fresh, T0).await), first + PACE);
            // Later asks book later slots, the same slots whoever asks when.
            let later = T0 + 10 * SEC;
            assert_eq!(
                booked(ask(&store, &t, Ask::Fresh, later).await),
                T0 + first + 2 * PACE - later
            );
            // Another tenant's budget and calendar are its own.
            let other = TenantId::parse("7f3a1b2c-0000-4000-8000-000000000001").expect("valid");
            assert_eq!(ask(&store, &other, Ask::Fresh, T0).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_booked_blob_is_admitted_at_its_turn_and_a_fresh_one_does_not_overtake_it() {
            let store = store();
            let t = TenantId::parse(TENANT).expect("valid tenant id");
            for _ in 0..3 {
                ask(&store, &t, Ask::Fresh, T0).await;
            }
            let turns: Vec<i64> = [
                ask(&store, &t, Ask::Fresh, T0).await,
                ask(&store, &t, Ask::Fresh, T0).await,
            ]
            .into_iter()
            .map(|b| T0 + booked(b))
            .collect();
            // At the first turn the window has room: the booked blob goes, and a fresh blob
            // arriving then books after the last booking instead of taking the room.
            assert_eq!(ask(&store, &t, due(), turns[0]).await, Booking::Admitted);
            assert_eq!(
                booked(ask(&store, &t, Ask::Fresh, turns[0]).await),
                turns[1] + PACE - turns[0]
            );
            assert_eq!(ask(&store, &t, due(), turns[1]).await, Booking::Admitted);
            // Once every booking has had its turn, a fresh blob goes at once again.
            let idle = turns[1] + 3 * PACE;
            assert_eq!(ask(&store, &t, Ask::Fresh, idle).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_blob_at_its_turn_a_moment_early_for_the_window_asks_again_shortly() {
            let store = store();
            let t = TenantId::parse(TENANT).expect("valid tenant id");
            for _ in 0..3 {
                ask(&store, &t, Ask::Fresh, T0).await;
            }
            let early = T0 + 61 * SEC - 200_000;
            assert_eq!(
                ask(&store, &t, due(), early).await,
                Booking::Shortly(Duration::from_millis(201))
            );
            // Told not to wait, it is booked again instead.
            let no_wait = Ask::Due {
                wait_up_to: Duration::ZERO,
            };
            assert_eq!(booked(ask(&store, &t, no_wait, early).await), 201_000);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_busy_tenant_is_booked_ahead_without_spending_its_budget() {
            let store = store();
            let t = TenantId::parse(TENANT).expect("valid tenant id");
            let busy = Ask::Busy {
                not_before: Duration::from_secs(1),
            };
            assert_eq!(booked(ask(&store, &t, busy, T0).await), SEC);
            assert_eq!(booked(ask(&store, &t, busy, T0).await), SEC + PACE);
            // The budget is untouched: the booked blobs are admitted at their turns, all three.
            for turn in [T0 + SEC, T0 + SEC + PACE] {
                assert_eq!(ask(&store, &t, due(), turn).await, Booking::Admitted);
            }
            let idle = T0 + SEC + 3 * PACE;
            assert_eq!(ask(&store, &t, Ask::Fresh, idle).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }
    }

    #[tokio::test]
    async fn a_lease_is_held_by_one_replica_until_released() {
        let store = Arc::new(store());
        let ttl = Duration::from_secs(60);
        let (a, b) = (
            Lease::new(store.clone(), "keeper", ttl),
            Lease::new(store.clone(), "keeper", ttl),
        );
        assert!(a.try_hold().await);
        assert!(a.try_hold().await, "renewed by its holder");
        assert!(!b.try_hold().await);
        a.release().await;
        assert!(b.try_hold().await);
        store.purge_prefix().await.expect("purged");
    }
}
