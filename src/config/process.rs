//! The process itself: which roles it runs, how long a graceful stop may take, how it logs, and
//! whether its metrics carry one series per tenant.

use super::parse::{Bounds, Parser, HOUR};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    enable_webhook: Option<String>,
    enable_workers: Option<String>,
    enable_reconciler: Option<String>,
    enable_keeper: Option<String>,
    shutdown_timeout: Option<String>,
    log_format: Option<String>,
    metrics_per_tenant: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `O365_SHUTDOWN_TIMEOUT`: 0s (stop at once) to 1h.
const SHUTDOWN_TIMEOUT: Bounds<Duration> = Bounds::new(Duration::ZERO, HOUR);

pub(super) struct Process {
    pub enable_webhook: bool,
    pub enable_workers: bool,
    pub enable_reconciler: bool,
    pub enable_keeper: bool,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    pub metrics_per_tenant: bool,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Process {
    let raw: Raw = p.raw(vars);
    Process {
        enable_webhook: p.boolean("ENABLE_WEBHOOK", raw.enable_webhook, true),
        enable_workers: p.boolean("ENABLE_WORKERS", raw.enable_workers, true),
        enable_reconciler: p.boolean("ENABLE_RECONCILER", raw.enable_reconciler, true),
        enable_keeper: p.boolean("ENABLE_KEEPER", raw.enable_keeper, true),
        shutdown_timeout: p.duration(
            "SHUTDOWN_TIMEOUT",
            raw.shutdown_timeout,
            "30s",
            SHUTDOWN_TIMEOUT,
        ),
        log_format: p.choice(
            "LOG_FORMAT",
            raw.log_format,
            &[("json", LogFormat::Json), ("pretty", LogFormat::Pretty)],
            "a log format",
        ),
        metrics_per_tenant: p.boolean("METRICS_PER_TENANT", raw.metrics_per_tenant, false),
    }
}
