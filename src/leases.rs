//! Redis leases: "one replica at a time" for the reconciler and the subscription keeper. The
//! holder renews well before expiry; when it dies, the lease lapses and another replica takes
//! over on its next try.

use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

pub struct Lease {
    store: Arc<Store>,
    key: String,
    holder: String,
    ttl: Duration,
}

impl Lease {
    pub fn new(store: Arc<Store>, name: &str, ttl: Duration) -> Lease {
        let key = store.lease_key(name);
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
        match self.store.renew(&self.key, &self.holder, self.ttl).await {
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
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into())
}
