//! In-flight markers: while a blob waits in a queue — just enqueued, in a retry tier, deferred
//! or parked — Redis says so ([`crate::store`]'s dedup), so reconciliation does not queue a
//! second copy of it. The markers are an optimisation: a second copy is de-duplicated anyway.

use super::{Job, WorkQueue};
use crate::domain::{ContentId, TenantId};
use std::time::Duration;

/// How long a freshly enqueued blob keeps its in-flight marker: five reconciliation passes
/// (`O365_RECONCILE_INTERVAL`), between 30 s and 30 min. A job that waits longer (a retry, a
/// deferral, a parked tenant) has its marker renewed for the wait; one that is lost (a purged
/// queue) is queued again by reconciliation once its marker lapses.
pub fn in_flight_guard(reconcile_interval: Duration) -> Duration {
    (reconcile_interval * 5).clamp(Duration::from_secs(30), Duration::from_secs(1800))
}

impl WorkQueue {
    /// Marks blobs in flight for `wait` (and the guard beyond it), so that reconciliation does
    /// not queue a second copy while one waits in a queue: in the background, after the
    /// confirm — the marker is an optimisation (a second copy is de-duplicated by the relayed
    /// marker and the record claims), and the webhook's answer does not wait for it.
    pub(super) fn mark_in_flight(&self, blobs: Vec<(TenantId, ContentId)>, wait: Duration) {
        if blobs.is_empty() {
            return;
        }
        let ttl = wait.saturating_add(self.policy.in_flight_guard);
        // Written with the other markers of the next few milliseconds: one round trip per
        // window, not per request (the store schedules the write; no task per request).
        self.store.mark_enqueued_soon(blobs, ttl);
    }

    pub(super) fn mark_job_in_flight(&self, job: &Job, wait: Duration) {
        self.mark_in_flight(
            vec![(job.item.tenant_id.clone(), job.item.content_id.clone())],
            wait,
        );
    }
}
