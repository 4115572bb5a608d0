//! Subscription lifecycle: start (with our webhook), stop, list, and the keeper that keeps every
//! served tenant's subscriptions enabled with a healthy webhook pointing at us.
//!
//! Microsoft asks for 15 minutes between `/start` requests (docs/ONBOARDING.md, "3. Onboard a
//! customer tenant"); the last attempt per tenant and content type is kept in Redis so all
//! replicas respect it together.

use crate::domain::{ContentType, TenantId};
use crate::management::{ApiError, ManagementClient, Subscription};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{Lease, Store};
use crate::tenants::Tenants;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const START_SPACING: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "a /start for {1} was sent less than 15 minutes ago (Microsoft's rule); try again later"
    )]
    TooSoon(TenantId, ContentType),
    #[error("Microsoft could not validate the webhook (AF20021): is {0} reachable from the internet over https, and does it answer 200 to the validation request?")]
    ValidationFailed(String),
    #[error(transparent)]
    Api(ApiError),
    #[error("O365_PUBLIC_URL is not set, so there is no webhook address to register")]
    NoPublicUrl,
}

/// The outcome per content type, for CLI/admin output.
#[derive(Debug, Serialize)]
pub struct StartOutcome {
    pub content_type: String,
    pub ok: bool,
    /// For a client (consent page, admin API): ours, with Microsoft's error code but never its
    /// text.
    pub message: String,
    /// The whole error, for the operator's terminal; never serialised.
    #[serde(skip)]
    pub detail: String,
}

impl StartError {
    /// What a client may read: Microsoft's own text stays in the log.
    pub fn public_message(&self) -> String {
        match self {
            StartError::Api(e) => format!("Microsoft refused the start ({})", e.code()),
            other => other.to_string(),
        }
    }
}

/// Our webhook as Microsoft should call it.
pub struct WebhookTarget {
    /// `{O365_PUBLIC_URL}/webhook`; `None` without a public URL (no subscription can start).
    pub address: Option<String>,
    /// `O365_WEBHOOK_AUTH_ID`, sent with every notification.
    pub auth_id: Secret<String>,
}

pub struct Subscriptions {
    webhook: WebhookTarget,
    /// `O365_CONTENT_TYPES`.
    content_types: Vec<ContentType>,
    management: Arc<ManagementClient>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub fn new(
        webhook: WebhookTarget,
        content_types: Vec<ContentType>,
        management: Arc<ManagementClient>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Subscriptions {
            webhook,
            content_types,
            management,
            store,
            metrics,
        }
    }

    /// Starts `ct` for `tenant` with our webhook. With `force` false, refuses when a start was
    /// attempted in the last 15 minutes.
    pub async fn start(
        &self,
        tenant: &TenantId,
        ct: ContentType,
        force: bool,
    ) -> Result<(), StartError> {
        let address = self
            .webhook
            .address
            .clone()
            .ok_or(StartError::NoPublicUrl)?;
        let guards = self.store.start_guards();
        if force {
            let _ = guards.take(tenant, ct, START_SPACING).await;
        } else if let Ok(false) = guards.try_take(tenant, ct, START_SPACING).await {
            return Err(StartError::TooSoon(tenant.clone(), ct));
        }
        let auth_id = self.webhook.auth_id.expose();
        match self
            .management
            .start_subscription(tenant, ct, Some((&address, auth_id)))
            .await
        {
            Ok(()) => {
                self.metrics
                    .subscription_changes
                    .with_label_values(&["started"])
                    .inc();
                tracing::info!(tenant_id = %tenant, content_type = %ct, "Subscription started.");
                Ok(())
            }
            Err(ApiError::Api { code, .. }) if code == "AF20021" => {
                self.metrics
                    .subscription_changes
                    .with_label_values(&["validation_failed"])
                    .inc();
                Err(StartError::ValidationFailed(address))
            }
            Err(e) => {
                self.metrics
                    .subscription_changes
                    .with_label_values(&["start_failed"])
                    .inc();
                Err(StartError::Api(e))
            }
        }
    }

    /// Starts every configured content type for `tenant` (consent, CLI, admin API).
    pub async fn start_all(
        &self,
        tenant: &TenantId,
        only: Option<ContentType>,
        force: bool,
    ) -> Vec<StartOutcome> {
        let mut out = Vec::new();
        for ct in self
            .content_types
            .iter()
            .copied()
            .filter(|c| only.is_none_or(|o| o == *c))
        {
            let r = self.start(tenant, ct, force).await;
            if let Err(e) = &r {
                tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Subscription start failed.");
            }
            let (message, detail) = match &r {
                Ok(()) => ("enabled".to_string(), "enabled".to_string()),
                Err(e) => (e.public_message(), e.to_string()),
            };
            out.push(StartOutcome {
                content_type: ct.to_string(),
                ok: r.is_ok(),
                message,
                detail,
            });
        }
        out
    }

    /// Used by workers and the reconciler after AF20022/AF20023: starts unless the 15-minute
    /// rule forbids it right now (the caller retries later either way).
    pub async fn ensure_started(&self, tenant: &TenantId, ct: ContentType) {
        match self.start(tenant, ct, false).await {
            Ok(()) | Err(StartError::TooSoon(..)) => {}
            Err(e) => {
                tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Could not restart the subscription.")
            }
        }
    }

    pub async fn stop(&self, tenant: &TenantId, ct: ContentType) -> Result<(), ApiError> {
        self.management.stop_subscription(tenant, ct).await?;
        self.metrics
            .subscription_changes
            .with_label_values(&["stopped"])
            .inc();
        tracing::info!(tenant_id = %tenant, content_type = %ct, "Subscription stopped.");
        Ok(())
    }

    /// The tenant's subscriptions at Microsoft; what was seen of each configured content type is
    /// kept for the status page (whoever asked: the keeper, the CLI, the admin API).
    pub async fn list(&self, tenant: &TenantId) -> Result<Vec<Subscription>, ApiError> {
        let subs = self.management.list_subscriptions(tenant).await?;
        let checked_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for &ct in &self.content_types {
            let seen = subs
                .iter()
                .find(|s| s.content_type.eq_ignore_ascii_case(ct.as_str()));
            let json = serde_json::json!({
                "status": seen.map_or("missing", |s| s.status.as_str()).to_ascii_lowercase(),
                "webhook": seen
                    .and_then(|s| s.webhook.as_ref())
                    .and_then(|w| w.status.as_deref())
                    .map(str::to_ascii_lowercase),
                "checked_at": checked_at,
            });
            let _ = self
                .store
                .activity()
                .subscription_seen(tenant, ct, &json.to_string())
                .await;
        }
        Ok(subs)
    }

    /// Which configured content types need a `/start`: missing, disabled, or with a webhook that
    /// is disabled, expired or points elsewhere.
    pub fn needing_start(&self, subs: &[Subscription]) -> Vec<(ContentType, &'static str)> {
        let ours = self.webhook.address.as_deref();
        self.content_types
            .iter()
            .filter_map(|ct| {
                let s = subs
                    .iter()
                    .find(|s| s.content_type.eq_ignore_ascii_case(ct.as_str()));
                let why = match s {
                    None => "missing",
                    Some(s) if !s.status.eq_ignore_ascii_case("enabled") => "disabled",
                    Some(s) => match &s.webhook {
                        None => "no_webhook",
                        Some(w)
                            if !w
                                .status
                                .as_deref()
                                .unwrap_or("")
                                .eq_ignore_ascii_case("enabled") =>
                        {
                            "webhook_disabled"
                        }
                        Some(w)
                            if w.address.as_deref().map(|a| a.trim_end_matches('/')) != ours =>
                        {
                            "webhook_elsewhere"
                        }
                        Some(_) => return None,
                    },
                };
                Some((*ct, why))
            })
            .collect()
    }

    /// One keeper pass over every healthy tenant (a parked one is left to the health probe,
    /// [`crate::health`]; one found failing for its own reason is parked).
    pub async fn keep_once(&self, tenants: &Tenants) {
        for tenant in tenants.healthy_ids().await {
            let subs = match self.list(&tenant).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "Could not list subscriptions.");
                    if let Some(f) = crate::health::tenant_failure(&e) {
                        let _ = tenants.park(&tenant, &f.code, &f.reason).await;
                    }
                    continue;
                }
            };
            for (ct, why) in self.needing_start(&subs) {
                self.metrics
                    .subscription_changes
                    .with_label_values(&[why])
                    .inc();
                tracing::warn!(tenant_id = %tenant, content_type = %ct, state = why, "Subscription needs a start.");
                match self.start(&tenant, ct, false).await {
                    Ok(()) | Err(StartError::TooSoon(..)) => {}
                    Err(e) => {
                        tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Keeper could not start the subscription.")
                    }
                }
            }
        }
    }
}

/// How long the keeper lease lives without renewal: three intervals, so a holder may miss two
/// renewals (a slow pass, a Redis hiccup) before another replica takes over, with a floor of
/// 3 s. The holder renews once per interval; when it dies without releasing, a survivor takes
/// over within one TTL. A short TTL is safe even if a pass outlasts it: every `/start` is still
/// guarded per tenant and content type by the shared 15-minute key, so two keepers overlapping
/// for a moment cannot send Microsoft a second `/start`.
pub fn keeper_lease_ttl(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(3))
}

/// The subscription keeper: one replica at a time (a lease), every `O365_KEEPER_INTERVAL`,
/// starts whatever a served tenant's subscriptions lack ([`Subscriptions::keep_once`]).
pub struct Keeper {
    pub subscriptions: Arc<Subscriptions>,
    pub tenants: Arc<Tenants>,
    pub store: Arc<Store>,
    pub interval: Duration,
}

impl Keeper {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let lease = Lease::new(
            self.store.clone(),
            "keeper",
            keeper_lease_ttl(self.interval),
        );
        loop {
            if lease.try_hold().await {
                self.subscriptions.keep_once(&self.tenants).await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => { lease.release().await; return; }
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
