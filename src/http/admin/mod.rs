//! The admin listener (cluster-internal), by route area: probes and metrics ([`probes`]),
//! tenants and their subscriptions ([`tenants`]), the consent allowlist ([`allowlist`]), the
//! dead-letter queue ([`dead_letters`]), and the status page with its sign-in ([`status`]).
//! Every area names who may call it through one [`guard`]; browsers on other sites are refused
//! before that by [`origin`]. docs/OPERATIONS.md, "Admin API" and "Security model".

mod allowlist;
mod dead_letters;
mod error;
pub mod guard;
pub mod origin;
mod probes;
pub mod session;
mod status;
mod tenants;
pub mod throttle;

use crate::broker::Broker;
use crate::domain::certs::ClientCertificate;
use crate::domain::secret::Secret;
use crate::domain::TenantId;
use crate::http::consent::policy::ConsentPolicy;
use crate::http::status::StatusReport;
use crate::ops::metrics::Metrics;
use crate::ops::supervise::Supervisor;
use crate::pipeline::work_queue::WorkQueue;
use crate::store::Store;
use crate::tenancy::onboarding::Onboarding;
use crate::tenancy::subscriptions::Subscriptions;
use crate::tenancy::tenants::Tenants;
use actix_web::web;
use serde::Deserialize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use throttle::SignInThrottle;

pub use error::AdminError;

/// What the admin listener needs.
pub struct AdminApi {
    pub onboarding: Arc<Onboarding>,
    pub tenants: Arc<Tenants>,
    pub subscriptions: Arc<Subscriptions>,
    pub store: Arc<Store>,
    pub broker: Arc<Broker>,
    pub work_queue: Arc<WorkQueue>,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Arc<Metrics>,
    /// `O365_ADMIN_TOKEN`: when set, the admin API asks for it as a bearer token.
    pub admin_token: Option<Secret<String>>,
    /// Failed sign-ins per client (`O365_ADMIN_LOGIN_FAILURES_PER_MINUTE`).
    pub sign_in: SignInThrottle,
    /// `O365_CONSENT_MODE` and its allowlist (`/admin/consent/allowed`).
    pub consent_policy: Arc<ConsentPolicy>,
    /// The client certificate, for its expiry metric.
    pub certificate: Option<ClientCertificate>,
    /// Set when a graceful stop begins, so `/readyz` turns 503 and Kubernetes stops routing here.
    pub stopping: Arc<AtomicBool>,
    /// What `/admin/status` and the status page show.
    pub status: Arc<StatusReport>,
}

/// Every admin route. A malformed path or query (a tenant id that is no GUID, an unknown
/// content type) is a 400 with the reason, as JSON like every other admin error.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, _| AdminError::BadRequest(e.to_string()).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| AdminError::BadRequest(e.to_string()).into()),
    );
    probes::routes(cfg);
    tenants::routes(cfg);
    allowlist::routes(cfg);
    dead_letters::routes(cfg);
    status::routes(cfg);
}

/// `{tid}` in a route: a tenant id, checked as it is parsed.
#[derive(Deserialize)]
struct TenantPath {
    tid: TenantId,
}
