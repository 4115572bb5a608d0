//! Who may onboard (`O365_CONSENT_MODE`): what a completed consent does with the tenant it
//! names, and the allowlist the admin API edits.
//!
//! Why it is built so: docs/DESIGN.md, "http/consent/policy".

use crate::config::ConsentMode;
use crate::domain::TenantId;
use crate::store::{Store, StoreError};
use crate::tenancy::tenants::NewTenant;
use serde::Serialize;
use std::sync::Arc;

/// What a completed consent leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Register the tenant in this state (and start its subscriptions if it is served).
    Register(NewTenant),
    /// Not on the allowlist: register nothing.
    NotServed,
}

#[derive(Debug, thiserror::Error)]
pub enum AllowlistError {
    #[error("tenant {0} is listed in O365_CONSENT_ALLOWED_TENANTS; remove it there")]
    Configured(TenantId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The allowlist as the admin API shows it.
#[derive(Debug, Serialize)]
pub struct AllowedTenants {
    /// `O365_CONSENT_MODE`: the list restricts onboarding only in `allowlist` mode.
    pub mode: &'static str,
    /// From `O365_CONSENT_ALLOWED_TENANTS`.
    pub configured: Vec<TenantId>,
    /// Added through the admin API, sorted.
    pub added: Vec<TenantId>,
}

/// The consent mode and its allowlist.
pub struct ConsentPolicy {
    mode: ConsentMode,
    /// `O365_CONSENT_ALLOWED_TENANTS`.
    configured: Vec<TenantId>,
    /// `O365_TENANTS`.
    fixed: Vec<TenantId>,
    store: Arc<Store>,
}

impl ConsentPolicy {
    pub fn new(
        mode: ConsentMode,
        configured: Vec<TenantId>,
        fixed: Vec<TenantId>,
        store: Arc<Store>,
    ) -> ConsentPolicy {
        ConsentPolicy {
            mode,
            configured,
            fixed,
            store,
        }
    }

    pub fn mode(&self) -> ConsentMode {
        self.mode
    }

    /// What a completed consent for `tenant` does. Asks Redis only in allowlist mode, for a
    /// tenant not configured.
    pub async fn verdict(&self, tenant: &TenantId) -> Result<Verdict, StoreError> {
        Ok(match self.mode {
            ConsentMode::Open => Verdict::Register(NewTenant::Healthy),
            ConsentMode::Approval => Verdict::Register(NewTenant::Pending),
            ConsentMode::Allowlist => {
                if self.is_allowed(tenant).await? {
                    Verdict::Register(NewTenant::Healthy)
                } else {
                    Verdict::NotServed
                }
            }
        })
    }

    async fn is_allowed(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        if self.configured.contains(tenant) || self.fixed.contains(tenant) {
            return Ok(true);
        }
        self.store.consent_allowlist().contains(tenant).await
    }

    pub async fn list(&self) -> Result<AllowedTenants, StoreError> {
        let mut added: Vec<TenantId> = self
            .store
            .consent_allowlist()
            .all()
            .await?
            .iter()
            .filter_map(|t| TenantId::parse(t).ok())
            .filter(|t| !self.configured.contains(t))
            .collect();
        added.sort();
        Ok(AllowedTenants {
            mode: self.mode.as_str(),
            configured: self.configured.clone(),
            added,
        })
    }

    /// Allows `tenant` to onboard: true when it was not allowed through the admin API before.
    pub async fn allow(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let added = self.store.consent_allowlist().add(tenant).await?;
        if added {
            tracing::info!(tenant_id = %tenant, "Tenant allowed to onboard.");
        }
        Ok(added)
    }

    /// Takes `tenant` off the admin API's allowlist: true when it was on it. A configured one
    /// cannot be removed here.
    pub async fn disallow(&self, tenant: &TenantId) -> Result<bool, AllowlistError> {
        if self.configured.contains(tenant) {
            return Err(AllowlistError::Configured(tenant.clone()));
        }
        let removed = self.store.consent_allowlist().remove(tenant).await?;
        if removed {
            tracing::info!(tenant_id = %tenant, "Tenant no longer allowed to onboard.");
        }
        Ok(removed)
    }
}
