//! Parking: a tenant whose failures are its own (consent withdrawn, a token refused after a
//! fresh one, AF10001, AF20010–AF20013) is parked instead of having each of its blobs retried
//! and dead-lettered. [`Parking`] decides whose a failure is, parks (the one way every part of
//! the relay does), and starts the release when the tenant heals. docs/DESIGN.md, "Parked
//! tenants", has the reasoning; [`crate::pipeline::parked`] probes and releases.

use crate::domain::{ContentType, TenantId};
use crate::microsoft::management::{ApiError, ManagementClient, TenantFailure};
use crate::ops::metrics::Metrics;
use crate::store::Store;
use crate::tenancy::tenants::{TenantState, Tenants};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;

/// A checkpoint written for an un-parked tenant lives as long as the reconciler's own (8 days).
const CHECKPOINT_TTL: Duration = Duration::from_secs(8 * 86_400);

/// Parking and un-parking, shared by the workers, onboarding and the health loop.
pub struct Parking {
    pub tenants: Arc<Tenants>,
    pub management: Arc<ManagementClient>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `O365_CONTENT_TYPES`: the checkpoints to cover after un-parking.
    pub content_types: Vec<ContentType>,
}

/// Whose a failed call's error is ([`Parking::whose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// The tenant's: park it.
    Tenants(TenantFailure),
    /// The call's own (or a blob's): the caller's error handling applies.
    Calls,
    /// Cannot be told now (the check that would tell failed): try the call again later.
    Unknown,
}

/// What [`Parking::park`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parked {
    /// The tenant is parked (now, or already by another replica), for this reason.
    Parked { reason: String },
    /// It is healthy: un-parked meanwhile, so the failure is worth another try.
    Healthy,
    /// It is no longer served (offboarded, pending).
    NotServed,
    /// Redis cannot tell or keep the state now.
    Unavailable,
}

impl Parking {
    /// Whose the failure `e` of a call about `tenant`'s `content_type` is. AF10001 on
    /// `DLP.All` may be the DLP role alone: a call that needs the other role tells.
    pub async fn whose(&self, tenant: &TenantId, content_type: ContentType, e: &ApiError) -> Whose {
        let Some(failure) = e.tenant_failure() else {
            return Whose::Calls;
        };
        if failure.code != "AF10001" || content_type != ContentType::Dlp {
            return Whose::Tenants(failure);
        }
        match self.management.list_subscriptions(tenant).await {
            Ok(_) => Whose::Calls,
            Err(other) => other
                .tenant_failure()
                .map_or(Whose::Unknown, Whose::Tenants),
        }
    }

    /// Parks `tenant` for `failure` — the one way every part of the relay parks a tenant — and
    /// says what came of it.
    pub async fn park(&self, tenant: &TenantId, failure: &TenantFailure) -> Parked {
        match self
            .tenants
            .park(tenant, &failure.code, &failure.reason)
            .await
        {
            Ok(true) => {
                self.refresh_gauge().await;
                return Parked::Parked {
                    reason: failure.reason.clone(),
                };
            }
            Ok(false) => {}
            Err(_) => return Parked::Unavailable,
        }
        match self.tenants.state_now(tenant).await {
            Some(TenantState::Parked { reason, .. }) => Parked::Parked { reason },
            Some(TenantState::Healthy) => Parked::Healthy,
            _ => Parked::NotServed,
        }
    }

    /// After `tenant` stopped being parked (probe, consent): make sure a reconciliation covers
    /// the parked period, and ask for it at once, and for a sweep of the parked queue. Each step
    /// is a Redis write; one that fails is caught up by the periodic sweep and the next pass.
    pub async fn released(&self, tenant: &TenantId, since: DateTime<Utc>) {
        let checkpoints = self.store.checkpoints();
        for &ct in &self.content_types {
            if let Ok(None) = checkpoints.get(tenant, ct).await {
                let _ = checkpoints.set(tenant, ct, since, CHECKPOINT_TTL).await;
            }
        }
        let requests = self.store.parking();
        let asked = requests.request_reconcile(tenant).await;
        let swept = requests.request_sweep().await;
        if asked.is_err() || swept.is_err() {
            tracing::warn!(tenant_id = %tenant, "Cannot ask for the release of the tenant's parked blobs now (Redis); the periodic sweep and the next reconciliation catch up.");
        }
        self.refresh_gauge().await;
    }

    /// Asks for a sweep of the parked queue (e.g. a parked tenant was removed).
    pub async fn request_sweep(&self) {
        let _ = self.store.parking().request_sweep().await;
        self.refresh_gauge().await;
    }

    /// Sets `o365_tenants{state}` from Redis (left as it was when Redis cannot answer).
    pub async fn refresh_gauge(&self) {
        let (Ok(list), Ok(offboarded)) =
            (self.tenants.list().await, self.tenants.offboarded().await)
        else {
            return;
        };
        let mut counts = [0i64; TenantState::NAMES.len()];
        let states = list
            .iter()
            .map(|r| r.state.name())
            .chain(offboarded.iter().map(|(_, s)| s.name()));
        for name in states {
            if let Some(i) = TenantState::NAMES.iter().position(|n| *n == name) {
                counts[i] += 1;
            }
        }
        for (name, n) in TenantState::NAMES.iter().zip(counts) {
            self.metrics.tenants.with_label_values(&[name]).set(n);
        }
    }

    /// The parked tenants, with since when; `None` when Redis cannot answer.
    pub async fn parked(&self) -> Option<Vec<(TenantId, DateTime<Utc>)>> {
        self.tenants.parked().await.ok()
    }
}
