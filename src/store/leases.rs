//! Redis leases (`lease:{name}`): "one replica at a time" for the reconciler and the
//! subscription keeper. The holder renews well before expiry; when it dies, the lease lapses
//! and another replica takes over on its next try.

use super::{Store, StoreResult};
use std::sync::Arc;
use std::time::Duration;

/// Check-and-extend: renews the lease only while we still hold it.
const RENEW: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end"#;

pub struct Lease {
    store: Arc<Store>,
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(store: Arc<Store>, name: &str, ttl: Duration) -> Lease {
        let key = store.key(&format!("lease:{name}"));
        Lease {
            store,
            key,
            holder: format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()),
            ttl,
        }
    }

    /// Takes the lease if free, or renews it if ours. Without Redis nobody holds it: the work
    /// it guards is skipped until Redis returns (it is periodic and catches up).
    pub async fn try_hold(&self) -> bool {
        match self.renew().await {
            Ok(true) => true,
            Ok(false) => self
                .store
                .set_nx_px(&self.key, &self.holder, self.ttl)
                .await
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    pub async fn release(&self) {
        let _ = self.store.release(&self.key, &self.holder).await;
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Extends the lease by its TTL only if we still hold it.
    async fn renew(&self) -> StoreResult<bool> {
        let mut c = self.store.conn().await?;
        let r: Result<i64, _> = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&self.holder)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut c)
            .await;
        self.store.observe(r).map(|n| n == 1)
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    use std::sync::Arc;
    use std::time::Duration;

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
