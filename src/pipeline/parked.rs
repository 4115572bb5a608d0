//! The parked tenants' loop: probes each parked tenant soon after parking and then less often
//! ([`probe_gap`]), un-parks it when its consent works again, and sweeps its jobs from the
//! parked queue back to the work queue — on one replica at a time (a lease). docs/DESIGN.md,
//! "Parked tenants", has the reasoning.

use crate::domain::TenantId;
use crate::microsoft::management::{ManagementClient, TenantFailure};
use crate::microsoft::tokens::TokenProvider;
use crate::ops::metrics::Metrics;
use crate::pipeline::work_queue::WorkQueue;
use crate::store::{Lease, Store};
use crate::tenancy::parking::Parking;
use crate::tenancy::tenants::Tenants;
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
