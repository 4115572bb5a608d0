//! Prometheus series, served on the admin listener's `/metrics` (docs/OPERATIONS.md, "Metrics and
//! alerts"). One registry per running relay, so several relays in one test process keep separate
//! figures. Labels are bounded: reasons and results are fixed vocabularies, content types are
//! five. No series is per tenant by default: with 10,000 tenants, three per-tenant series would
//! be 30,000 series per replica, which costs Prometheus more than the whole relay is worth
//! watching. The reconciliation figures are exported as aggregates instead ([`ReconcileMetrics`]:
//! the largest lag, the sum of missing blobs, the oldest last success), under the same names,
//! so `max()`, `sum()` and `min()` in alerts read the same either way; `O365_METRICS_PER_TENANT`
//! brings the `tenant_id` label back for deployments small enough to afford it.

use crate::domain::TenantId;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::Mutex;

pub struct Metrics {
    pub registry: Registry,
    /// result = accepted | rejected; reason = ok | auth | malformed | tenant | client_id |
    /// content_type | content_uri | too_large | media_type | unavailable | validation
    pub notifications: IntCounterVec,
    /// Blobs taken from the work queue: result = relayed | duplicate | retried | dead.
    pub blobs: IntCounterVec,
    /// Records published to the exchange, by content type.
    pub records_published: IntCounterVec,
    /// Records skipped because their `Id` was already relayed.
    pub records_duplicate: IntCounter,
    /// Token requests to Entra ID: result = ok | failed.
    pub token_requests: IntCounterVec,
    /// Management API answers that said AF429 (as 429 or 403).
    pub throttled: IntCounter,
    /// Management API requests by call and outcome class.
    pub management_requests: IntCounterVec,
    /// Content GET until the last record is confirmed, by content type.
    pub fetch_duration: HistogramVec,
    pub dead_letters: IntCounterVec,
    pub work_queue_depth: IntGauge,
    /// Seconds between a blob's creation and its relay (the relay's lag behind Microsoft).
    pub relay_lag: Histogram,
    /// Reconciliation: lag, missing blobs, last success, pass duration.
    pub reconcile: ReconcileMetrics,
    pub subscription_changes: IntCounterVec,
    /// Registered on the first [`Metrics::certificate_expires_in`]: absent with a client
    /// secret, so the "expires soon" alert cannot fire on a default 0.
    certificate_expiry: Gauge,
    certificate_registered: std::sync::Once,
    /// Jobs whose handler panicked (each dead-lettered with code `panic`).
    pub job_panics: IntCounter,
    /// Listed content refused by the edge checks, by reason.
    pub listing_rejected: IntCounterVec,
    /// Records that were not JSON text (their blob is dead-lettered after the others relay).
    pub records_malformed: IntCounter,
    /// RabbitMQ connections opened (more than one means connections were lost or closed).
    pub amqp_connections: IntCounter,
    /// Jobs deferred to a later turn instead of waiting on a worker: reason = quota |
    /// tenant_busy (see `scheduling`).
    pub deferred: IntCounterVec,
    /// Background loops restarted after they ended or panicked, by task.
    pub task_restarts: IntCounterVec,
    /// Every metric name this relay can export (see [`Metrics::names`]).
    names: Vec<String>,
    /// Tenants by state (healthy | parked | pending | offboarded), refreshed from Redis by the
    /// health loop and on transitions ([`crate::tenancy::health`]).
    pub tenants: IntGaugeVec,
    /// Jobs of parked tenants: event = parked (set aside) | released (back to the work queue) |
    /// expired (dead-lettered: the content expired while its tenant was parked).
    pub parked_jobs: IntCounterVec,
    /// Messages waiting in the parked queue (refreshed by the health loop).
    pub parked_queue_depth: IntGauge,
    /// Probes of parked tenants: result = healthy | parked | error.
    pub tenant_probes: IntCounterVec,
    /// Record batches a consumer queue refused (nacked: full), see [`crate::pipeline::backpressure`].
    pub downstream_refusals: IntCounter,
    /// Probes of paused routing keys: result = accepted | refused.
    pub downstream_probes: IntCounterVec,
    /// Routing keys paused now because a consumer queue refuses their records.
    pub downstream_paused_keys: IntGauge,
    /// Blobs waiting for a paused routing key.
    pub downstream_waiting_blobs: IntGauge,
    /// When the oldest pause began (Unix seconds; 0 when nothing is paused).
    pub downstream_paused_since: IntGauge,
    /// Wrong or missing admin tokens on the admin listener: route = login (`POST /admin/login`)
    /// | api (a bearer token the admin API asked for).
    pub admin_auth_failures: IntCounterVec,
    /// Sign-ins and admin API requests refused (429) without their token being compared,
    /// because their client had used up its budget of failures ([`crate::http::admin`]).
    pub admin_auth_throttled: IntCounter,
    /// Requests the admin listener refused before any route saw them, by reason: `host` (a
    /// name it does not answer to: DNS rebinding) or `cross_site` ([`crate::http::admin::origin`]).
    pub admin_refused: IntCounterVec,
}

impl Metrics {
    /// Without per-tenant series.
    pub fn new() -> Metrics {
        Metrics::with_tenant_series(false)
    }

    /// `per_tenant` = `O365_METRICS_PER_TENANT`.
    pub fn with_tenant_series(per_tenant: bool) -> Metrics {
        let registry = Registry::new();
        let mut names: Vec<String> = vec!["o365_certificate_expiry_seconds".into()];
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                names.extend(m.desc().into_iter().map(|d| d.fq_name.clone()));
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let buckets = vec![
            0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ];
        let metrics = Metrics {
            notifications: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_notifications_total",
                    "Webhook requests by result and reason"
                ),
                &["result", "reason"]
            )
            .unwrap()),
            blobs: reg!(IntCounterVec::new(
                Opts::new("o365_blobs_total", "Content blobs processed by result"),
                &["result"]
            )
            .unwrap()),
            records_published: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_records_published_total",
                    "Audit records confirmed on the exchange"
                ),
                &["content_type"]
            )
            .unwrap()),
            records_duplicate: reg!(IntCounter::new(
                "o365_records_duplicate_total",
                "Records not published again because their Id was already relayed"
            )
            .unwrap()),
            token_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_token_requests_total",
                    "Token requests sent to Entra ID"
                ),
                &["result"]
            )
            .unwrap()),
            throttled: reg!(IntCounter::new(
                "o365_throttled_total",
                "Management API throttling answers (AF429)"
            )
            .unwrap()),
            management_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_management_requests_total",
                    "Management API requests by call and status class"
                ),
                &["call", "status"]
            )
            .unwrap()),
            fetch_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "o365_fetch_duration_seconds",
                    "Time to fetch a blob and confirm its records"
                )
                .buckets(buckets.clone()),
                &["content_type"]
            )
            .unwrap()),
            dead_letters: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_dead_letter_total",
                    "Blobs sent to the dead-letter queue by reason"
                ),
                &["reason"]
            )
            .unwrap()),
            work_queue_depth: reg!(IntGauge::new(
                "o365_work_queue_depth",
                "Messages ready in the work queue"
            )
            .unwrap()),
            relay_lag: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "o365_relay_lag_seconds",
                    "Seconds from a blob's creation at Microsoft to its relay"
                )
                .buckets(vec![
                    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0
                ])
            )
            .unwrap()),
            reconcile: {
                let labels: &[&str] = if per_tenant { &["tenant_id"] } else { &[] };
                ReconcileMetrics {
                    per_tenant,
                    lag: reg!(GaugeVec::new(
                        Opts::new(
                            "o365_reconcile_lag_seconds",
                            "Age of the oldest blob the last reconciliation found unrelayed (the largest over tenants unless per tenant)"
                        ),
                        labels
                    )
                    .unwrap()),
                    missing: reg!(IntCounterVec::new(
                        Opts::new(
                            "o365_reconcile_missing_total",
                            "Blobs the reconciler found that the webhook had missed"
                        ),
                        labels
                    )
                    .unwrap()),
                    last_success: reg!(GaugeVec::new(
                        Opts::new(
                            "o365_reconcile_last_success_timestamp_seconds",
                            "End of the last complete reconciliation (the oldest over tenants unless per tenant)"
                        ),
                        labels
                    )
                    .unwrap()),
                    pass_duration: reg!(Gauge::new(
                        "o365_reconcile_pass_duration_seconds",
                        "Wall time of the last reconciliation pass over every tenant"
                    )
                    .unwrap()),
                    passes: reg!(IntCounter::new(
                        "o365_reconcile_passes_total",
                        "Reconciliation passes completed by this process"
                    )
                    .unwrap()),
                    last_success_of: Mutex::new(HashMap::new()),
                }
            },
            subscription_changes: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_subscription_changes_total",
                    "Subscriptions (re)started or found broken"
                ),
                &["event"]
            )
            .unwrap()),
            certificate_expiry: Gauge::new(
                "o365_certificate_expiry_seconds",
                "Seconds until the client certificate expires (absent with a client secret)",
            )
            .unwrap(),
            certificate_registered: std::sync::Once::new(),
            job_panics: reg!(IntCounter::new(
                "o365_job_panics_total",
                "Work-queue jobs whose handler panicked (dead-lettered with code panic)"
            )
            .unwrap()),
            listing_rejected: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_listing_rejected_total",
                    "Listed content entries refused by the edge checks, by reason"
                ),
                &["reason"]
            )
            .unwrap()),
            records_malformed: reg!(IntCounter::new(
                "o365_records_malformed_total",
                "Records that were not JSON text and were not relayed"
            )
            .unwrap()),
            amqp_connections: reg!(IntCounter::new(
                "o365_amqp_connections_total",
                "RabbitMQ connections opened by this process"
            )
            .unwrap()),
            deferred: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_deferred_total",
                    "Jobs deferred to their tenant's next turn instead of waiting on a worker, by reason"
                ),
                &["reason"]
            )
            .unwrap()),
            task_restarts: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_task_restarts_total",
                    "Background loops restarted after ending or panicking, by task"
                ),
                &["task"]
            )
            .unwrap()),
            tenants: reg!(IntGaugeVec::new(
                Opts::new("o365_tenants", "Registered tenants by state"),
                &["state"]
            )
            .unwrap()),
            parked_jobs: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_parked_jobs_total",
                    "Jobs of parked tenants set aside, released or expired"
                ),
                &["event"]
            )
            .unwrap()),
            parked_queue_depth: reg!(IntGauge::new(
                "o365_parked_queue_depth",
                "Jobs waiting in the parked queue for their tenant to work again"
            )
            .unwrap()),
            tenant_probes: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_tenant_probes_total",
                    "Probes of parked tenants by result"
                ),
                &["result"]
            )
            .unwrap()),
            downstream_refusals: reg!(IntCounter::new(
                "o365_downstream_refusals_total",
                "Record batches refused by a consumer queue (nacked: full) and paused, not failed"
            )
            .unwrap()),
            downstream_probes: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_downstream_probes_total",
                    "Probes of routing keys paused by a full consumer queue, by result"
                ),
                &["result"]
            )
            .unwrap()),
            downstream_paused_keys: reg!(IntGauge::new(
                "o365_downstream_paused_routing_keys",
                "Routing keys paused because a consumer queue refuses their records (full)"
            )
            .unwrap()),
            downstream_waiting_blobs: reg!(IntGauge::new(
                "o365_downstream_waiting_blobs",
                "Blobs waiting for a routing key paused by a full consumer queue"
            )
            .unwrap()),
            downstream_paused_since: reg!(IntGauge::new(
                "o365_downstream_paused_since_timestamp_seconds",
                "When the oldest pause of a routing key began (Unix seconds; 0 when none is paused)"
            )
            .unwrap()),
            admin_auth_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_admin_auth_failures_total",
                    "Wrong or missing admin tokens on the admin listener, by route (login | api)"
                ),
                &["route"]
            )
            .unwrap()),
            admin_auth_throttled: reg!(IntCounter::new(
                "o365_admin_auth_throttled_total",
                "Admin sign-ins and API requests refused (429) because their client failed too often"
            )
            .unwrap()),
            admin_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_admin_refused_total",
                    "Admin listener requests refused for their Host or as cross-site, by reason (host | cross_site)"
                ),
                &["reason"]
            )
            .unwrap()),
            registry,
            names,
        };
        for reason in ["host", "cross_site"] {
            metrics.admin_refused.with_label_values(&[reason]).inc_by(0);
        }
        // Both routes exist from the start, so `rate()` over them has a beginning.
        for route in ["login", "api"] {
            metrics
                .admin_auth_failures
                .with_label_values(&[route])
                .inc_by(0);
        }
        if !per_tenant {
            // The aggregate exists from the start, so `rate()` over it has a beginning.
            metrics
                .reconcile
                .missing
                .with_label_values(NO_LABELS)
                .inc_by(0);
        }
        metrics
    }

    /// Every metric name the relay can export, whether or not it has a series yet (a labelled
    /// metric appears on `/metrics` with its first label set). Dashboards and alert rules may
    /// name only these (`tests/monitoring.rs`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Sets `o365_certificate_expiry_seconds`, which exists from then on.
    pub fn certificate_expires_in(&self, seconds: i64) {
        self.certificate_registered.call_once(|| {
            let _ = self
                .registry
                .register(Box::new(self.certificate_expiry.clone()));
        });
        self.certificate_expiry.set(seconds as f64);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The label values of an aggregate series.
const NO_LABELS: &[&str] = &[];

/// How one tenant fared in a reconciliation pass.
#[derive(Debug, Clone)]
pub struct TenantPass {
    pub tenant: TenantId,
    /// Age in seconds of the oldest blob found unrelayed (0 when none), over the content types
    /// that were listed; `None` when none was.
    pub lag: Option<f64>,
    /// Every content type listed to the end and its missing blobs enqueued.
    pub complete: bool,
}

/// The reconciliation series: aggregated over tenants by default, one per tenant with
/// `O365_METRICS_PER_TENANT` (see the module documentation).
pub struct ReconcileMetrics {
    per_tenant: bool,
    lag: GaugeVec,
    missing: IntCounterVec,
    last_success: GaugeVec,
    pass_duration: Gauge,
    passes: IntCounter,
    /// Each tenant of the last pass: its last complete reconciliation, or when it was first
    /// seen if it never had one, so that a tenant that always fails still ages the oldest last
    /// success (the alert "older than three intervals" fires for it). Holds the last pass's
    /// tenants only, so it is bounded by the served tenants.
    last_success_of: Mutex<HashMap<TenantId, f64>>,
}

impl ReconcileMetrics {
    /// `n` blobs of `tenant` found missing and enqueued.
    pub fn missing(&self, tenant: &TenantId, n: u64) {
        if n == 0 {
            return;
        }
        if self.per_tenant {
            self.missing.with_label_values(&[tenant.as_str()]).inc_by(n);
        } else {
            self.missing.with_label_values(NO_LABELS).inc_by(n);
        }
    }

    /// Blobs found missing so far, all tenants together.
    pub fn missing_total(&self) -> u64 {
        self.missing
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// A pass over `tenants` ended after `duration`.
    pub fn pass_done(&self, tenants: &[TenantPass], duration: std::time::Duration) {
        let now = chrono::Utc::now().timestamp() as f64;
        let mut last = self.last_success_of.lock().expect("poisoned");
        let previous = std::mem::take(&mut *last);
        for t in tenants {
            let when = if t.complete {
                now
            } else {
                previous.get(&t.tenant).copied().unwrap_or(now)
            };
            last.insert(t.tenant.clone(), when);
        }
        if self.per_tenant {
            for t in tenants {
                let label = [t.tenant.as_str()];
                if let Some(lag) = t.lag {
                    self.lag.with_label_values(&label).set(lag);
                }
                if t.complete {
                    self.last_success.with_label_values(&label).set(now);
                }
            }
            // Tenants no longer served leave no stale series behind.
            for gone in previous.keys().filter(|t| !last.contains_key(*t)) {
                let label = [gone.as_str()];
                let _ = self.lag.remove_label_values(&label);
                let _ = self.last_success.remove_label_values(&label);
                let _ = self.missing.remove_label_values(&label);
            }
        } else {
            let max_lag = tenants.iter().filter_map(|t| t.lag).fold(0.0, f64::max);
            self.lag.with_label_values(NO_LABELS).set(max_lag);
            if let Some(oldest) = last.values().copied().reduce(f64::min) {
                self.last_success.with_label_values(NO_LABELS).set(oldest);
            }
        }
        self.pass_duration.set(duration.as_secs_f64());
        self.passes.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_expiry_exists_only_once_a_certificate_is_tracked() {
        let m = Metrics::new();
        assert!(!m.render().contains("o365_certificate_expiry_seconds"));
        m.certificate_expires_in(86_400);
        m.certificate_expires_in(3_600);
        assert!(m.render().contains("o365_certificate_expiry_seconds 3600"));
    }

    fn tenant(i: u32) -> TenantId {
        TenantId::parse(&format!("0000e365-0000-4000-8000-{i:012x}")).unwrap()
    }

    fn pass(m: &Metrics, outcomes: &[(u32, Option<f64>, bool)]) {
        let tenants: Vec<TenantPass> = outcomes
            .iter()
            .map(|&(i, lag, complete)| TenantPass {
                tenant: tenant(i),
                lag,
                complete,
            })
            .collect();
        m.reconcile
            .pass_done(&tenants, std::time::Duration::from_millis(1500));
    }

    /// The value of the one series of `name` (the aggregate).
    fn value(text: &str, name: &str) -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no unlabelled {name} in:\n{text}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    #[test]
    fn by_default_no_series_carries_a_tenant_and_the_reconciliation_is_aggregated() {
        let m = Metrics::new();
        m.reconcile.missing(&tenant(1), 3);
        m.reconcile.missing(&tenant(2), 4);
        pass(
            &m,
            &[
                (1, Some(120.0), true),
                (2, Some(900.0), true),
                (3, None, false),
            ],
        );
        let text = m.render();
        assert!(!text.contains("tenant_id"), "{text}");
        assert!(!text.contains(tenant(1).as_str()), "{text}");
        assert_eq!(value(&text, "o365_reconcile_missing_total"), 7.0);
        assert_eq!(
            value(&text, "o365_reconcile_lag_seconds"),
            900.0,
            "the largest"
        );
        assert_eq!(value(&text, "o365_reconcile_pass_duration_seconds"), 1.5);
        assert_eq!(value(&text, "o365_reconcile_passes_total"), 1.0);
        assert_eq!(m.reconcile.missing_total(), 7);
        let first = value(&text, "o365_reconcile_last_success_timestamp_seconds");
        assert!(first > 0.0);
        // Tenant 3 keeps failing: the oldest last success stays where it was first seen while
        // the others move on, so the "older than three intervals" alert fires for it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        pass(
            &m,
            &[(1, Some(0.0), true), (2, Some(0.0), true), (3, None, false)],
        );
        let text = m.render();
        assert_eq!(
            value(&text, "o365_reconcile_last_success_timestamp_seconds"),
            first
        );
        assert_eq!(value(&text, "o365_reconcile_lag_seconds"), 0.0);
        // Once tenant 3 is no longer served (offboarded, parked), it no longer holds it back.
        pass(&m, &[(1, Some(0.0), true), (2, Some(0.0), true)]);
        let text = m.render();
        assert!(value(&text, "o365_reconcile_last_success_timestamp_seconds") > first);
    }

    #[test]
    fn per_tenant_series_are_opt_in_and_leave_with_their_tenant() {
        let m = Metrics::with_tenant_series(true);
        m.reconcile.missing(&tenant(1), 2);
        pass(&m, &[(1, Some(60.0), true), (2, Some(5.0), false)]);
        let text = m.render();
        let t1 = tenant(1);
        let t2 = tenant(2);
        for series in [
            format!("o365_reconcile_missing_total{{tenant_id=\"{t1}\"}} 2"),
            format!("o365_reconcile_lag_seconds{{tenant_id=\"{t1}\"}} 60"),
            format!("o365_reconcile_lag_seconds{{tenant_id=\"{t2}\"}} 5"),
            format!("o365_reconcile_last_success_timestamp_seconds{{tenant_id=\"{t1}\"}}"),
        ] {
            assert!(text.contains(&series), "no {series} in:\n{text}");
        }
        assert!(
            !text.contains(&format!(
                "o365_reconcile_last_success_timestamp_seconds{{tenant_id=\"{t2}\"}}"
            )),
            "tenant 2 never completed:\n{text}"
        );
        assert_eq!(m.reconcile.missing_total(), 2);
        pass(&m, &[(2, Some(0.0), true)]);
        let text = m.render();
        assert!(!text.contains(t1.as_str()), "tenant 1 left:\n{text}");
    }
}
