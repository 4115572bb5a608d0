//! Consent states and the consent allowlist.
//!
//! Why it is built so: docs/DESIGN.md, "store/consent".

use super::{Store, StoreResult};
use crate::domain::TenantId;
use redis::AsyncCommands;
use std::time::Duration;

/// Consent states' single use and signing key, see [`Store::consent`].
pub struct ConsentStates<'a>(&'a Store);

impl<'a> ConsentStates<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        ConsentStates(store)
    }

    fn used(&self, id: &str) -> String {
        self.0
            .key(&format!("consent-used{}:{id}", self.0.group("consent")))
    }

    fn signing_key(&self) -> String {
        self.0
            .key(&format!("consent-state-key{}", self.0.group("consent")))
    }

    /// Marks the state `id` used for `ttl` (its remaining lifetime): `true` the first time,
    /// `false` when it was used already.
    pub async fn use_once(&self, id: &str, ttl: Duration) -> StoreResult<bool> {
        let mut c = self.0.conn().await?;
        let r: Result<Option<String>, _> = redis::cmd("SET")
            .arg(self.used(id))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut c)
            .await;
        self.0.observe(r).map(|set| set.is_some())
    }

    /// The deployment's state signing key: the one Redis holds, or `candidate` when it held
    /// none (`SET NX`, then read back: of replicas racing, the first write wins for all).
    /// `None` only if the key vanished between the two commands.
    pub async fn state_key(&self, candidate: &str) -> StoreResult<Option<String>> {
        let key = self.signing_key();
        let mut c = self.0.conn().await?;
        let r: Result<(Option<String>,), _> = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await;
        self.0.observe(r).map(|(v,)| v)
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

#[cfg(test)]
mod tests {
    use crate::store::tests::{keys, store, tenant, TENANT};
    use crate::store::Store;
    use redis::AsyncCommands;

    use std::time::Duration;

    #[tokio::test]
    async fn a_consent_state_is_used_once_until_it_expires() {
        let store = store();
        let states = store.consent();
        assert!(states
            .use_once("s1", Duration::from_secs(60))
            .await
            .expect("answered"));
        assert!(!states
            .use_once("s1", Duration::from_secs(60))
            .await
            .expect("answered"));
        assert!(states
            .use_once("s2", Duration::from_millis(50))
            .await
            .expect("answered"));
        let mut c = store.conn().await.expect("Redis answers");
        let ttl: i64 = c
            .pttl(format!("{}consent-used:s1", store.prefix()))
            .await
            .expect("answered");
        assert!((59_000..=60_000).contains(&ttl), "{ttl}");
        // The marker lives as long as the state could: after that, the state itself is refused.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(keys(&store).await, vec!["consent-used:s1".to_string()]);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_state_key_is_made_by_the_first_replica_and_read_by_the_others() {
        let store = store();
        let other = Store::new("redis://127.0.0.1:6379", store.prefix()).expect("valid URL");
        assert_eq!(
            store.consent().state_key("first").await.expect("answered"),
            Some("first".to_string())
        );
        assert_eq!(
            other.consent().state_key("second").await.expect("answered"),
            Some("first".to_string()),
            "SET NX: the first write wins for everyone"
        );
        let mut c = store.conn().await.expect("Redis answers");
        let ttl: i64 = c
            .pttl(format!("{}consent-state-key", store.prefix()))
            .await
            .expect("answered");
        assert_eq!(ttl, -1, "the key does not expire");
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_consent_allowlist_adds_and_removes_tenants() {
        let store = store();
        let t = tenant();
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
}
