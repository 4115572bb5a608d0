//! Consent states and the consent allowlist.
//!
//! **States** (`consent-state:{state}` = the hex SHA-256 of the browser nonce the state is bound
//! to): the single-use `state` of a consent started in a browser, issued by `/consent/start`
//! and consumed by the callback only when the same browser presents the nonce. Only a hash is
//! kept, so reading Redis does not let anyone complete someone else's consent.
//!
//! Every state also sits in an index (`consent-states`, a sorted set scored by expiry in
//! milliseconds, Redis' own clock) so that the number of states in progress can be **bounded**:
//! issuing trims the expired entries and refuses above the cap, all in one Lua script, so
//! replicas racing cannot overshoot it. Without it, a client requesting `/consent/start` in a
//! loop held one key per request for 10 minutes (7.9k/s, about 0.8 GB). The index expires with
//! its newest state, and a consumed state leaves it at once.
//!
//! A state written by an earlier version holds `1`, not a hash: it matches no nonce, so an admin
//! in the middle of a consent during the upgrade starts again.
//!
//! **Allowlist** (`consent-allowed`, a set of tenant ids): the tenants added through the admin
//! API that may onboard when `O365_CONSENT_MODE=allowlist` (beside those configured).

use super::{Store, StoreResult};
use crate::domain::TenantId;
use redis::AsyncCommands;
use std::time::Duration;

/// KEYS[1] the state, KEYS[2] the index; ARGV[1] state, ARGV[2] nonce hash, ARGV[3] TTL in ms,
/// ARGV[4] the cap. Returns 1 when issued, 0 when the cap is reached.
const ISSUE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"#;

/// KEYS[1] the state, KEYS[2] the index; ARGV[1] state, ARGV[2] the presented nonce's hash ('' for
/// none). Returns 0 unknown (never issued, expired or used), 1 consumed, 2 bound to another
/// browser (left in place for its own browser). The values compared are SHA-256 hashes of
/// random nonces, so a comparison that is not constant-time tells nothing useful.
const TAKE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v ~= ARGV[2] then return 2 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"#;

/// What [`ConsentStates::take`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// Issued, unexpired, unused and bound to this browser: now consumed.
    Consumed,
    /// Never issued, expired or already used.
    Unknown,
    /// Issued for another browser (or no nonce presented): left for its own browser.
    OtherBrowser,
}

/// Single-use consent states, see [`Store::consent`].
pub struct ConsentStates<'a>(&'a Store);

impl<'a> ConsentStates<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        ConsentStates(store)
    }

    // A state and the index are touched by one script: in a cluster both carry the hash tag
    // `{consent}`, ahead of the state (which comes from the callback's query: a brace in it
    // must not pick the slot).
    fn key(&self, state: &str) -> String {
        self.0
            .key(&format!("consent-state{}:{state}", self.0.group("consent")))
    }

    fn index(&self) -> String {
        self.0
            .key(&format!("consent-states{}", self.0.group("consent")))
    }

    /// Keeps `state`, bound to `nonce_hash`, valid for `ttl` — unless `max` states are in
    /// progress already: then `false` and nothing is written.
    pub async fn issue(
        &self,
        state: &str,
        nonce_hash: &str,
        ttl: Duration,
        max: u32,
    ) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = redis::Script::new(ISSUE)
            .key(self.key(state))
            .key(self.index())
            .arg(state)
            .arg(nonce_hash)
            .arg(ttl.as_millis().max(1) as u64)
            .arg(max)
            .invoke_async(&mut c)
            .await;
        self.0.observe(r).map(|n| n == 1)
    }

    /// Consumes `state` if the browser presents the nonce it is bound to (`nonce_hash`, empty
    /// when the browser sent none).
    pub async fn take(&self, state: &str, nonce_hash: &str) -> StoreResult<Taken> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = redis::Script::new(TAKE)
            .key(self.key(state))
            .key(self.index())
            .arg(state)
            .arg(nonce_hash)
            .invoke_async(&mut c)
            .await;
        self.0.observe(r).map(|n| match n {
            1 => Taken::Consumed,
            2 => Taken::OtherBrowser,
            _ => Taken::Unknown,
        })
    }

    /// How many states are in progress (expired ones not yet trimmed included).
    pub async fn in_progress(&self) -> StoreResult<u64> {
        let mut c = self.0.conn().await?;
        let r = c.zcard(self.index()).await;
        self.0.observe(r)
    }
}

/// The tenants allowed to onboard through the admin API, see [`Store::consent_allowlist`].
pub struct ConsentAllowlist<'a>(&'a Store);

impl<'a> ConsentAllowlist<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        ConsentAllowlist(store)
    }

    fn key(&self) -> String {
        self.0.key("consent-allowed")
    }

    pub async fn contains(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r = c.sismember(self.key(), t.as_str()).await;
        self.0.observe(r)
    }

    /// Every tenant id on the list, as stored (the caller parses them).
    pub async fn all(&self) -> StoreResult<Vec<String>> {
        let mut c = self.0.conn().await?;
        let r = c.smembers(self.key()).await;
        self.0.observe(r)
    }

    /// Adds `t`: true when it was not on the list.
    pub async fn add(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = c.sadd(self.key(), t.as_str()).await;
        self.0.observe(r).map(|n| n == 1)
    }

    /// Removes `t`: true when it was on the list.
    pub async fn remove(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = c.srem(self.key(), t.as_str()).await;
        self.0.observe(r).map(|n| n == 1)
    }
}
