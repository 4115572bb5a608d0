//! Subscription lifecycle: start (with our webhook), stop, list, and the keeper that keeps every
//! served tenant's subscriptions enabled with a healthy webhook pointing at us.
//!
//! Why it is built so: docs/DESIGN.md, "tenancy/subscriptions".

use crate::domain::secret::Secret;
use crate::domain::{ContentType, TenantId};
use crate::microsoft::management::{ApiError, ManagementClient, Subscription};
use crate::ops::metrics::Metrics;
use crate::store::{Lease, Store};
use crate::tenancy::tenants::Tenants;
use futures_util::StreamExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const START_SPACING: Duration = Duration::from_secs(15 * 60);

/// Keeper runs for which a tenant found healthy is not listed again (at most; at least three
/// quarters of it): about an hour with the default 5-minute interval.
pub const HEALTHY_RUNS: u32 = 12;

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
            Err(e) if e.is_webhook_unvalidated() => {
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
        // Microsoft says the subscription is missing or disabled: the keeper checks the tenant
        // on its next run instead of trusting an older finding.
        let _ = self.store.keeper_checks().doubt(tenant).await;
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

    /// Lists `tenant`'s subscriptions and starts whatever needs it: `Ok(true)` when every one
    /// was healthy.
    pub async fn keep_tenant(&self, tenant: &TenantId) -> Result<bool, ApiError> {
        let subs = self.list(tenant).await?;
        let needing = self.needing_start(&subs);
        for &(ct, why) in &needing {
            self.metrics
                .subscription_changes
                .with_label_values(&[why])
                .inc();
            tracing::warn!(tenant_id = %tenant, content_type = %ct, state = why, "Subscription needs a start.");
            match self.start(tenant, ct, false).await {
                Ok(()) | Err(StartError::TooSoon(..)) => {}
                Err(e) => {
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Keeper could not start the subscription.")
                }
            }
        }
        Ok(needing.is_empty())
    }
}

/// How long a healthy finding is trusted: a random 75–100 % of [`HEALTHY_RUNS`] intervals (so
/// re-checks spread over runs), never more than a day unless the interval itself is longer.
pub fn healthy_for(interval: Duration) -> Duration {
    let full = (interval * HEALTHY_RUNS).min(interval.max(Duration::from_secs(86_400)));
    full.mul_f64(rand::random_range(0.75..=1.0))
}

/// What one keeper run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KeeperRun {
    /// Tenants whose subscriptions were listed.
    pub listed: usize,
    /// Tenants skipped: found healthy recently.
    pub trusted: usize,
    /// Tenants whose subscriptions could not be listed.
    pub failed: usize,
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
/// starts whatever the subscriptions of the served tenants due a check lack
/// ([`Keeper::run_once`]).
pub struct Keeper {
    pub subscriptions: Arc<Subscriptions>,
    pub tenants: Arc<Tenants>,
    /// Parks a tenant whose subscriptions cannot be listed for its own reason.
    pub parking: Arc<crate::tenancy::parking::Parking>,
    pub store: Arc<Store>,
    pub interval: Duration,
    /// `O365_RECONCILE_CONCURRENCY`: tenants checked at once.
    pub concurrency: usize,
}

impl Keeper {
    /// One run: lists the subscriptions of every served tenant not found healthy within its
    /// trust (see docs/DESIGN.md, "tenancy/subscriptions"umentation), up to `concurrency` tenants at once, and starts
    /// what they lack. Without Redis every tenant is due.
    pub async fn run_once(&self) -> KeeperRun {
        // A parked tenant is left to the health probe (crate::tenancy::health).
        let tenants = self.tenants.healthy_ids().await;
        let trusted = self
            .store
            .keeper_checks()
            .still_healthy(&tenants)
            .await
            .unwrap_or_else(|_| vec![false; tenants.len()]);
        let due: Vec<TenantId> = tenants
            .iter()
            .zip(&trusted)
            .filter(|(_, trusted)| !**trusted)
            .map(|(t, _)| t.clone())
            .collect();
        let mut run = KeeperRun {
            trusted: tenants.len() - due.len(),
            ..KeeperRun::default()
        };
        // Owned ids: over borrowed ones the compiler cannot prove the run future `Send`.
        let results: Vec<Result<bool, ApiError>> = futures_util::stream::iter(due)
            .map(|tenant| async move {
                let r = self.subscriptions.keep_tenant(&tenant).await;
                match &r {
                    Ok(true) => {
                        let ttl = healthy_for(self.interval);
                        let _ = self.store.keeper_checks().healthy(&tenant, ttl).await;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(tenant_id = %tenant, error = %e, "Could not list subscriptions.");
                        // The tenant's own failure: park it.
                        if let Some(f) = e.tenant_failure() {
                            self.parking.park(&tenant, &f).await;
                        }
                    }
                }
                r
            })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) => run.listed += 1,
                Err(_) => run.failed += 1,
            }
        }
        run
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let lease = Lease::new(
            self.store.clone(),
            "keeper",
            keeper_lease_ttl(self.interval),
        );
        loop {
            if lease.try_hold().await {
                self.run_once().await;
            }
            tokio::select! {
                _ = shutdown.cancelled() => { lease.release().await; return; }
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
