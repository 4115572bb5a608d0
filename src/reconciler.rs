//! Reconciliation: Microsoft's notifications are late (often 60–90 minutes) or missing
//! (reference §6), so one replica at a time lists the available content of every served
//! tenant and content type over `O365_RECONCILE_LOOKBACK`, in windows of at most 24 hours,
//! and enqueues every blob not yet relayed into the same work queue.

use crate::app::Relay;
use crate::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use crate::leases::Lease;
use crate::management::{ApiError, Disposition};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Microsoft's window limits (reference §7).
const MAX_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// Stay clear of the 7-day edge so clock skew cannot trip AF20055.
const SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// What one pass found.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassStats {
    pub listed: u64,
    pub missing: u64,
    pub enqueued: u64,
    pub errors: u64,
}

/// Splits `[start, end)` into windows of at most 24 hours.
pub fn windows(start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut s = start;
    while s < end {
        let e = (s + MAX_WINDOW).min(end);
        out.push((s, e));
        s = e;
    }
    out
}

/// Reconciles one tenant and content type over the look-back.
pub async fn reconcile_one(
    relay: &Relay,
    tenant: &TenantId,
    ct: ContentType,
) -> Result<PassStats, ApiError> {
    let now = Utc::now();
    let lookback =
        chrono::Duration::from_std(relay.settings.reconcile_lookback).unwrap_or(MAX_WINDOW);
    let start = (now - lookback).max(now - chrono::Duration::days(7) + SKEW);
    let mut stats = PassStats::default();
    let mut oldest_missing: Option<DateTime<Utc>> = None;
    for (ws, we) in windows(start, now) {
        let entries = match relay.management.list_content(tenant, ct, ws, we).await {
            Ok(e) => e,
            Err(e) if e.disposition() == Disposition::StartSubscription => {
                relay.subscriptions.ensure_started(tenant, ct).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        stats.listed += entries.len() as u64;
        let mut items = Vec::new();
        for entry in entries {
            let Ok(content_id) = ContentId::parse(&entry.content_id) else {
                stats.errors += 1;
                continue;
            };
            let Ok(url) = url::Url::parse(&entry.content_uri) else {
                stats.errors += 1;
                continue;
            };
            if !relay.management.is_management_url(&url) {
                tracing::warn!(tenant_id = %tenant, "Listing returned a contentUri outside the Management API; ignored.");
                stats.errors += 1;
                continue;
            }
            if let Ok(true) = relay.store.is_relayed(tenant, &content_id).await {
                continue;
            }
            stats.missing += 1;
            if let Some(created) = entry
                .content_created
                .as_deref()
                .and_then(crate::domain::parse_ms_time)
            {
                oldest_missing =
                    Some(oldest_missing.map_or(created, |o: DateTime<Utc>| o.min(created)));
            }
            items.push(WorkItem {
                tenant_id: tenant.clone(),
                content_type: ct,
                content_id,
                content_uri: entry.content_uri,
                content_created: entry.content_created,
                content_expiration: entry.content_expiration,
                source: Source::Reconcile,
            });
        }
        for chunk in items.chunks(500) {
            crate::webhook::enqueue(relay, chunk)
                .await
                .map_err(|e| ApiError::Transport(format!("work queue: {e}")))?;
            stats.enqueued += chunk.len() as u64;
        }
    }
    let lag = oldest_missing
        .map(|o| (now - o).num_seconds().max(0) as f64)
        .unwrap_or(0.0);
    relay
        .metrics
        .reconcile_lag
        .with_label_values(&[tenant.as_str()])
        .set(lag);
    relay
        .metrics
        .reconcile_missing
        .with_label_values(&[tenant.as_str()])
        .inc_by(stats.missing);
    Ok(stats)
}

/// One pass over every served tenant and configured content type.
pub async fn pass(relay: &Relay) -> PassStats {
    let mut total = PassStats::default();
    for tenant in relay.tenants.served_ids().await {
        let mut ok = true;
        for ct in relay.settings.content_types.clone() {
            match reconcile_one(relay, &tenant, ct).await {
                Ok(s) => {
                    total.listed += s.listed;
                    total.missing += s.missing;
                    total.enqueued += s.enqueued;
                    total.errors += s.errors;
                }
                Err(e) => {
                    ok = false;
                    total.errors += 1;
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Reconciliation failed; the next pass retries.");
                }
            }
        }
        if ok {
            relay
                .metrics
                .reconcile_last_success
                .with_label_values(&[tenant.as_str()])
                .set(Utc::now().timestamp() as f64);
        }
    }
    if total.missing > 0 {
        tracing::info!(
            listed = total.listed,
            missing = total.missing,
            "Reconciliation enqueued blobs the webhook had missed."
        );
    }
    total
}

/// The reconciler loop: one replica at a time, every `O365_RECONCILE_INTERVAL`.
pub async fn run(relay: Arc<Relay>, shutdown: CancellationToken) {
    let interval = relay.settings.reconcile_interval;
    let lease = Lease::new(
        relay.store.clone(),
        "reconciler",
        (interval * 3).max(Duration::from_secs(60)),
    );
    loop {
        if lease.try_hold().await {
            tokio::select! {
                _ = shutdown.cancelled() => { lease.release().await; return; }
                _ = pass(&relay) => {}
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => { lease.release().await; return; }
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_never_exceed_24_hours_and_cover_the_range() {
        let end = Utc::now();
        let start = end - chrono::Duration::days(7) + SKEW;
        let w = windows(start, end);
        assert_eq!(w.len(), 7);
        assert_eq!(w.first().unwrap().0, start);
        assert_eq!(w.last().unwrap().1, end);
        for pair in w.windows(2) {
            assert_eq!(pair[0].1, pair[1].0);
        }
        assert!(w.iter().all(|(s, e)| *e - *s <= MAX_WINDOW));
    }
}
