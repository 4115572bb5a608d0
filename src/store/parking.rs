//! Parking requests shared by every replica (see [`crate::tenancy::health`]):
//!
//! - `parking:sweep` — set when a tenant stops being parked (probe, consent): the parked
//!   queue holds jobs that may now run, and whichever replica runs the health loop moves them
//!   back to the work queue;
//! - `parking:reconcile` — a set of tenants un-parked since the last look, to reconcile at once
//!   (their checkpoint covers the parked period).
//!
//! Both are requests, not state: losing one (Redis flushed) only delays the work until the
//! periodic sweep and the next reconciliation pass.

use super::{Store, StoreResult};
use crate::domain::TenantId;
use redis::AsyncCommands;
use std::time::Duration;

/// A request nobody takes (no replica runs the loop) is dropped after a day.
const REQUEST_TTL: Duration = Duration::from_secs(86_400);

/// Parking requests, see [`Store::parking`].
pub struct ParkingRequests<'a>(&'a Store);

impl<'a> ParkingRequests<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        ParkingRequests(store)
    }

    fn sweep_key(&self) -> String {
        self.0.key("parking:sweep")
    }

    fn reconcile_key(&self) -> String {
        self.0.key("parking:reconcile")
    }

    /// Asks for a sweep of the parked queue.
    pub async fn request_sweep(&self) -> StoreResult<()> {
        let stamp = chrono::Utc::now().to_rfc3339();
        self.0.set_px(&self.sweep_key(), &stamp, REQUEST_TTL).await
    }

    /// Takes the sweep request: true when one was pending (only one caller gets it).
    pub async fn take_sweep_request(&self) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<u64, _> = c.del(self.sweep_key()).await;
        self.0.observe(r).map(|n| n > 0)
    }

    /// Asks for `tenant` to be reconciled at once.
    pub async fn request_reconcile(&self, tenant: &TenantId) -> StoreResult<()> {
        let mut c = self.0.conn().await?;
        let key = self.reconcile_key();
        let r: Result<(), _> = redis::pipe()
            .sadd(&key, tenant.as_str())
            .ignore()
            .pexpire(&key, REQUEST_TTL.as_millis() as i64)
            .ignore()
            .query_async(&mut c)
            .await;
        self.0.observe(r)
    }

    /// Takes up to `max` tenants waiting to be reconciled (each is taken by one caller).
    pub async fn take_reconcile_requests(&self, max: usize) -> StoreResult<Vec<TenantId>> {
        let mut c = self.0.conn().await?;
        let r: Result<Vec<String>, _> = redis::cmd("SPOP")
            .arg(self.reconcile_key())
            .arg(max.max(1))
            .query_async(&mut c)
            .await;
        Ok(self
            .0
            .observe(r)?
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .collect())
    }
}
