//! The per-tenant Management API budget shared by every replica (`quota:{tenant}:0`).
//!
//! Microsoft throttles the requests a publisher sends for a tenant (Office 365 Management
//! Activity API reference, "API throttling"); `O365_QUOTA_PER_MINUTE` is the budget. It is a
//! sliding-window log: a sorted set of request times per tenant; a request is admitted when
//! fewer than `limit` were admitted in the last minute. The window is 61 s, not 60: a request
//! is stamped when it is admitted, not when Microsoft receives it, and the extra second absorbs
//! that latency (and small clock differences between replicas) so no 60-second window *as
//! Microsoft counts it* ever sees more.

use super::{Store, StoreResult};
use crate::domain::TenantId;
use std::time::Duration;

/// Admits the request stamped ARGV[1] (ms) as member ARGV[3] if fewer than ARGV[2] were
/// admitted in the last 61 s: 0 = admitted, otherwise the milliseconds until a slot frees up.
const QUOTA_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 61000)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 62000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + 61000 - now + 1
"#;

/// The answer to one request for budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The request was counted: send it.
    Admitted,
    /// The budget is spent: ask again after this long.
    Wait(Duration),
}

/// The shared request budget, see [`Store::quota`].
pub struct Quota<'a>(&'a Store);

impl<'a> Quota<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Quota(store)
    }

    /// One key per tenant; the `:0` suffix is part of the key name replicas share.
    fn key(&self, t: &TenantId) -> String {
        self.0.key(&format!("quota:{t}:0"))
    }

    /// Requests counted for each tenant in the last minute (as [`Quota::hit`] counts them), in
    /// one round trip.
    pub async fn used_many(&self, tenants: &[TenantId]) -> StoreResult<Vec<u64>> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let since = chrono::Utc::now().timestamp_millis() - 61_000;
        let mut c = self.0.conn().await?;
        let mut pipe = redis::pipe();
        for t in tenants {
            pipe.zcount(self.key(t), since, "+inf");
        }
        let r: Result<Vec<u64>, _> = pipe.query_async(&mut c).await;
        self.0.observe(r)
    }

    /// Counts one request for `tenant` if fewer than `per_minute` were counted in the last
    /// minute.
    pub async fn hit(&self, tenant: &TenantId, per_minute: u32) -> StoreResult<Admission> {
        let now = chrono::Utc::now().timestamp_millis();
        let member = format!("{now}-{}", uuid::Uuid::new_v4().simple());
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = redis::Script::new(QUOTA_SCRIPT)
            .key(self.key(tenant))
            .arg(now.to_string())
            .arg(per_minute.to_string())
            .arg(member)
            .invoke_async(&mut c)
            .await;
        self.0.observe(r).map(|ms| match ms {
            0 => Admission::Admitted,
            ms => Admission::Wait(Duration::from_millis(ms.max(0) as u64)),
        })
    }
}
