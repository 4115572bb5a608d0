//! The tenant registry: which tenants the relay serves, and in which state. `O365_TENANTS` are
//! always registered; the rest live in a Redis hash (added by consent, the admin API or the
//! CLI). The webhook asks on every notification, so answers are cached for a few seconds; while
//! Redis is down the last known answers keep serving.
//!
//! Why it is built so: docs/DESIGN.md, "tenancy/tenants".

use crate::domain::TenantId;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
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

/// A tenant's state; see docs/DESIGN.md, "tenancy/tenants".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TenantState {
    #[default]
    Healthy,
    Parked {
        /// Microsoft's error code (or `token`, `consent`): a bounded word for filters and metrics.
        code: String,
        /// What failed, for the operator (never a secret).
        reason: String,
        since: DateTime<Utc>,
    },
    Pending {
        since: DateTime<Utc>,
    },
    Offboarded {
        since: DateTime<Utc>,
    },
}

impl TenantState {
    /// Every state's name, as [`TenantState::name`] gives it.
    pub const NAMES: [&'static str; 4] = ["healthy", "parked", "pending", "offboarded"];

    pub fn name(&self) -> &'static str {
        match self {
            TenantState::Healthy => "healthy",
            TenantState::Parked { .. } => "parked",
            TenantState::Pending { .. } => "pending",
            TenantState::Offboarded { .. } => "offboarded",
        }
    }

    /// Whether notifications for the tenant are accepted (a parked tenant's are: they wait).
    pub fn accepts_notifications(&self) -> bool {
        matches!(self, TenantState::Healthy | TenantState::Parked { .. })
    }

    /// Reads a stored state; an unreadable one counts as healthy (see the store's transition).
    fn from_stored(json: Option<&str>) -> TenantState {
        json.and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default()
    }

    fn to_stored(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub tenant_id: TenantId,
    pub added_by: AddedBy,
    pub added_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consented_by: Option<String>,
    /// Read from the states hash (the copy in the record JSON is ignored).
    #[serde(default)]
    pub state: TenantState,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant {0} is configured in O365_TENANTS; remove it there")]
    Static(TenantId),
    #[error("tenant {0} is {1}, not pending approval")]
    NotPending(TenantId, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the cache knows of a tenant: `None` when it is not registered.
type Known = Option<TenantState>;

pub struct Tenants {
    store: Arc<Store>,
    fixed: Vec<TenantId>,
    cache: Mutex<HashMap<TenantId, (Instant, Known)>>,
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

    /// What the cache knows of `t`; with `fresh_only`, only a registered tenant's state from
    /// the last few seconds. "Not registered" is never answered from the cache while Redis
    /// answers (a tenant added by another process — the CLI, another replica — is served at
    /// once, as before states were cached); it is kept for when Redis is down.
    fn cached(&self, t: &TenantId, fresh_only: bool) -> Option<Known> {
        let cache = self.cache.lock().expect("poisoned");
        cache
            .get(t)
            .filter(|(at, known)| !fresh_only || (known.is_some() && at.elapsed() < CACHE_FOR))
            .map(|(_, known)| known.clone())
    }

    fn remember(&self, t: &TenantId, known: Known) {
        self.cache
            .lock()
            .expect("poisoned")
            .insert(t.clone(), (Instant::now(), known));
    }

    /// The tenant's state, `None` when it is not registered. Cached for a few seconds; with
    /// Redis down, the last known answer (a static tenant: healthy).
    pub async fn state(&self, t: &TenantId) -> Option<TenantState> {
        if let Some(known) = self.cached(t, true) {
            return known;
        }
        let registered =
            self.is_static(t) || matches!(self.store.tenants().get(t).await, Ok(Some(_)));
        let looked_up = match self.store.tenants().state(t).await {
            Ok(state) => Ok(TenantState::from_stored(state.as_deref())),
            Err(e) => Err(e),
        };
        match looked_up {
            Ok(state) => {
                let known = registered.then_some(state);
                self.remember(t, known.clone());
                known
            }
            // Redis down: keep serving what we last knew.
            Err(_) => self
                .cached(t, false)
                .unwrap_or_else(|| self.is_static(t).then_some(TenantState::Healthy)),
        }
    }

    /// Whether notifications and content for `t` are accepted: registered and `healthy` or
    /// `parked` (a parked tenant's blobs wait; they are not refused).
    pub async fn is_served(&self, t: &TenantId) -> bool {
        self.state(t)
            .await
            .is_some_and(|s| s.accepts_notifications())
    }

    pub async fn get(&self, t: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let Some(mut record) = self.registered(t).await? else {
            return Ok(None);
        };
        record.state = TenantState::from_stored(self.store.tenants().state(t).await?.as_deref());
        Ok(Some(record))
    }

    /// The tenant's record as registered (static or in Redis), without its state.
    async fn registered(&self, t: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        if self.is_static(t) {
            return Ok(Some(self.static_record(t)));
        }
        Ok(self
            .store
            .tenants()
            .get(t)
            .await?
            .and_then(|j| serde_json::from_str::<TenantRecord>(&j).ok()))
    }

    fn static_record(&self, t: &TenantId) -> TenantRecord {
        TenantRecord {
            tenant_id: t.clone(),
            added_by: AddedBy::Static,
            added_at: String::new(),
            consented_by: None,
            state: TenantState::Healthy,
        }
    }

    /// Every registered tenant with its state: static ones first, then the registry's, sorted.
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
        let states: HashMap<String, String> =
            self.store.tenants().states().await?.into_iter().collect();
        for r in &mut out {
            r.state =
                TenantState::from_stored(states.get(r.tenant_id.as_str()).map(String::as_str));
        }
        Ok(out)
    }

    /// Parked tenants and since when, from the states alone (one small read: only tenants
    /// that are not healthy have a state).
    pub async fn parked(&self) -> Result<Vec<(TenantId, DateTime<Utc>)>, StoreError> {
        Ok(self
            .store
            .tenants()
            .states()
            .await?
            .into_iter()
            .filter_map(|(t, j)| match TenantState::from_stored(Some(&j)) {
                TenantState::Parked { since, .. } => Some((TenantId::parse(&t).ok()?, since)),
                _ => None,
            })
            .collect())
    }

    /// Tenants no longer registered whose offboarding is remembered, with when.
    pub async fn offboarded(&self) -> Result<Vec<(TenantId, TenantState)>, StoreError> {
        let mut out: Vec<(TenantId, TenantState)> = self
            .store
            .tenants()
            .states()
            .await?
            .into_iter()
            .filter_map(|(t, j)| {
                let state = TenantState::from_stored(Some(&j));
                let t = TenantId::parse(&t).ok()?;
                matches!(state, TenantState::Offboarded { .. }).then_some((t, state))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The ids of every tenant whose notifications are accepted (healthy or parked); with Redis
    /// down, the static ones and the cached ones.
    pub async fn served_ids(&self) -> Vec<TenantId> {
        match self.list().await {
            Ok(l) => l
                .into_iter()
                .filter(|r| r.state.accepts_notifications())
                .map(|r| r.tenant_id)
                .collect(),
            Err(_) => {
                let mut ids = self.fixed.clone();
                ids.extend(
                    self.cache
                        .lock()
                        .expect("poisoned")
                        .iter()
                        .filter(|(t, (_, known))| {
                            !self.fixed.contains(t)
                                && known.as_ref().is_some_and(|s| s.accepts_notifications())
                        })
                        .map(|(t, _)| t.clone()),
                );
                ids
            }
        }
    }

    /// The ids of every healthy tenant: served and not parked (the reconciler and the keeper
    /// leave parked tenants alone, so that only the probe asks Entra for their tokens). With
    /// Redis down, the static ones and the cached healthy ones.
    pub async fn healthy_ids(&self) -> Vec<TenantId> {
        match self.list().await {
            Ok(l) => l
                .into_iter()
                .filter(|r| r.state == TenantState::Healthy)
                .map(|r| r.tenant_id)
                .collect(),
            Err(_) => {
                let cache = self.cache.lock().expect("poisoned");
                let parked = |t: &TenantId| {
                    matches!(cache.get(t), Some((_, Some(TenantState::Parked { .. }))))
                };
                let mut ids: Vec<TenantId> =
                    self.fixed.iter().filter(|t| !parked(t)).cloned().collect();
                ids.extend(
                    cache
                        .iter()
                        .filter(|(t, (_, known))| {
                            !self.fixed.contains(t) && *known == Some(TenantState::Healthy)
                        })
                        .map(|(t, _)| t.clone()),
                );
                ids
            }
        }
    }

    /// The tenant's state read from Redis now (not from the few-seconds cache), e.g. before
    /// deciding that a job must wait.
    pub async fn state_now(&self, t: &TenantId) -> Option<TenantState> {
        self.forget_cached(t);
        self.state(t).await
    }

    /// Registers `t` (idempotent: an existing record keeps its history) in `state`: `healthy`
    /// (which also un-parks a parked tenant and revives an offboarded one) or `pending` (only
    /// from not registered or offboarded: an approved tenant consenting again stays approved,
    /// and is un-parked if it was parked).
    pub async fn add(
        &self,
        t: &TenantId,
        by: AddedBy,
        consented_by: Option<String>,
        state: NewTenant,
    ) -> Result<TenantRecord, StoreError> {
        let existing = self.registered(t).await?;
        let created = existing.is_none();
        let record = match existing {
            Some(r) => r,
            None => TenantRecord {
                tenant_id: t.clone(),
                added_by: by,
                added_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                consented_by,
                state: TenantState::Healthy,
            },
        };
        let json = serde_json::to_string(&record).expect("serialisable");
        match state {
            NewTenant::Pending if created => {
                // Record and `pending` state in one write: a record written alone would read
                // as healthy, i.e. served before anyone approved it (see the store's
                // `register_pending`). A record that appeared meanwhile keeps its state.
                let pending = TenantState::Pending { since: Utc::now() };
                if self
                    .store
                    .tenants()
                    .register_pending(t, &json, &pending.to_stored())
                    .await?
                {
                    tracing::info!(tenant_id = %t, added_by = ?by, "Tenant registered, pending approval.");
                }
            }
            NewTenant::Healthy => {
                if created {
                    self.store.tenants().put(t, &json).await?;
                    tracing::info!(tenant_id = %t, added_by = ?by, "Tenant registered.");
                }
                let (was, changed) = self
                    .store
                    .tenants()
                    .transition(
                        t,
                        &["parked", "pending", "offboarded"],
                        "healthy",
                        &TenantState::Healthy.to_stored(),
                    )
                    .await?;
                if changed {
                    tracing::info!(tenant_id = %t, was = %was, "Tenant is healthy again.");
                }
            }
            NewTenant::Pending => {
                // Registered already: it keeps its state (an approved tenant consenting again
                // stays approved); an approved tenant that was parked is un-parked by its
                // admin's consent, as in open mode: the consent is what a parking for withdrawn
                // consent waits for.
                let (_, unparked) = self
                    .store
                    .tenants()
                    .transition(t, &["parked"], "healthy", &TenantState::Healthy.to_stored())
                    .await?;
                if unparked {
                    tracing::info!(tenant_id = %t, "Tenant un-parked by a new consent.");
                }
            }
        }
        self.forget_cached(t);
        self.get(t).await.map(|r| r.unwrap_or(record))
    }

    /// Approves a `pending` tenant. Returns its record, `None` when it is not registered; an
    /// error when it is not pending.
    pub async fn approve(&self, t: &TenantId) -> Result<Option<TenantRecord>, TenantError> {
        let Some(record) = self.get(t).await? else {
            return Ok(None);
        };
        let (was, changed) = self
            .store
            .tenants()
            .transition(
                t,
                &["pending"],
                "healthy",
                &TenantState::Healthy.to_stored(),
            )
            .await?;
        // Approving a tenant that is not pending — healthy already, parked, offboarded — is a
        // conflict, not a success: the operator may have the wrong tenant (docs/ONBOARDING.md,
        // "Approval": 409, exit 1).
        if !changed {
            return Err(TenantError::NotPending(t.clone(), was));
        }
        self.forget_cached(t);
        tracing::info!(tenant_id = %t, "Tenant approved.");
        Ok(Some(TenantRecord {
            state: TenantState::Healthy,
            ..record
        }))
    }

    /// Parks a healthy tenant (a tenant-level failure). Returns true when this call parked it;
    /// false when it was parked already (its `since` kept) or is pending or offboarded.
    pub async fn park(&self, t: &TenantId, code: &str, reason: &str) -> Result<bool, StoreError> {
        let parked = TenantState::Parked {
            code: crate::domain::text::capped(code, 64).into_owned(),
            reason: crate::domain::text::capped(reason, 512).into_owned(),
            since: Utc::now(),
        };
        let (_, changed) = self
            .store
            .tenants()
            .transition(t, &["healthy"], "parked", &parked.to_stored())
            .await?;
        self.forget_cached(t);
        if changed {
            tracing::warn!(tenant_id = %t, code, reason, "Tenant parked: its blobs wait until it works again.");
        }
        Ok(changed)
    }

    /// Un-parks a parked tenant. Returns true when this call un-parked it.
    pub async fn unpark(&self, t: &TenantId) -> Result<bool, StoreError> {
        let (_, changed) = self
            .store
            .tenants()
            .transition(t, &["parked"], "healthy", &TenantState::Healthy.to_stored())
            .await?;
        self.forget_cached(t);
        if changed {
            tracing::info!(tenant_id = %t, "Tenant un-parked.");
        }
        Ok(changed)
    }

    fn forget_cached(&self, t: &TenantId) {
        self.cache.lock().expect("poisoned").remove(t);
    }

    /// Stops serving `t` (remembered as `offboarded`). Returns whether it was registered.
    pub async fn remove(&self, t: &TenantId) -> Result<bool, TenantError> {
        if self.is_static(t) {
            return Err(TenantError::Static(t.clone()));
        }
        let removed = self.store.tenants().remove(t).await?;
        if removed {
            let offboarded = TenantState::Offboarded { since: Utc::now() };
            self.store
                .tenants()
                .transition(
                    t,
                    &["healthy", "parked", "pending"],
                    "offboarded",
                    &offboarded.to_stored(),
                )
                .await?;
            tracing::info!(tenant_id = %t, "Tenant removed.");
        }
        self.remember(t, None);
        Ok(removed)
    }
}

/// The state a newly added tenant gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewTenant {
    Healthy,
    Pending,
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), each test under a prefix of its own that it
    //! purges at the end.
    use super::*;

    fn tenants(fixed: Vec<TenantId>) -> Tenants {
        let prefix = format!("o365relay:test:tenants:{}:", uuid::Uuid::new_v4().simple());
        let store = Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL");
        Tenants::new(Arc::new(store), fixed)
    }

    fn tid(n: u8) -> TenantId {
        TenantId::parse(&format!("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c{n:02}")).expect("valid")
    }

    fn admin() -> (AddedBy, Option<String>) {
        (AddedBy::Admin, None)
    }

    #[tokio::test]
    async fn a_parked_tenant_keeps_its_first_reason_and_is_still_served_until_unparked() {
        let tenants = tenants(vec![]);
        let t = tid(1);
        let (by, upn) = admin();
        tenants.add(&t, by, upn, NewTenant::Healthy).await.unwrap();
        assert!(tenants
            .park(&t, "token", "consent withdrawn")
            .await
            .unwrap());
        let first = tenants.get(&t).await.unwrap().unwrap().state;
        assert!(!tenants.park(&t, "AF10001", "second replica").await.unwrap());
        let TenantState::Parked { code, reason, .. } =
            tenants.get(&t).await.unwrap().unwrap().state
        else {
            panic!("not parked");
        };
        assert_eq!(
            (code.as_str(), reason.as_str()),
            ("token", "consent withdrawn")
        );
        assert_eq!(tenants.get(&t).await.unwrap().unwrap().state, first);
        // Its notifications are still accepted: its blobs wait instead of being refused.
        assert!(tenants.is_served(&t).await);
        assert!(tenants.served_ids().await.contains(&t));
        assert!(tenants.unpark(&t).await.unwrap());
        assert!(!tenants.unpark(&t).await.unwrap());
        assert_eq!(
            tenants.get(&t).await.unwrap().unwrap().state,
            TenantState::Healthy
        );
        tenants.store.purge_prefix().await.unwrap();
    }

    #[tokio::test]
    async fn a_pending_tenant_is_served_nothing_until_approved() {
        let tenants = tenants(vec![]);
        let t = tid(2);
        let r = tenants
            .add(
                &t,
                AddedBy::Consent,
                Some("admin@contoso".into()),
                NewTenant::Pending,
            )
            .await
            .unwrap();
        assert_eq!(r.state.name(), "pending");
        assert!(!tenants.is_served(&t).await);
        assert!(!tenants.served_ids().await.contains(&t));
        // Parking does not apply to a tenant that is not served.
        assert!(!tenants.park(&t, "token", "x").await.unwrap());
        let approved = tenants.approve(&t).await.unwrap().expect("registered");
        assert_eq!(approved.state, TenantState::Healthy);
        assert!(tenants.is_served(&t).await);
        // Consenting again (approval mode) does not send an approved tenant back to pending.
        let again = tenants
            .add(&t, AddedBy::Consent, None, NewTenant::Pending)
            .await
            .unwrap();
        assert_eq!(again.state, TenantState::Healthy);
        assert_eq!(again.consented_by.as_deref(), Some("admin@contoso"));
        // Approving a parked tenant is refused; an unknown one is not found.
        tenants.park(&t, "token", "x").await.unwrap();
        assert!(matches!(
            tenants.approve(&t).await,
            Err(TenantError::NotPending(_, ref was)) if was == "parked"
        ));
        // Its admin consenting again (approval mode) un-parks it, without a new approval.
        let again = tenants
            .add(&t, AddedBy::Consent, None, NewTenant::Pending)
            .await
            .unwrap();
        assert_eq!(again.state, TenantState::Healthy);
        assert!(tenants.approve(&tid(3)).await.unwrap().is_none());
        tenants.store.purge_prefix().await.unwrap();
    }

    #[tokio::test]
    async fn a_removed_tenant_is_remembered_as_offboarded_and_consent_revives_it() {
        let tenants = tenants(vec![]);
        let t = tid(4);
        let (by, upn) = admin();
        tenants.add(&t, by, upn, NewTenant::Healthy).await.unwrap();
        tenants.park(&t, "token", "x").await.unwrap();
        assert!(tenants.remove(&t).await.unwrap());
        assert!(!tenants.is_served(&t).await);
        assert!(tenants.get(&t).await.unwrap().is_none());
        let off = tenants.offboarded().await.unwrap();
        assert_eq!(off.len(), 1);
        assert_eq!(
            (off[0].0.clone(), off[0].1.name()),
            (t.clone(), "offboarded")
        );
        // A completed consent flow (open mode) serves it again, healthy.
        let back = tenants
            .add(&t, AddedBy::Consent, None, NewTenant::Healthy)
            .await
            .unwrap();
        assert_eq!(back.state, TenantState::Healthy);
        assert!(tenants.offboarded().await.unwrap().is_empty());
        tenants.store.purge_prefix().await.unwrap();
    }

    #[tokio::test]
    async fn a_configured_tenant_can_be_parked_and_a_consent_unparks_it() {
        let t = tid(5);
        let tenants = tenants(vec![t.clone()]);
        assert!(tenants.park(&t, "AF10001", "missing role").await.unwrap());
        assert_eq!(tenants.list().await.unwrap()[0].state.name(), "parked");
        tenants
            .add(&t, AddedBy::Consent, None, NewTenant::Healthy)
            .await
            .unwrap();
        assert_eq!(tenants.list().await.unwrap()[0].state, TenantState::Healthy);
        tenants.store.purge_prefix().await.unwrap();
    }
}
