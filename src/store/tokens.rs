//! The shared token cache: one app-only token per tenant (`token:{tenant}`, the token's JSON,
//! expiring with the token) and the lock (`token-lock:{tenant}`) that lets one replica at a time
//! refresh it while the others wait for its value.

use super::{Store, StoreResult};
use crate::domain::TenantId;
use std::time::Duration;

/// The token cache and refresh lock, see [`Store::tokens`].
pub struct TokenCache<'a>(&'a Store);

impl<'a> TokenCache<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        TokenCache(store)
    }

    fn cache_key(&self, t: &TenantId) -> String {
        self.0.key(&format!("token:{}", self.0.tenant(t)))
    }

    fn lock_key(&self, t: &TenantId) -> String {
        self.0.key(&format!("token-lock:{}", self.0.tenant(t)))
    }

    /// The cached token's JSON, if any.
    pub async fn get(&self, t: &TenantId) -> StoreResult<Option<String>> {
        self.0.get(&self.cache_key(t)).await
    }

    /// Each tenant's cached token JSON, in one round trip.
    pub async fn get_many(&self, tenants: &[TenantId]) -> StoreResult<Vec<Option<String>>> {
        let keys: Vec<String> = tenants.iter().map(|t| self.cache_key(t)).collect();
        self.0.get_many(&keys).await
    }

    /// Caches the token's JSON for `ttl` (its remaining lifetime).
    pub async fn put(&self, t: &TenantId, json: &str, ttl: Duration) -> StoreResult<()> {
        self.0.set_px(&self.cache_key(t), json, ttl).await
    }

    /// Drops the cached token.
    pub async fn remove(&self, t: &TenantId) -> StoreResult<()> {
        self.0.del(&self.cache_key(t)).await
    }

    /// Takes the refresh lock for `holder` unless another replica holds it: true when taken.
    pub async fn try_lock(&self, t: &TenantId, holder: &str, ttl: Duration) -> StoreResult<bool> {
        self.0.set_nx_px(&self.lock_key(t), holder, ttl).await
    }

    /// Releases the refresh lock if `holder` still holds it.
    pub async fn unlock(&self, t: &TenantId, holder: &str) -> StoreResult<bool> {
        self.0.release(&self.lock_key(t), holder).await
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::{store, tenant};
    use std::time::Duration;

    #[tokio::test]
    async fn the_token_lock_is_held_by_one_holder_and_released_only_by_it() {
        let store = store();
        let t = tenant();
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
}
