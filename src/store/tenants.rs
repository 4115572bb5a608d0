//! The tenant registry: one Redis hash (`tenants`), field = tenant id, value = the tenant's
//! record as JSON (written and read by [`crate::tenants`]).

use super::{Store, StoreResult};
use crate::domain::TenantId;
use redis::AsyncCommands;

/// The tenant registry, see [`Store::tenants`].
pub struct TenantRegistry<'a>(&'a Store);

impl<'a> TenantRegistry<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        TenantRegistry(store)
    }

    fn key(&self) -> String {
        self.0.key("tenants")
    }

    /// The tenant's record JSON, if registered.
    pub async fn get(&self, t: &TenantId) -> StoreResult<Option<String>> {
        let mut c = self.0.conn().await?;
        let r = c.hget(self.key(), t.as_str()).await;
        self.0.observe(r)
    }

    /// Registers (or overwrites) the tenant's record JSON.
    pub async fn put(&self, t: &TenantId, json: &str) -> StoreResult<()> {
        let mut c = self.0.conn().await?;
        let r: Result<(), _> = c.hset(self.key(), t.as_str(), json).await;
        self.0.observe(r)
    }

    /// Removes the tenant: true when it was registered.
    pub async fn remove(&self, t: &TenantId) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = c.hdel(self.key(), t.as_str()).await;
        self.0.observe(r).map(|n| n > 0)
    }

    /// Every registered tenant's record JSON, in no particular order.
    pub async fn all(&self) -> StoreResult<Vec<String>> {
        let mut c = self.0.conn().await?;
        let r: Result<Vec<(String, String)>, _> = c.hgetall(self.key()).await;
        self.0
            .observe(r)
            .map(|fields| fields.into_iter().map(|(_, json)| json).collect())
    }
}
