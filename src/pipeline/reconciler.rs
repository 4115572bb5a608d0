//! Reconciliation: Microsoft's notifications are late (often 60–90 minutes) or missing
//! (Office 365 Management Activity API FAQs and troubleshooting; Office 365 Management Activity
//! API reference, "Notification failure and retry"), so one replica at a time lists the
//! available content of every served tenant and content type, in windows of at most 24 hours,
//! and enqueues every blob not yet relayed into the same work queue (marked
//! `source: reconcile`).
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/reconciler".

use crate::domain::{ContentId, ContentType, TenantId, WorkItem};
use crate::microsoft::management::{ApiError, Disposition, ManagementClient};
use crate::microsoft::notification::{ContentRules, RawContent};
use crate::ops::metrics::{Metrics, TenantPass};
use crate::pipeline::work_queue::WorkQueue;
use crate::store::dedup::BlobMarkers;
use crate::store::{Lease, Store};
use crate::tenancy::parking::Parking;
use crate::tenancy::subscriptions::Subscriptions;
use crate::tenancy::tenants::{TenantState, Tenants};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
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
/// Un-parked tenants reconciled per turn of the loop (the rest wait for the next turn).
const REQUESTS_PER_TURN: usize = 32;
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
    /// Age in seconds of the oldest blob found unrelayed (0 when none).
    pub lag: f64,
}

impl PassStats {
    fn add(&mut self, other: &PassStats) {
        self.listed += other.listed;
        self.missing += other.missing;
        self.enqueued += other.enqueued;
        self.errors += other.errors;
        self.lag = self.lag.max(other.lag);
    }
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

/// Where a pass starts: the look-back before now, or before the checkpoint when that is older
/// than `on_schedule` (passes stopped for a while: catch up), never beyond the 7 days Microsoft
/// keeps content (minus the skew margin). See docs/DESIGN.md, "pipeline/reconciler"umentation, "Checkpoint".
pub fn pass_start(
    now: DateTime<Utc>,
    lookback: chrono::Duration,
    checkpoint: Option<DateTime<Utc>>,
    on_schedule: chrono::Duration,
) -> DateTime<Utc> {
    let anchor = match checkpoint {
        Some(c) if c < now - on_schedule => c,
        _ => now,
    };
    (anchor - lookback).max(now - RETENTION + SKEW)
}

/// What reconciliation needs.
pub struct Reconciler {
    pub store: Arc<Store>,
    pub management: Arc<ManagementClient>,
    pub subscriptions: Arc<Subscriptions>,
    pub tenants: Arc<Tenants>,
    /// Parks a tenant whose listing fails for its own reason.
    pub parking: Arc<Parking>,
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
    /// `O365_RECONCILE_CONCURRENCY`: tenants reconciled at once.
    pub concurrency: usize,
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

    /// Reconciles one tenant and content type from its checkpoint (minus the look-back) to now.
    pub async fn reconcile_one(
        &self,
        tenant: &TenantId,
        ct: ContentType,
    ) -> Result<PassStats, ReconcileError> {
        let now = Utc::now();
        let lookback = chrono::Duration::from_std(self.lookback).unwrap_or(MAX_WINDOW);
        let checkpoint = self.read_checkpoint(tenant, ct).await;
        // Two intervals: the next pass reaches a tenant one interval after the previous pass
        // ended, plus up to a pass's duration on either side.
        let on_schedule = chrono::Duration::from_std(self.interval * 2).unwrap_or(MAX_WINDOW);
        let start = pass_start(now, lookback, checkpoint, on_schedule);
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
                Err(e) if e.is_window_error() && window_retries < MAX_WINDOW_RETRIES => {
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
                // The work queue marks them in flight (as it does the webhook's).
                stats.enqueued += chunk.len() as u64;
            }
            // Listed to the last page and every missing blob durably enqueued: the window is done.
            self.write_checkpoint(tenant, ct, we).await;
        }
        stats.lag = oldest_missing
            .map(|o| (now - o).num_seconds().max(0) as f64)
            .unwrap_or(0.0);
        self.metrics.reconcile.missing(tenant, stats.missing);
        Ok(stats)
    }

    /// The listed blobs that are neither relayed, dead-lettered, nor in flight. Every entry passes the same checks as a webhook notification
    /// ([`crate::microsoft::notification`]); one that fails is skipped with a log line and a metric (it can
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

    /// One tenant: its content types one after another.
    async fn reconcile_tenant(&self, tenant: &TenantId) -> (PassStats, TenantPass) {
        let mut total = PassStats::default();
        let mut outcome = TenantPass {
            tenant: tenant.clone(),
            lag: None,
            complete: true,
        };
        for &ct in &self.content_types {
            match self.reconcile_one(tenant, ct).await {
                Ok(s) => {
                    total.add(&s);
                    outcome.lag = Some(outcome.lag.unwrap_or(0.0).max(s.lag));
                }
                Err(ReconcileError::Listing(api))
                    if api.disposition() == Disposition::StartSubscription =>
                {
                    // Expected while a new tenant's subscriptions start (AF20022/AF20023;
                    // reconcile_one asked for the start): not a failure to warn about.
                    outcome.complete = false;
                    tracing::info!(tenant_id = %tenant, content_type = %ct, code = api.code(), "Not subscribed to this content type yet: the subscription is being started; the next pass lists it.");
                }
                Err(e) => {
                    outcome.complete = false;
                    total.errors += 1;
                    tracing::warn!(tenant_id = %tenant, content_type = %ct, error = %e, "Reconciliation failed; the next pass retries.");
                    // The tenant's own failure: park it (crate::tenancy::health) and stop listing it.
                    if let Some(f) = tenant_failure_of(&e, ct) {
                        self.parking.park(tenant, &f).await;
                        break;
                    }
                }
            }
        }
        (total, outcome)
    }

    /// One pass over every served tenant and configured content type, up to
    /// `O365_RECONCILE_CONCURRENCY` tenants at once.
    pub async fn pass(&self) -> PassStats {
        let started = std::time::Instant::now();
        // Markers deferred during a Redis outage first, or their blobs would look unrelayed.
        if self.store.deferred_len() > 0 {
            let _ = self.store.flush_deferred().await;
        }
        // Parked tenants are left to the health probe: no token requests, no listing, and their
        // checkpoint stays where the parked period begins (crate::tenancy::health).
        let tenants = self.tenants.healthy_ids().await;
        let count = tenants.len();
        // Owned ids: over borrowed ones the compiler cannot prove the pass future `Send`.
        let results: Vec<(PassStats, TenantPass)> = futures_util::stream::iter(tenants)
            .map(|tenant| async move { self.reconcile_tenant(&tenant).await })
            .buffer_unordered(self.concurrency.max(1))
            .collect()
            .await;
        let mut total = PassStats::default();
        let mut outcomes = Vec::with_capacity(results.len());
        for (stats, outcome) in results {
            total.add(&stats);
            outcomes.push(outcome);
        }
        self.metrics
            .reconcile
            .pass_done(&outcomes, started.elapsed());
        if total.missing > 0 {
            tracing::info!(
                listed = total.listed,
                missing = total.missing,
                "Reconciliation enqueued blobs the webhook had missed."
            );
        }
        tracing::debug!(
            tenants = count,
            seconds = started.elapsed().as_secs_f64(),
            "Reconciliation pass done."
        );
        total
    }
}

/// A listing failure that is the tenant's own (the tenant is then parked).
fn tenant_failure_of(
    e: &ReconcileError,
    ct: ContentType,
) -> Option<crate::microsoft::management::TenantFailure> {
    match e {
        ReconcileError::Listing(api) => api.tenant_failure_for(ct),
        ReconcileError::Enqueue(_) => None,
    }
}

/// The lease's time to live: short enough that a replica that died (SIGKILL, OOM) is taken
/// over within seconds, renewed by the holder every third of it, also during a long pass.
pub fn lease_ttl(interval: Duration) -> Duration {
    (interval * 3).clamp(Duration::from_secs(15), Duration::from_secs(60))
}

impl Reconciler {
    /// Reconciles the tenants un-parked since the last look ([`Parking::released`] asks), at
    /// once and over their whole parked period (their checkpoint is where it began), under the
    /// lease this replica already holds.
    async fn reconcile_requested(&self) {
        let Ok(tenants) = self
            .store
            .parking()
            .take_reconcile_requests(REQUESTS_PER_TURN)
            .await
        else {
            return;
        };
        for tenant in tenants {
            if self.tenants.state_now(&tenant).await != Some(TenantState::Healthy) {
                continue;
            }
            let (stats, _) = self.reconcile_tenant(&tenant).await;
            tracing::info!(tenant_id = %tenant, enqueued = stats.enqueued, "Reconciled the un-parked tenant.");
        }
    }

    /// The reconciler loop: one replica at a time (a Redis lease, renewed by its holder every
    /// third of its TTL and taken over when it lapses), a pass every `O365_RECONCILE_INTERVAL`,
    /// and the tenants un-parked since the last turn at every turn.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.interval;
        let ttl = lease_ttl(interval);
        let beat = ttl / 3;
        let lease = Lease::new(self.store.clone(), "reconciler", ttl);
        let mut next_pass = tokio::time::Instant::now();
        loop {
            let held = lease.try_hold().await;
            if held {
                self.reconcile_requested().await;
            }
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
    fn the_checkpoint_extends_the_lookback_after_a_gap_but_never_shortens_it() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let minutes = chrono::Duration::minutes;
        let on_schedule = minutes(30);
        // No checkpoint, or one within two intervals (passes on schedule): the look-back
        // before now, no more.
        assert_eq!(pass_start(now, hour, None, on_schedule), now - hour);
        assert_eq!(
            pass_start(now, hour, Some(now - minutes(16)), on_schedule),
            now - hour
        );
        // A checkpoint in the future (clock skew between replicas) changes nothing.
        assert_eq!(
            pass_start(now, hour, Some(now + hour), on_schedule),
            now - hour
        );
        // Passes stopped for longer: resume from the checkpoint, with the overlap.
        let cp = now - minutes(31);
        assert_eq!(pass_start(now, hour, Some(cp), on_schedule), cp - hour);
        let cp = now - chrono::Duration::days(3);
        assert_eq!(pass_start(now, hour, Some(cp), on_schedule), cp - hour);
        // Never beyond Microsoft's 7 days.
        let cp = now - chrono::Duration::days(30);
        assert_eq!(
            pass_start(now, hour, Some(cp), on_schedule),
            now - RETENTION + SKEW
        );
    }

    #[test]
    fn on_schedule_the_default_lookback_is_one_window_per_content_type() {
        // 24 h look-back, a pass every 15 minutes, this one 16 minutes after the last (a pass
        // takes time): one 24-hour window, one listing call per content type.
        let now = Utc::now();
        let day = chrono::Duration::hours(24);
        let last = now - chrono::Duration::minutes(16);
        let start = pass_start(now, day, Some(last), chrono::Duration::minutes(30));
        assert_eq!(windows(start, now).len(), 1);
    }

    #[test]
    fn a_dead_holder_is_taken_over_within_a_minute() {
        assert_eq!(lease_ttl(Duration::from_secs(2)), Duration::from_secs(15));
        assert_eq!(lease_ttl(Duration::from_secs(900)), Duration::from_secs(60));
    }
}
