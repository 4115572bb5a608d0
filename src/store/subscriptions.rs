//! Subscription start guards (`sub-start:{tenant}:{contentType}`): at most one `/start` per
//! tenant and content type in a spacing interval, shared by every replica. The value is the
//! time of the start, for an operator reading Redis.
//!
//! Keeper checks (`sub-ok:{tenant}`): the subscription keeper found every subscription of the
//! tenant healthy, and trusts that finding until the key expires; whoever has reason to doubt it
//! (reconciliation found notifications missing) deletes it. In Redis, not in the keeper, so a
//! replica that takes the keeper lease over does not list every tenant again at once.

use super::{Store, StoreResult};
use crate::domain::{ContentType, TenantId};
use std::time::Duration;

/// Tenants whose subscriptions were found healthy, see [`Store::keeper_checks`].
pub struct KeeperChecks<'a>(&'a Store);

impl<'a> KeeperChecks<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        KeeperChecks(store)
    }

    fn key(&self, t: &TenantId) -> String {
        self.0.key(&format!("sub-ok:{}", self.0.tenant(t)))
    }

    /// For each tenant, whether it was found healthy recently enough to skip, in one round trip.
    pub async fn still_healthy(&self, tenants: &[TenantId]) -> StoreResult<Vec<bool>> {
        let keys: Vec<String> = tenants.iter().map(|t| self.key(t)).collect();
        self.0.exists_many(&keys).await
    }

    /// Every subscription of `t` was healthy just now; trust it for `ttl`.
    pub async fn healthy(&self, t: &TenantId, ttl: Duration) -> StoreResult<()> {
        let stamp = chrono::Utc::now().to_rfc3339();
        self.0.set_px(&self.key(t), &stamp, ttl).await
    }

    /// Check `t` on the keeper's next run.
    pub async fn doubt(&self, t: &TenantId) -> StoreResult<()> {
        self.0.del(&self.key(t)).await
    }
}

/// Guards that space out subscription starts, see [`Store::start_guards`].
pub struct StartGuards<'a>(&'a Store);

impl<'a> StartGuards<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        StartGuards(store)
    }

    fn key(&self, t: &TenantId, ct: ContentType) -> String {
        self.0.key(&format!("sub-start:{}:{ct}", self.0.tenant(t)))
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

#[cfg(test)]
mod tests {
    use crate::store::tests::{keys, store, tenant};

    use crate::domain::TenantId;

    use std::time::Duration;

    #[tokio::test]
    async fn a_keeper_check_holds_until_it_expires_or_is_doubted() {
        let store = store();
        let a = tenant();
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
}
