//! The tenant registry: which tenants the relay serves. `O365_TENANTS` are always served; the
//! rest live in a Redis hash (added by consent, the admin API or the CLI). The webhook asks on
//! every notification, so positive answers are cached for a few seconds; while Redis is down
//! the last known answers keep serving.

use crate::domain::TenantId;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CACHE_FOR: Duration = Duration::from_secs(5);

/// How a tenant came to be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddedBy {
    Consent,
    Static,
    Admin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub added_by: AddedBy,
    pub added_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consented_by: Option<String>,
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {0} is configured in O365_TENANTS; remove it there")]
    Static(TenantId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Tenants {
    store: Arc<Store>,
    fixed: Vec<TenantId>,
    cache: Mutex<HashMap<TenantId, Instant>>,
}

impl Tenants {
    pub fn new(store: Arc<Store>, fixed: Vec<TenantId>) -> Tenants {
        Tenants {
            store,
            fixed,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_static(&self, t: &TenantId) -> bool {
        self.fixed.contains(t)
    }

    /// Whether notifications and content for `t` are accepted.
    pub async fn is_served(&self, t: &TenantId) -> bool {
        if self.is_static(t) {
            return true;
        }
        if self
            .cache
            .lock()
            .expect("poisoned")
            .get(t)
            .is_some_and(|at| at.elapsed() < CACHE_FOR)
        {
            return true;
        }
        match self.store.tenants().get(t).await {
            Ok(Some(_)) => {
                self.cache
                    .lock()
                    .expect("poisoned")
                    .insert(t.clone(), Instant::now());
                true
            }
            Ok(None) => {
                self.cache.lock().expect("poisoned").remove(t);
                false
            }
            // Redis down: keep serving what we last knew was served.
            Err(_) => self.cache.lock().expect("poisoned").contains_key(t),
        }
    }

    pub async fn get(&self, t: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        if self.is_static(t) {
            return Ok(Some(self.static_record(t)));
        }
        Ok(self
            .store
            .tenants()
            .get(t)
            .await?
            .and_then(|j| serde_json::from_str(&j).ok()))
    }

    fn static_record(&self, t: &TenantId) -> TenantRecord {
        TenantRecord {
            tenant_id: t.clone(),
            added_by: AddedBy::Static,
            added_at: String::new(),
            consented_by: None,
            status: "active".into(),
        }
    }

    /// Every served tenant: static ones first, then the registry's, sorted.
    pub async fn list(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let mut out: Vec<TenantRecord> = self.fixed.iter().map(|t| self.static_record(t)).collect();
        let mut stored: Vec<TenantRecord> = self
            .store
            .tenants()
            .all()
            .await?
            .into_iter()
            .filter_map(|j| serde_json::from_str::<TenantRecord>(&j).ok())
            .filter(|r| !self.is_static(&r.tenant_id))
            .collect();
        stored.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        out.extend(stored);
        Ok(out)
    }

    /// The ids of every served tenant; with Redis down, the static ones and the cached ones.
    pub async fn served_ids(&self) -> Vec<TenantId> {
        match self.list().await {
            Ok(l) => l.into_iter().map(|r| r.tenant_id).collect(),
            Err(_) => {
                let mut ids = self.fixed.clone();
                ids.extend(
                    self.cache
                        .lock()
                        .expect("poisoned")
                        .keys()
                        .filter(|t| !self.fixed.contains(t))
                        .cloned(),
                );
                ids
            }
        }
    }

    /// Registers `t` (idempotent: an existing record keeps its history).
    pub async fn add(
        &self,
        t: &TenantId,
        by: AddedBy,
        consented_by: Option<String>,
    ) -> Result<TenantRecord, StoreError> {
        if self.is_static(t) {
            return Ok(self.static_record(t));
        }
        let record = TenantRecord {
            tenant_id: t.clone(),
            added_by: by,
            added_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            consented_by,
            status: "active".into(),
        };
        let json = serde_json::to_string(&record).expect("serialisable");
        self.store.tenants().put(t, &json).await?;
        self.cache
            .lock()
            .expect("poisoned")
            .insert(t.clone(), Instant::now());
        tracing::info!(tenant_id = %t, added_by = ?by, "Tenant registered.");
        Ok(record)
    }

    /// Stops serving `t`. Returns whether it was registered.
    pub async fn remove(&self, t: &TenantId) -> Result<bool, TenantError> {
        if self.is_static(t) {
            return Err(TenantError::Static(t.clone()));
        }
        self.cache.lock().expect("poisoned").remove(t);
        let removed = self.store.tenants().remove(t).await?;
        if removed {
            tracing::info!(tenant_id = %t, "Tenant removed.");
        }
        Ok(removed)
    }
}
