//! Subscription start guards (`sub-start:{tenant}:{contentType}`): at most one `/start` per
//! tenant and content type in a spacing interval, shared by every replica. The value is the
//! time of the start, for an operator reading Redis.

use super::{Store, StoreResult};
use crate::domain::{ContentType, TenantId};
use std::time::Duration;

/// Guards that space out subscription starts, see [`Store::start_guards`].
pub struct StartGuards<'a>(&'a Store);

impl<'a> StartGuards<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        StartGuards(store)
    }

    fn key(&self, t: &TenantId, ct: ContentType) -> String {
        self.0.key(&format!("sub-start:{t}:{ct}"))
    }

    /// Takes the guard for `spacing` unless a start was recorded within it: true when taken.
    pub async fn try_take(
        &self,
        t: &TenantId,
        ct: ContentType,
        spacing: Duration,
    ) -> StoreResult<bool> {
        let stamp = chrono::Utc::now().to_rfc3339();
        self.0.set_nx_px(&self.key(t, ct), &stamp, spacing).await
    }

    /// Takes the guard for `spacing` whether or not a start was recorded (a forced start).
    pub async fn take(&self, t: &TenantId, ct: ContentType, spacing: Duration) -> StoreResult<()> {
        let stamp = chrono::Utc::now().to_rfc3339();
        self.0.set_px(&self.key(t, ct), &stamp, spacing).await
    }
}
