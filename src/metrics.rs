//! Prometheus series, served on the admin listener's `/metrics` (docs/OPERATIONS.md, "Metrics and
//! alerts"). One registry per running relay, so several relays in one test process keep separate
//! figures. Labels are bounded: reasons and results are fixed vocabularies, content types are
//! five, tenants are the served ones.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
    /// Oldest content found missing by the last reconciliation, per tenant (seconds).
    pub reconcile_lag: GaugeVec,
    pub reconcile_missing: IntCounterVec,
    pub reconcile_last_success: GaugeVec,
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
    /// health loop and on transitions ([`crate::health`]).
    pub tenants: IntGaugeVec,
    /// Jobs of parked tenants: event = parked (set aside) | released (back to the work queue) |
    /// expired (dead-lettered: the content expired while its tenant was parked).
    pub parked_jobs: IntCounterVec,
    /// Messages waiting in the parked queue (refreshed by the health loop).
    pub parked_queue_depth: IntGauge,
    /// Probes of parked tenants: result = healthy | parked | error.
    pub tenant_probes: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Metrics {
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
        Metrics {
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
            reconcile_lag: reg!(GaugeVec::new(
                Opts::new(
                    "o365_reconcile_lag_seconds",
                    "Age of the oldest blob the last reconciliation found unrelayed"
                ),
                &["tenant_id"]
            )
            .unwrap()),
            reconcile_missing: reg!(IntCounterVec::new(
                Opts::new(
                    "o365_reconcile_missing_total",
                    "Blobs the reconciler found that the webhook had missed"
                ),
                &["tenant_id"]
            )
            .unwrap()),
            reconcile_last_success: reg!(GaugeVec::new(
                Opts::new(
                    "o365_reconcile_last_success_timestamp_seconds",
                    "End of the last complete reconciliation"
                ),
                &["tenant_id"]
            )
            .unwrap()),
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
            registry,
            names,
        }
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
}
