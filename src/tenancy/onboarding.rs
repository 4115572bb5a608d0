//! Tenant on- and off-boarding: the one place that registers a tenant (and starts its
//! subscriptions) or forgets it (and, if asked, stops them). The consent callback, the admin API
//! and the CLI all go through [`Onboarding`], so a tenant added one way is indistinguishable from
//! one added another, and removal always also drops the tenant's cached token.

use crate::domain::{ContentType, TenantId};
use crate::microsoft::tokens::TokenProvider;
use crate::tenancy::parking::Parking;
use crate::tenancy::subscriptions::{StartOutcome, Subscriptions};
use crate::tenancy::tenants::{
    AddedBy, NewTenant, TenantError, TenantRecord, TenantState, Tenants,
};
use serde::Serialize;
use std::sync::Arc;

/// Registers and removes served tenants.
pub struct Onboarding {
    tenants: Arc<Tenants>,
    subscriptions: Arc<Subscriptions>,
    tokens: Arc<TokenProvider>,
    content_types: Vec<ContentType>,
    /// Subscriptions can only be started with a webhook address (`O365_PUBLIC_URL`).
    can_subscribe: bool,
    /// Releases a parked tenant's waiting blobs when it is added (consents) again.
    parking: Option<Arc<Parking>>,
}

/// Who asks for a tenant and whether its subscriptions start right away.
pub struct AddRequest {
    pub added_by: AddedBy,
    /// The admin who granted consent (from the token's `upn`), when known.
    pub consented_by: Option<String>,
    pub start_subscriptions: bool,
    /// `Pending` registers the tenant awaiting approval: nothing is started or served.
    pub state: NewTenant,
}

impl AddRequest {
    /// An operator adds the tenant (admin API, CLI): served at once.
    pub fn by_admin(start_subscriptions: bool) -> AddRequest {
        AddRequest {
            added_by: AddedBy::Admin,
            consented_by: None,
            start_subscriptions,
            state: NewTenant::Healthy,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Added {
    pub tenant: TenantRecord,
    /// One outcome per configured content type; empty when no start was asked for or possible.
    pub subscriptions: Vec<StartOutcome>,
}

/// What happened to one subscription on removal.
#[derive(Debug, Serialize)]
pub struct StopOutcome {
    pub content_type: ContentType,
    pub ok: bool,
    /// Microsoft's error code (or a stand-in such as `transport`): safe to show to a client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The whole error, for the operator's terminal and the log; never serialised.
    #[serde(skip)]
    pub detail: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Removed {
    /// Whether the tenant was registered.
    pub removed: bool,
    pub stopped: Vec<StopOutcome>,
}

impl Onboarding {
    pub fn new(
        tenants: Arc<Tenants>,
        subscriptions: Arc<Subscriptions>,
        tokens: Arc<TokenProvider>,
        content_types: Vec<ContentType>,
        can_subscribe: bool,
    ) -> Onboarding {
        Onboarding {
            tenants,
            subscriptions,
            tokens,
            content_types,
            can_subscribe,
            parking: None,
        }
    }

    /// A completed consent flow (or an operator adding the tenant again) un-parks a parked
    /// tenant at once; with `parking`, its waiting blobs are released and its parked period
    /// reconciled right away too ([`Parking::released`]).
    pub fn with_parking(mut self, parking: Arc<Parking>) -> Onboarding {
        self.parking = Some(parking);
        self
    }

    /// Registers `tenant` (idempotent) and, when asked and a webhook address is configured,
    /// starts its subscriptions (a failed start is reported, not an error: the keeper retries).
    pub async fn add(&self, tenant: &TenantId, request: AddRequest) -> Result<Added, TenantError> {
        let parked_since = match self.tenants.get(tenant).await {
            Ok(Some(TenantRecord {
                state: TenantState::Parked { since, .. },
                ..
            })) => Some(since),
            _ => None,
        };
        let record = self
            .tenants
            .add(
                tenant,
                request.added_by,
                request.consented_by,
                request.state,
            )
            .await?;
        if let (Some(since), Some(parking)) = (parked_since, &self.parking) {
            if record.state == TenantState::Healthy {
                tracing::info!(tenant_id = %tenant, parked_since = %since, "Parked tenant added again (consent): its waiting blobs are released.");
                parking.released(tenant, since).await;
            }
        }
        let serving = record.state.accepts_notifications();
        let subscriptions = if request.start_subscriptions && serving && self.can_subscribe {
            self.subscriptions.start_all(tenant, None, false).await
        } else {
            Vec::new()
        };
        Ok(Added {
            tenant: record,
            subscriptions,
        })
    }

    /// Approves a tenant pending approval and starts its subscriptions (when a webhook address
    /// is configured). `None` when the tenant is not registered.
    pub async fn approve(&self, tenant: &TenantId) -> Result<Option<Added>, TenantError> {
        let Some(record) = self.tenants.approve(tenant).await? else {
            return Ok(None);
        };
        let subscriptions = if self.can_subscribe {
            self.subscriptions.start_all(tenant, None, false).await
        } else {
            Vec::new()
        };
        Ok(Some(Added {
            tenant: record,
            subscriptions,
        }))
    }

    /// Stops serving `tenant` and forgets its token; first stops its subscriptions at Microsoft
    /// when asked (each attempt reported). A tenant from `O365_TENANTS` cannot be removed here.
    pub async fn remove(
        &self,
        tenant: &TenantId,
        stop_subscriptions: bool,
    ) -> Result<Removed, TenantError> {
        if self.tenants.is_static(tenant) {
            return Err(TenantError::Static(tenant.clone()));
        }
        let mut stopped = Vec::new();
        if stop_subscriptions {
            for &ct in &self.content_types {
                let result = self.subscriptions.stop(tenant, ct).await;
                if let Err(e) = &result {
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Could not stop the subscription.");
                }
                stopped.push(StopOutcome {
                    content_type: ct,
                    ok: result.is_ok(),
                    error: result.as_ref().err().map(|e| e.code().to_string()),
                    detail: result.err().map(|e| e.to_string()),
                });
            }
        }
        let removed = self.tenants.remove(tenant).await?;
        self.tokens.forget(tenant).await;
        if let (true, Some(parking)) = (removed, &self.parking) {
            // Blobs it had waiting in the parked queue are dead-lettered (tenant_not_served)
            // by the next sweep rather than when their content expires.
            parking.request_sweep().await;
        }
        Ok(Removed { removed, stopped })
    }
}
