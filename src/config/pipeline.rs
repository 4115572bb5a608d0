//! The data path's pace: how many blobs are fetched at once (in all, and per tenant while the
//! replica is busy), how failures are retried, the
//! per-tenant request budget, record de-duplication, and how often the reconciler and the
//! subscription keeper run.

use super::parse::{Bounds, Parser, DAY, HOUR, MINUTE, SECOND};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    worker_concurrency: Option<String>,
    tenant_concurrency: Option<String>,
    max_attempts: Option<String>,
    retry_base: Option<String>,
    retry_max: Option<String>,
    quota_per_minute: Option<String>,
    record_dedup_ttl: Option<String>,
    reconcile_interval: Option<String>,
    reconcile_lookback: Option<String>,
    reconcile_concurrency: Option<String>,
    keeper_interval: Option<String>,
    park_probe_interval: Option<String>,
    backpressure_probe_max: Option<String>,
}

/// Microsoft serves content for 7 days and lists no more than 7 days back (Office 365 Management
/// Activity API reference, "List available content" and "Retrieving content").
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `O365_WORKER_CONCURRENCY`: 1 to 1024.
const WORKER_CONCURRENCY: Bounds<usize> = Bounds::new(1, 1024);
/// `O365_TENANT_CONCURRENCY`: 1 to 1024 (a value at or above `O365_WORKER_CONCURRENCY` never
/// limits a tenant).
const TENANT_CONCURRENCY: Bounds<usize> = Bounds::new(1, 1024);
/// `O365_MAX_ATTEMPTS`: 1 to 100.
const MAX_ATTEMPTS: Bounds<u32> = Bounds::new(1, 100);
/// `O365_RETRY_BASE`: 1ms (the AMQP expiration's unit) to 1h; also at most `O365_RETRY_MAX`.
const RETRY_BASE: Bounds<Duration> = Bounds::new(Duration::from_millis(1), HOUR);
/// `O365_RETRY_MAX`: 1ms to 1d.
const RETRY_MAX: Bounds<Duration> = Bounds::new(Duration::from_millis(1), DAY);
/// `O365_QUOTA_PER_MINUTE`: 1 to 100000 (Microsoft's own limit is 2,000 requests a minute per
/// tenant: Office 365 Management Activity API reference, "API throttling").
const QUOTA_PER_MINUTE: Bounds<u32> = Bounds::new(1, 100_000);
/// `O365_RECORD_DEDUP_TTL`: 0s (off) to 30d.
const RECORD_DEDUP_TTL: Bounds<Duration> =
    Bounds::new(Duration::ZERO, Duration::from_secs(30 * 24 * 3600));
/// `O365_RECONCILE_INTERVAL`: 1s to 7d (beyond that, content expires between two passes).
const RECONCILE_INTERVAL: Bounds<Duration> =
    Bounds::new(SECOND, RETENTION).because("Microsoft keeps content for 7 days");
/// `O365_RECONCILE_LOOKBACK`: 1m to 7d.
const RECONCILE_LOOKBACK: Bounds<Duration> =
    Bounds::new(MINUTE, RETENTION).because("Microsoft keeps content for 7 days");
/// `O365_RECONCILE_CONCURRENCY`: 1 to 256 tenants reconciled (and kept) at once.
const RECONCILE_CONCURRENCY: Bounds<usize> = Bounds::new(1, 256);
/// `O365_KEEPER_INTERVAL`: 1s to 1d.
const KEEPER_INTERVAL: Bounds<Duration> = Bounds::new(SECOND, DAY);
/// `O365_PARK_PROBE_INTERVAL`: 1s to 1h (a parked tenant's blobs wait at most about this long
/// once it works again).
const PARK_PROBE_INTERVAL: Bounds<Duration> =
    Bounds::new(SECOND, HOUR).because("a parked tenant's blobs wait for the probe");
/// `O365_BACKPRESSURE_PROBE_MAX`: 1s to 10m (records wait at most about this long once a full
/// consumer queue has room again).
const BACKPRESSURE_PROBE_MAX: Bounds<Duration> = Bounds::new(SECOND, Duration::from_secs(600))
    .because("records wait for the probe once the consumer queue has room");

pub(super) struct Pipeline {
    pub worker_concurrency: usize,
    pub tenant_concurrency: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub quota_per_minute: u32,
    pub record_dedup_ttl: Duration,
    pub reconcile_interval: Duration,
    pub reconcile_lookback: Duration,
    pub reconcile_concurrency: usize,
    pub keeper_interval: Duration,
    pub park_probe_interval: Duration,
    pub backpressure_probe_max: Duration,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Pipeline {
    let raw: Raw = p.raw(vars);
    let retry_base = p.duration("RETRY_BASE", raw.retry_base, "10s", RETRY_BASE);
    let retry_max = p.duration("RETRY_MAX", raw.retry_max, "30m", RETRY_MAX);
    if retry_max < retry_base {
        p.fail(
            "RETRY_BASE",
            "must be above zero and not above O365_RETRY_MAX",
        );
    }
    Pipeline {
        worker_concurrency: p.number(
            "WORKER_CONCURRENCY",
            raw.worker_concurrency,
            16,
            WORKER_CONCURRENCY,
        ),
        tenant_concurrency: p.number(
            "TENANT_CONCURRENCY",
            raw.tenant_concurrency,
            4,
            TENANT_CONCURRENCY,
        ),
        max_attempts: p.number("MAX_ATTEMPTS", raw.max_attempts, 10, MAX_ATTEMPTS),
        retry_base,
        retry_max,
        quota_per_minute: p.number(
            "QUOTA_PER_MINUTE",
            raw.quota_per_minute,
            2000,
            QUOTA_PER_MINUTE,
        ),
        record_dedup_ttl: p.duration(
            "RECORD_DEDUP_TTL",
            raw.record_dedup_ttl,
            "24h",
            RECORD_DEDUP_TTL,
        ),
        reconcile_interval: p.duration(
            "RECONCILE_INTERVAL",
            raw.reconcile_interval,
            "15m",
            RECONCILE_INTERVAL,
        ),
        reconcile_lookback: p.duration(
            "RECONCILE_LOOKBACK",
            raw.reconcile_lookback,
            "24h",
            RECONCILE_LOOKBACK,
        ),
        reconcile_concurrency: p.number(
            "RECONCILE_CONCURRENCY",
            raw.reconcile_concurrency,
            32,
            RECONCILE_CONCURRENCY,
        ),
        keeper_interval: p.duration(
            "KEEPER_INTERVAL",
            raw.keeper_interval,
            "5m",
            KEEPER_INTERVAL,
        ),
        park_probe_interval: p.duration(
            "PARK_PROBE_INTERVAL",
            raw.park_probe_interval,
            "5m",
            PARK_PROBE_INTERVAL,
        ),
        backpressure_probe_max: p.duration(
            "BACKPRESSURE_PROBE_MAX",
            raw.backpressure_probe_max,
            "30s",
            BACKPRESSURE_PROBE_MAX,
        ),
    }
}
