//! Tenant health: a tenant whose failures are its own — consent withdrawn at Entra, a token
//! still refused after a fresh one, the app's role missing (AF10001), AF20010–AF20013 — is
//! **parked** instead of having every one of its blobs retried and dead-lettered.
//!
//! Why: such a failure is not the blob's. Retrying each blob asked Entra for a token about once a
//! second for the tenant, and dead-lettered its whole backlog after `O365_MAX_ATTEMPTS`; when the
//! tenant's admin repaired consent, only what the reconciler's look-back still covered came back
//! by itself.
//!
//! **What parking does.** The tenant's state ([`crate::tenants::TenantState::Parked`], shared
//! through Redis) says why and since when. Its notifications are still accepted. A worker that
//! takes one of its jobs does not fetch it: the job is set aside in `{work}.parked`
//! ([`crate::work_queue::Outcome::Park`]) without counting an attempt, so it holds no worker
//! slot while it waits. The reconciler and the subscription keeper leave parked tenants alone.
//! The only requests made for a parked tenant are the **probe**'s: every
//! `O365_PARK_PROBE_INTERVAL`, one replica at a time ([`HealthLoop`], a Redis lease), forgets the
//! tenant's token and calls `subscriptions/list` — one token request and one cheap Management
//! API call. When it succeeds the tenant is un-parked, and so is it when its admin completes the
//! consent flow again ([`crate::onboarding::Onboarding::add`]).
//!
//! **What un-parking does** ([`Parking::released`]): the health loop moves the tenant's jobs from
//! the parked queue back to the work queue, and the reconciler, under its own lease, reconciles
//! the tenant at its next turn (seconds). The reconciler
//! did not list a parked tenant, so its checkpoint is still the end of the last window listed
//! before parking, and a pass starts at `checkpoint - O365_RECONCILE_LOOKBACK` (at most 7 days
//! back): the whole parked period is listed whatever the look-back. A tenant without a
//! checkpoint (never reconciled, or parked for more than the 8 days a checkpoint is kept) gets
//! the parking time as its checkpoint, for the same effect.
//!
//! **One parked queue, not one per tenant.** Per-tenant queues would have to be deleted once
//! drained, and a quorum queue cannot be deleted "only if empty" (RabbitMQ refuses `if-empty`
//! for quorum queues with NOT_IMPLEMENTED, which closes the connection); deleting it regardless
//! could drop a job a worker parked a moment before. So there is one durable `{work}.parked`
//! (the work queue's type), never deleted, and releasing is a **sweep**: each message that was
//! in it is taken once and republished — to the work queue when its tenant is no longer parked,
//! back to the parked queue otherwise — with confirms before acks
//! ([`crate::work_queue::WorkQueue::sweep_parked`]). A sweep costs one pass over the parked jobs;
//! it runs when a tenant is un-parked (a Redis request any replica can make), once more
//! [`SETTLE`] later (to catch a job parked by a worker that read the state just before the
//! un-parking), and every [`SAFETY_SWEEP`] while the queue is not empty.
//!
//! **Never recovering.** Each parked copy carries a TTL that runs out when its content expires
//! at Microsoft (`contentExpiration`, at most 7 days), and the parked queue dead-letters into
//! `{work}.dead`; the copy already carries the dead-letter headers (`o365-error-code: expired`,
//! `o365-dead-reason: content expired at Microsoft while the tenant was parked: …`). So a tenant
//! that never comes back ends in the dead queue only once its content can no longer be fetched.
//! (That dead-lettering is RabbitMQ's own, at-most-once on quorum queues like the retry tiers'
//! return to the work queue; what it could lose is the record of content already gone.)
//!
//! **A DLP-only AF10001.** `DLP.All` needs a role of its own (`ActivityFeed.ReadDlp`). AF10001 on
//! a DLP blob is the tenant's only if `subscriptions/list` (which needs `ActivityFeed.Read`)
//! fails too; otherwise the blob is dead-lettered as before and the tenant's other content flows
//! — parking it would make the probe (which succeeds) and the DLP blobs (which fail) take turns.

use crate::domain::{ContentType, TenantId};
use crate::management::{ApiError, ManagementClient, TenantFailure};
use crate::metrics::Metrics;
use crate::store::{Lease, Store};
use crate::tenants::{TenantState, Tenants};
use crate::tokens::TokenProvider;
use crate::work_queue::WorkQueue;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A newly parked tenant is probed this long after parking; then the gap between its probes
/// grows with its time parked ([`probe_gap`]) up to `O365_PARK_PROBE_INTERVAL`, so consent
/// restored within minutes is found within about a minute, and a tenant parked for days costs
/// one token request per interval.
pub const FIRST_PROBE: Duration = Duration::from_secs(15);

/// How long after its last probe a tenant parked for `parked_for` is probed again: as long as
/// it has been parked (so probes come at 15 s, 30 s, 1 min, 2 min, … after parking), at least
/// [`FIRST_PROBE`], at most `interval` (`O365_PARK_PROBE_INTERVAL`).
pub fn probe_gap(parked_for: Duration, interval: Duration) -> Duration {
    parked_for.max(FIRST_PROBE).min(interval)
}

/// How often the health loop looks for requests (sweeps, reconciliations), at most.
const TICK: Duration = Duration::from_secs(5);
/// A second sweep after an un-parking, once every job parked from a state read before the
/// un-parking has surely arrived (state reads, a publish and its confirm take seconds).
pub const SETTLE: Duration = Duration::from_secs(60);
/// A sweep at least this often while the parked queue is not empty (a request lost with Redis,
/// a replica that died between un-parking and sweeping).
pub const SAFETY_SWEEP: Duration = Duration::from_secs(3600);
/// A checkpoint written for an un-parked tenant lives as long as the reconciler's own (8 days).
const CHECKPOINT_TTL: Duration = Duration::from_secs(8 * 86_400);

/// Parking and un-parking, shared by the workers, onboarding and the health loop.
pub struct Parking {
    pub tenants: Arc<Tenants>,
    pub management: Arc<ManagementClient>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `O365_CONTENT_TYPES`: the checkpoints to cover after un-parking.
    pub content_types: Vec<ContentType>,
}

/// Whose a failed call's error is ([`Parking::whose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whose {
    /// The tenant's: park it.
    Tenants(TenantFailure),
    /// The call's own (or a blob's): the caller's error handling applies.
    Calls,
    /// Cannot be told now (the check that would tell failed): try the call again later.
    Unknown,
}

/// What [`Parking::park`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parked {
    /// The tenant is parked (now, or already by another replica), for this reason.
    Parked { reason: String },
    /// It is healthy: un-parked meanwhile, so the failure is worth another try.
    Healthy,
    /// It is no longer served (offboarded, pending).
    NotServed,
    /// Redis cannot tell or keep the state now.
    Unavailable,
}

impl Parking {
    /// Whose the failure `e` of a call about `tenant`'s `content_type` is. AF10001 on
    /// `DLP.All` may be the DLP role alone: a call that needs the other role tells.
    pub async fn whose(&self, tenant: &TenantId, content_type: ContentType, e: &ApiError) -> Whose {
        let Some(failure) = e.tenant_failure() else {
            return Whose::Calls;
        };
        if failure.code != "AF10001" || content_type != ContentType::Dlp {
            return Whose::Tenants(failure);
        }
        match self.management.list_subscriptions(tenant).await {
            Ok(_) => Whose::Calls,
            Err(other) => other
                .tenant_failure()
                .map_or(Whose::Unknown, Whose::Tenants),
        }
    }

    /// Parks `tenant` for `failure` — the one way every part of the relay parks a tenant — and
    /// says what came of it.
    pub async fn park(&self, tenant: &TenantId, failure: &TenantFailure) -> Parked {
        match self
            .tenants
            .park(tenant, &failure.code, &failure.reason)
            .await
        {
            Ok(true) => {
                self.refresh_gauge().await;
                return Parked::Parked {
                    reason: failure.reason.clone(),
                };
            }
            Ok(false) => {}
            Err(_) => return Parked::Unavailable,
        }
        match self.tenants.state_now(tenant).await {
            Some(TenantState::Parked { reason, .. }) => Parked::Parked { reason },
            Some(TenantState::Healthy) => Parked::Healthy,
            _ => Parked::NotServed,
        }
    }

    /// After `tenant` stopped being parked (probe, consent): make sure a reconciliation covers
    /// the parked period, and ask for it at once, and for a sweep of the parked queue. Each step
    /// is a Redis write; one that fails is caught up by the periodic sweep and the next pass.
    pub async fn released(&self, tenant: &TenantId, since: DateTime<Utc>) {
        let checkpoints = self.store.checkpoints();
        for &ct in &self.content_types {
            if let Ok(None) = checkpoints.get(tenant, ct).await {
                let _ = checkpoints.set(tenant, ct, since, CHECKPOINT_TTL).await;
            }
        }
        let requests = self.store.parking();
        let asked = requests.request_reconcile(tenant).await;
        let swept = requests.request_sweep().await;
        if asked.is_err() || swept.is_err() {
            tracing::warn!(tenant_id = %tenant, "Cannot ask for the release of the tenant's parked blobs now (Redis); the periodic sweep and the next reconciliation catch up.");
        }
        self.refresh_gauge().await;
    }

    /// Asks for a sweep of the parked queue (e.g. a parked tenant was removed).
    pub async fn request_sweep(&self) {
        let _ = self.store.parking().request_sweep().await;
        self.refresh_gauge().await;
    }

    /// Sets `o365_tenants{state}` from Redis (left as it was when Redis cannot answer).
    pub async fn refresh_gauge(&self) {
        let (Ok(list), Ok(offboarded)) =
            (self.tenants.list().await, self.tenants.offboarded().await)
        else {
            return;
        };
        let mut counts = [0i64; TenantState::NAMES.len()];
        let states = list
            .iter()
            .map(|r| r.state.name())
            .chain(offboarded.iter().map(|(_, s)| s.name()));
        for name in states {
            if let Some(i) = TenantState::NAMES.iter().position(|n| *n == name) {
                counts[i] += 1;
            }
        }
        for (name, n) in TenantState::NAMES.iter().zip(counts) {
            self.metrics.tenants.with_label_values(&[name]).set(n);
        }
    }

    /// The parked tenants, with since when; `None` when Redis cannot answer.
    async fn parked(&self) -> Option<Vec<(TenantId, DateTime<Utc>)>> {
        self.tenants.parked().await.ok()
    }
}

/// The health loop: probes parked tenants and sweeps the parked queue, on one replica at a time
/// (a lease); every replica keeps its `o365_tenants` gauge fresh. Un-parked tenants are
/// reconciled by the reconciler, under its own lease ([`Parking::released`] asks it).
pub struct HealthLoop {
    pub parking: Arc<Parking>,
    pub tenants: Arc<Tenants>,
    pub tokens: Arc<TokenProvider>,
    pub management: Arc<ManagementClient>,
    pub work_queue: Arc<WorkQueue>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    /// `O365_PARK_PROBE_INTERVAL`.
    pub interval: Duration,
}

/// What probing a parked tenant found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It works: un-parked.
    Healthy,
    /// Still failing for the tenant's own reason.
    StillParked(TenantFailure),
    /// Something else failed (network, Microsoft's 5xx): it stays parked until the next probe.
    Inconclusive(String),
}

impl HealthLoop {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let tick = self.interval.min(TICK);
        let lease = Lease::new(
            self.store.clone(),
            "tenant-health",
            (tick * 3).clamp(Duration::from_secs(15), Duration::from_secs(60)),
        );
        let mut next_gauge = Instant::now();
        let mut next_safety_sweep = Instant::now() + SAFETY_SWEEP;
        let mut follow_up: Option<Instant> = None;
        // When this replica last probed each parked tenant (a new lease holder starts afresh:
        // at most one early probe each).
        let mut probed: HashMap<TenantId, Instant> = HashMap::new();
        loop {
            let now = Instant::now();
            if now >= next_gauge {
                self.parking.refresh_gauge().await;
                next_gauge = now + self.interval;
            }
            if lease.try_hold().await {
                self.probe_due(&mut probed).await;
                let requested = self
                    .store
                    .parking()
                    .take_sweep_request()
                    .await
                    .unwrap_or(false);
                let follow_up_due = follow_up.is_some_and(|t| now >= t);
                let safety_due = now >= next_safety_sweep;
                if requested || follow_up_due || safety_due {
                    match self.sweep().await {
                        Ok(()) => {
                            if requested {
                                follow_up = Some(Instant::now() + SETTLE);
                            } else if follow_up_due {
                                follow_up = None;
                            }
                            if safety_due {
                                next_safety_sweep = Instant::now() + SAFETY_SWEEP;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Cannot sweep the parked queue now; trying again.");
                            if requested {
                                let _ = self.store.parking().request_sweep().await;
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => { lease.release().await; return; }
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Probes the parked tenants whose turn it is ([`probe_gap`]); `probed` remembers when
    /// each was probed last.
    async fn probe_due(&self, probed: &mut HashMap<TenantId, Instant>) {
        let Some(parked) = self.parking.parked().await else {
            return;
        };
        let still: HashSet<&TenantId> = parked.iter().map(|(t, _)| t).collect();
        probed.retain(|t, _| still.contains(t));
        let now = Instant::now();
        let due: Vec<(TenantId, DateTime<Utc>)> = parked
            .into_iter()
            .filter(|(t, since)| {
                let parked_for = (Utc::now() - *since).to_std().unwrap_or_default();
                let gap = probe_gap(parked_for, self.interval);
                match probed.get(t) {
                    Some(last) => now.duration_since(*last) >= gap,
                    None => parked_for >= FIRST_PROBE.min(self.interval),
                }
            })
            .collect();
        for (t, _) in &due {
            probed.insert(t.clone(), now);
        }
        self.probe_each(due).await;
    }

    /// Probes every parked tenant once.
    pub async fn probe_all(&self) {
        let Some(parked) = self.parking.parked().await else {
            return;
        };
        self.probe_each(parked).await;
    }

    async fn probe_each(&self, parked: Vec<(TenantId, DateTime<Utc>)>) {
        if !parked.is_empty() {
            if let Ok(n) = self.work_queue.parked_depth().await {
                self.metrics.parked_queue_depth.set(i64::from(n));
            }
        }
        for (tenant, since) in parked {
            let result = self.probe(&tenant).await;
            let label = match &result {
                Probe::Healthy => "healthy",
                Probe::StillParked(_) => "parked",
                Probe::Inconclusive(_) => "error",
            };
            self.metrics.tenant_probes.with_label_values(&[label]).inc();
            match result {
                Probe::Healthy => {
                    if let Ok(true) = self.tenants.unpark(&tenant).await {
                        tracing::info!(tenant_id = %tenant, parked_since = %since, "Parked tenant works again: its waiting blobs are released and its parked period reconciled.");
                        self.parking.released(&tenant, since).await;
                    }
                }
                Probe::StillParked(f) => {
                    tracing::info!(tenant_id = %tenant, code = %f.code, reason = %f.reason, "Parked tenant still fails; its blobs keep waiting.")
                }
                Probe::Inconclusive(e) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "Could not probe the parked tenant; it stays parked until the next probe.")
                }
            }
        }
    }

    /// One probe: a fresh token (the cached one may predate the repair, or be a still-valid
    /// token of a consent since withdrawn) and `subscriptions/list`, the cheapest call that
    /// needs the tenant's consent and `ActivityFeed.Read`.
    pub async fn probe(&self, tenant: &TenantId) -> Probe {
        self.tokens.forget(tenant).await;
        match self.management.list_subscriptions(tenant).await {
            Ok(_) => Probe::Healthy,
            Err(e) => match e.tenant_failure() {
                Some(f) => Probe::StillParked(f),
                None => Probe::Inconclusive(e.to_string()),
            },
        }
    }

    /// Moves the jobs of tenants no longer parked back to the work queue.
    async fn sweep(&self) -> anyhow::Result<()> {
        let parked: HashSet<TenantId> = self
            .parking
            .parked()
            .await
            .ok_or_else(|| anyhow::anyhow!("the tenant states (Redis) are unavailable"))?
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        let stats = self.work_queue.sweep_parked(&parked).await?;
        if stats != Default::default() {
            tracing::info!(
                released = stats.released,
                kept = stats.kept,
                expired = stats.expired,
                "Swept the parked queue."
            );
        }
        if let Ok(n) = self.work_queue.parked_depth().await {
            self.metrics.parked_queue_depth.set(i64::from(n));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_tenant_is_probed_soon_then_less_often_up_to_the_interval() {
        let interval = Duration::from_secs(300);
        let s = Duration::from_secs;
        assert_eq!(probe_gap(s(0), interval), FIRST_PROBE);
        assert_eq!(probe_gap(s(20), interval), s(20));
        assert_eq!(probe_gap(s(60), interval), s(60));
        assert_eq!(probe_gap(s(240), interval), s(240));
        assert_eq!(probe_gap(s(3600), interval), interval);
        // An interval shorter than the first probe wins (tests and impatient operators).
        assert_eq!(probe_gap(s(0), s(1)), s(1));
        // Probes in the first quarter hour: at 15, 30, 60, 120 and 240 s, then every 5 min.
        let (mut t, mut probes) = (FIRST_PROBE, vec![FIRST_PROBE.as_secs()]);
        while t < s(600) {
            t += probe_gap(t, interval);
            probes.push(t.as_secs());
        }
        assert_eq!(probes, [15, 30, 60, 120, 240, 480, 780]);
        assert_eq!(probe_gap(s(480), interval), interval);
    }
}
