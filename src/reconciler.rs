//! Reconciliation: Microsoft's notifications are late (often 60–90 minutes) or missing
//! (Office 365 Management Activity API FAQs and troubleshooting; Office 365 Management Activity
//! API reference, "Notification failure and retry"), so one replica at a time lists the
//! available content of every served tenant and content type, in windows of at most 24 hours,
//! and enqueues every blob not yet relayed into the same work queue (marked
//! `source: reconcile`).
//!
//! **Checkpoint.** Per tenant and content type, Redis keeps the end of the last window that was
//! fully listed (every page, `NextPageUri` followed to the end) *and* whose missing blobs were
//! durably enqueued. Microsoft lists content late, so the checkpoint never *shortens* a pass:
//! every pass re-lists at least `O365_RECONCILE_LOOKBACK` before now (listing is cheap and the
//! blobs found are de-duplicated against the relayed markers). What the checkpoint adds is the
//! catch-up after downtime: a pass starts at `min(now, checkpoint) - lookback`, so a relay that
//! was down for three days with a 24-hour look-back lists the three days plus the overlap
//! instead of silently skipping two of them. Never beyond Microsoft's 7 days (minus a skew
//! margin); content older than that cannot be listed any more, which is logged.
//!
//! **Window errors.** AF20030/AF20055 mean Microsoft's clock disagrees with ours (or a window
//! came out too long): the window is recomputed with a fresh `now` and a growing margin from the
//! 7-day edge, and windows longer than an hour are split in two; a few tries per pass.
//!
//! **Re-enqueue guard.** A blob enqueued by a pass gets a short-lived marker so the next passes
//! (every `O365_RECONCILE_INTERVAL`) do not enqueue it again while it is still waiting in the
//! work or retry queue; when the marker lapses and the blob is still not relayed (dead-lettered,
//! lost), it is enqueued again.

use crate::domain::{ContentId, ContentType, TenantId, WorkItem};
use crate::management::{ApiError, Disposition, ManagementClient};
use crate::metrics::Metrics;
use crate::notification::{ContentRules, RawContent};
use crate::store::dedup::BlobMarkers;
use crate::store::{Lease, Store};
use crate::subscriptions::Subscriptions;
use crate::tenants::Tenants;
use crate::work_queue::WorkQueue;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Microsoft's window limits (Office 365 Management Activity API reference, "List available
/// content": `startTime` and `endTime` at most 24 hours apart, no more than 7 days back).
const MAX_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// Stay clear of the 7-day edge so clock skew cannot trip AF20055.
pub const SKEW: chrono::Duration = chrono::Duration::minutes(5);
/// Microsoft serves content for 7 days.
pub const RETENTION: chrono::Duration = chrono::Duration::days(7);
/// Window recomputations (AF20030/AF20055) allowed per tenant and content type in one pass.
const MAX_WINDOW_RETRIES: u32 = 4;

/// Why reconciling a tenant and content type stopped (the next pass starts again from the
/// last checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Listing(#[from] ApiError),
    #[error("cannot enqueue the missing blobs: {0}")]
    Enqueue(#[source] crate::broker::BrokerError),
}

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

/// Where a pass starts: the look-back before `min(now, checkpoint)`, never beyond the 7 days
/// Microsoft keeps content (minus the skew margin).
pub fn pass_start(
    now: DateTime<Utc>,
    lookback: chrono::Duration,
    checkpoint: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    let anchor = checkpoint.map_or(now, |c| c.min(now));
    (anchor - lookback).max(now - RETENTION + SKEW)
}

/// What reconciliation needs.
pub struct Reconciler {
    pub store: Arc<Store>,
    pub management: Arc<ManagementClient>,
    pub subscriptions: Arc<Subscriptions>,
    pub tenants: Arc<Tenants>,
    pub work_queue: Arc<WorkQueue>,
    /// The checks every listed blob passes, as a notified one does.
    pub rules: ContentRules,
    pub metrics: Arc<Metrics>,
    /// `O365_CONTENT_TYPES`.
    pub content_types: Vec<ContentType>,
    /// `O365_RECONCILE_INTERVAL`.
    pub interval: Duration,
    /// `O365_RECONCILE_LOOKBACK`.
    pub lookback: Duration,
}

impl Reconciler {
    async fn read_checkpoint(&self, tenant: &TenantId, ct: ContentType) -> Option<DateTime<Utc>> {
        self.store
            .checkpoints()
            .get(tenant, ct)
            .await
            .ok()
            .flatten()
    }

    async fn write_checkpoint(&self, tenant: &TenantId, ct: ContentType, end: DateTime<Utc>) {
        // Older than Microsoft's retention it is useless: let it expire.
        let ttl = (RETENTION + chrono::Duration::days(1))
            .to_std()
            .unwrap_or(Duration::from_secs(8 * 86_400));
        if let Err(e) = self.store.checkpoints().set(tenant, ct, end, ttl).await {
            tracing::debug!(tenant_id = %tenant, content_type = %ct, error = %e, "Cannot save the reconciliation checkpoint; the next pass re-lists from the previous one.");
        }
    }

    /// How long a blob enqueued by reconciliation is not enqueued again while it waits.
    fn enqueue_guard_ttl(&self) -> Duration {
        (self.interval * 5).clamp(Duration::from_secs(30), Duration::from_secs(1800))
    }

    /// Reconciles one tenant and content type from its checkpoint (minus the look-back) to now.
    pub async fn reconcile_one(
        &self,
        tenant: &TenantId,
        ct: ContentType,
    ) -> Result<PassStats, ReconcileError> {
        let now = Utc::now();
        let lookback = chrono::Duration::from_std(self.lookback).unwrap_or(MAX_WINDOW);
        let checkpoint = self.read_checkpoint(tenant, ct).await;
        let start = pass_start(now, lookback, checkpoint);
        if let Some(cp) = checkpoint {
            if cp < start {
                tracing::warn!(tenant_id = %tenant, content_type = %ct, checkpoint = %cp, "The last reconciliation is older than Microsoft's 7-day retention: content created before {start} can no longer be listed.");
            }
        }
        let mut stats = PassStats::default();
        let mut oldest_missing: Option<DateTime<Utc>> = None;
        let mut queue: VecDeque<_> = windows(start, now).into();
        let mut window_retries = 0;
        while let Some((ws, we)) = queue.pop_front() {
            let entries = match self.management.list_content(tenant, ct, ws, we).await {
                Ok(e) => e,
                Err(e) if is_window_error(&e) && window_retries < MAX_WINDOW_RETRIES => {
                    window_retries += 1;
                    // Microsoft's clock disagrees with ours (or the window is off): recompute with
                    // a fresh now and a growing margin from the 7-day edge; split long windows.
                    let margin = SKEW * 2i32.pow(window_retries);
                    let floor = Utc::now() - RETENTION + margin;
                    let ws = ws.max(floor);
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Listing window refused; recomputing it (clock skew?).");
                    if ws < we {
                        if we - ws > chrono::Duration::hours(1) {
                            let mid = ws + (we - ws) / 2;
                            queue.push_front((mid, we));
                            queue.push_front((ws, mid));
                        } else {
                            queue.push_front((ws, we));
                        }
                    }
                    continue;
                }
                Err(e) if e.disposition() == Disposition::StartSubscription => {
                    self.subscriptions.ensure_started(tenant, ct).await;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            stats.listed += entries.len() as u64;
            let items = self
                .missing_items(tenant, ct, entries, &mut stats, &mut oldest_missing)
                .await;
            for chunk in items.chunks(500) {
                self.work_queue
                    .enqueue(chunk)
                    .await
                    .map_err(ReconcileError::Enqueue)?;
                stats.enqueued += chunk.len() as u64;
                let ttl = self.enqueue_guard_ttl();
                for item in chunk {
                    let _ = self
                        .store
                        .dedup()
                        .mark_enqueued(tenant, &item.content_id, ttl)
                        .await;
                }
            }
            // Listed to the last page and every missing blob durably enqueued: the window is done.
            self.write_checkpoint(tenant, ct, we).await;
        }
        let lag = oldest_missing
            .map(|o| (now - o).num_seconds().max(0) as f64)
            .unwrap_or(0.0);
        self.metrics
            .reconcile_lag
            .with_label_values(&[tenant.as_str()])
            .set(lag);
        self.metrics
            .reconcile_missing
            .with_label_values(&[tenant.as_str()])
            .inc_by(stats.missing);
        Ok(stats)
    }

    /// The listed blobs that are neither relayed, dead-lettered, nor recently enqueued by
    /// reconciliation. Every entry passes the same checks as a webhook notification
    /// ([`crate::notification`]); one that fails is skipped with a log line and a metric (it can
    /// never be fetched safely). The markers of a whole page are read in one Redis round trip.
    async fn missing_items(
        &self,
        tenant: &TenantId,
        ct: ContentType,
        entries: Vec<RawContent>,
        stats: &mut PassStats,
        oldest_missing: &mut Option<DateTime<Utc>>,
    ) -> Vec<WorkItem> {
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.rules.listing_entry(tenant, ct, entry) {
                Ok(item) => listed.push(item),
                Err(rejection) => {
                    stats.errors += 1;
                    self.metrics
                        .listing_rejected
                        .with_label_values(&[rejection.reason])
                        .inc();
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, reason = %rejection.detail, "Listed content refused; skipped.");
                }
            }
        }
        let ids: Vec<&ContentId> = listed.iter().map(|item| &item.content_id).collect();
        // Without Redis every listed blob counts as missing (workers still skip relayed ones).
        let known = self
            .store
            .dedup()
            .markers(tenant, &ids)
            .await
            .unwrap_or_else(|_| vec![BlobMarkers::default(); ids.len()]);
        let mut items = Vec::new();
        for (item, marks) in listed.into_iter().zip(known) {
            let BlobMarkers {
                relayed,
                enqueued,
                dead,
            } = marks;
            if relayed || dead {
                continue;
            }
            if let Some(created) = item
                .content_created
                .as_deref()
                .and_then(crate::domain::parse_ms_time)
            {
                *oldest_missing =
                    Some(oldest_missing.map_or(created, |o: DateTime<Utc>| o.min(created)));
            }
            if enqueued {
                // Enqueued by an earlier pass and still waiting in the work or retry queue.
                continue;
            }
            stats.missing += 1;
            items.push(item);
        }
        items
    }

    /// One pass over every served tenant and configured content type.
    pub async fn pass(&self) -> PassStats {
        // Markers deferred during a Redis outage first, or their blobs would look unrelayed.
        if self.store.deferred_len() > 0 {
            let _ = self.store.flush_deferred().await;
        }
        let mut total = PassStats::default();
        // Parked tenants are left to the health probe: no token requests, no listing, and their
        // checkpoint stays where the parked period begins (crate::health).
        for tenant in self.tenants.healthy_ids().await {
            let mut ok = true;
            for &ct in &self.content_types {
                match self.reconcile_one(&tenant, ct).await {
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
                        if let Some(f) = tenant_failure_of(&e, ct) {
                            let _ = self.tenants.park(&tenant, &f.code, &f.reason).await;
                            break;
                        }
                    }
                }
            }
            if ok {
                self.metrics
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
}

/// A listing failure that is the tenant's own (the tenant is then parked).
fn tenant_failure_of(e: &ReconcileError, ct: ContentType) -> Option<crate::health::TenantFailure> {
    match e {
        ReconcileError::Listing(api) => crate::health::tenant_failure_for(api, ct),
        ReconcileError::Enqueue(_) => None,
    }
}

fn is_window_error(e: &ApiError) -> bool {
    matches!(e, ApiError::Api { code, .. } if code == "AF20030" || code == "AF20055")
}

/// The lease's time to live: short enough that a replica that died (SIGKILL, OOM) is taken
/// over within seconds, renewed by the holder every third of it, also during a long pass.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).clamp(Duration::from_secs(15), Duration::from_secs(60))
}

impl Reconciler {
    /// The reconciler loop: one replica at a time (a Redis lease, renewed by its holder every
    /// third of its TTL and taken over when it lapses), a pass every `O365_RECONCILE_INTERVAL`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.interval;
        let ttl = lease_ttl(interval);
        let beat = ttl / 3;
        let lease = Lease::new(self.store.clone(), "reconciler", ttl);
        let mut next_pass = tokio::time::Instant::now();
        loop {
            let held = lease.try_hold().await;
            if held && tokio::time::Instant::now() >= next_pass {
                let pass = self.pass();
                tokio::pin!(pass);
                let mut heartbeat = tokio::time::interval(beat);
                heartbeat.tick().await;
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => { lease.release().await; return; }
                        _ = &mut pass => break,
                        _ = heartbeat.tick() => { lease.try_hold().await; }
                    }
                }
                next_pass = tokio::time::Instant::now() + interval;
            }
            // Holder: wake for the next pass or heartbeat; others: poll to take over a lapsed lease.
            let now = tokio::time::Instant::now();
            let wait = if held {
                beat.min(next_pass.saturating_duration_since(now))
            } else {
                beat.min(interval)
            }
            .max(Duration::from_millis(100));
            tokio::select! {
                _ = shutdown.cancelled() => { lease.release().await; return; }
                _ = tokio::time::sleep(wait) => {}
            }
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

    #[test]
    fn the_checkpoint_extends_the_lookback_but_never_shortens_it() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        // No checkpoint, or a recent one: the look-back before now.
        assert_eq!(pass_start(now, hour, None), now - hour);
        assert_eq!(
            pass_start(now, hour, Some(now - chrono::Duration::seconds(2))),
            now - hour - chrono::Duration::seconds(2)
        );
        // A checkpoint in the future (clock skew between replicas) changes nothing.
        assert_eq!(pass_start(now, hour, Some(now + hour)), now - hour);
        // Down for three days: resume from the checkpoint, with the overlap.
        let cp = now - chrono::Duration::days(3);
        assert_eq!(pass_start(now, hour, Some(cp)), cp - hour);
        // Never beyond Microsoft's 7 days.
        let cp = now - chrono::Duration::days(30);
        assert_eq!(pass_start(now, hour, Some(cp)), now - RETENTION + SKEW);
    }

    #[test]
    fn a_dead_holder_is_taken_over_within_a_minute() {
        assert_eq!(lease_ttl(Duration::from_secs(2)), Duration::from_secs(15));
        assert_eq!(lease_ttl(Duration::from_secs(900)), Duration::from_secs(60));
    }
}
