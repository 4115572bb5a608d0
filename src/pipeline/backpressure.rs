//! Backpressure from consumers: a consumer queue that is full pauses the relay instead of
//! failing blobs.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/backpressure".

use crate::domain::ContentId;
use crate::ops::metrics::Metrics;
pub use crate::store::replicas::DownstreamPause;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The deferral reason (a metric label) and the dead-letter code of a blob whose content expired
/// while a consumer queue refused its records.
pub const DOWNSTREAM_FULL: &str = "downstream_full";
/// The first interval between probes of a paused routing key; it doubles up to the maximum.
pub const FIRST_PROBE: Duration = Duration::from_secs(1);
/// Blobs remembered as waiting per routing key (a count for the status, not a queue).
const MAX_WAITING: usize = 100_000;

/// A routing key refused by the broker.
struct Pause {
    since: DateTime<Utc>,
    interval: Duration,
    next_probe: Instant,
    probing: bool,
    waiting: HashSet<ContentId>,
}

/// What a job may do with its routing key now.
pub enum Gate<'a> {
    /// Publish as usual.
    Open,
    /// The key is paused and this job probes it: publish one record first, then report
    /// through the guard.
    Probe(ProbeGuard<'a>),
    /// The key is paused: come back after this long.
    Wait(Duration),
}

/// Paused routing keys of the audit exchange, see docs/DESIGN.md, "pipeline/backpressure".
pub struct Backpressure {
    exchange: String,
    probe_max: Duration,
    paused: Mutex<HashMap<String, Pause>>,
    metrics: Arc<Metrics>,
}

impl Backpressure {
    pub fn new(exchange: &str, probe_max: Duration, metrics: Arc<Metrics>) -> Backpressure {
        Backpressure {
            exchange: exchange.to_string(),
            probe_max: probe_max.max(FIRST_PROBE),
            paused: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Whether a job for `key` (blob `blob`) may publish, probe, or must wait.
    pub fn gate(&self, key: &str, blob: &ContentId) -> Gate<'_> {
        let now = Instant::now();
        let mut paused = self.paused.lock().expect("poisoned");
        let Some(p) = paused.get_mut(key) else {
            return Gate::Open;
        };
        if !p.probing && now >= p.next_probe {
            p.probing = true;
            return Gate::Probe(ProbeGuard {
                bp: self,
                key: key.to_string(),
                settled: false,
            });
        }
        self.note_waiting(p, blob);
        let wait = if p.probing {
            p.interval
        } else {
            p.next_probe - now
        };
        Gate::Wait(spread(wait))
    }

    /// A publish for `key` (not a probe) was refused: the key is paused (if it was not) and
    /// the blob waits. Returns how long.
    pub fn refused(&self, key: &str, blob: &ContentId) -> Duration {
        self.metrics.downstream_refusals.inc();
        let now = Instant::now();
        let wait = {
            let mut paused = self.paused.lock().expect("poisoned");
            let before = paused.len();
            let p = paused.entry(key.to_string()).or_insert_with(|| {
                tracing::warn!(exchange = %self.exchange, routing_key = key, "A consumer queue refused records (full?): pausing the routing key until a probe is accepted.");
                Pause {
                    since: Utc::now(),
                    interval: FIRST_PROBE,
                    next_probe: now + FIRST_PROBE,
                    probing: false,
                    waiting: HashSet::new(),
                }
            });
            self.note_waiting(p, blob);
            let wait = p.next_probe.saturating_duration_since(now).max(FIRST_PROBE);
            if paused.len() != before {
                self.keys_changed(&paused);
            }
            wait
        };
        spread(wait)
    }

    /// Paused routing keys now.
    pub fn paused_keys(&self) -> usize {
        self.paused.lock().expect("poisoned").len()
    }

    /// This process's paused keys in one line's worth, or `None` when everything flows.
    pub fn summary(&self) -> Option<DownstreamPause> {
        let paused = self.paused.lock().expect("poisoned");
        let (key, oldest) = paused.iter().min_by_key(|(_, p)| p.since)?;
        Some(DownstreamPause {
            exchange: self.exchange.clone(),
            since: oldest.since,
            routing_keys: paused.len(),
            example_key: key.clone(),
            waiting_blobs: paused.values().map(|p| p.waiting.len()).sum(),
        })
    }

    fn settle_probe(&self, key: &str, accepted: bool) -> Duration {
        self.metrics
            .downstream_probes
            .with_label_values(&[if accepted { "accepted" } else { "refused" }])
            .inc();
        let wait = {
            let mut paused = self.paused.lock().expect("poisoned");
            if accepted {
                if let Some(p) = paused.remove(key) {
                    self.metrics
                        .downstream_waiting_blobs
                        .sub(p.waiting.len() as i64);
                    self.keys_changed(&paused);
                    let secs = (Utc::now() - p.since).num_milliseconds() as f64 / 1000.0;
                    tracing::info!(exchange = %self.exchange, routing_key = key, paused_s = secs, waiting_blobs = p.waiting.len(), "A probe was accepted: the routing key flows again.");
                }
                Duration::ZERO
            } else if let Some(p) = paused.get_mut(key) {
                p.probing = false;
                p.interval = (p.interval * 2).min(self.probe_max);
                p.next_probe = Instant::now() + p.interval;
                p.interval
            } else {
                FIRST_PROBE
            }
        };
        spread(wait)
    }

    /// `blob` waits on `p` (counted once, up to [`MAX_WAITING`] a key).
    fn note_waiting(&self, p: &mut Pause, blob: &ContentId) {
        if p.waiting.len() < MAX_WAITING && p.waiting.insert(blob.clone()) {
            self.metrics.downstream_waiting_blobs.inc();
        }
    }

    /// A key was paused or released: the gauges that depend on the set of keys. Deferrals of
    /// a paused key change only the waiting count ([`Self::note_waiting`]), so a flood of them
    /// costs nothing here.
    fn keys_changed(&self, paused: &HashMap<String, Pause>) {
        self.metrics.downstream_paused_keys.set(paused.len() as i64);
        let oldest = paused.values().map(|p| p.since).min();
        self.metrics
            .downstream_paused_since
            .set(oldest.map_or(0, |t| t.timestamp()));
    }
}

/// A probe in progress: settle it with [`ProbeGuard::accepted`] or [`ProbeGuard::refused`];
/// dropped unsettled (the blob was already relayed, the fetch failed), the next job probes.
pub struct ProbeGuard<'a> {
    bp: &'a Backpressure,
    key: String,
    settled: bool,
}

impl ProbeGuard<'_> {
    /// The probe's record was confirmed: the key flows again.
    pub fn accepted(mut self) {
        self.settled = true;
        self.bp.settle_probe(&self.key, true);
    }

    /// The probe's record was refused too: returns how long the job waits.
    pub fn refused(mut self) -> Duration {
        self.settled = true;
        self.bp.settle_probe(&self.key, false)
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(p) = self.bp.paused.lock().expect("poisoned").get_mut(&self.key) {
                p.probing = false;
            }
        }
    }
}

/// `d` plus up to a tenth more, so that the jobs waiting for one key do not all come back in
/// the same millisecond.
fn spread(d: Duration) -> Duration {
    let jitter = d.mul_f64(rand::random::<f64>() * 0.1);
    d.saturating_add(jitter).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp() -> Backpressure {
        Backpressure::new("audit", Duration::from_secs(4), Arc::new(Metrics::new()))
    }

    fn blob(n: u32) -> ContentId {
        ContentId::parse(&format!("blob{n}")).expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_key_waits_then_one_job_probes_and_an_accepted_probe_resumes_it() {
        let bp = bp();
        assert!(matches!(bp.gate("Audit.General.t", &blob(1)), Gate::Open));
        let wait = bp.refused("Audit.General.t", &blob(1));
        assert!(
            wait >= FIRST_PROBE && wait <= FIRST_PROBE.mul_f64(1.1),
            "{wait:?}"
        );
        // Other keys flow.
        assert!(matches!(bp.gate("Audit.General.u", &blob(2)), Gate::Open));
        assert!(matches!(
            bp.gate("Audit.General.t", &blob(3)),
            Gate::Wait(_)
        ));
        let s = bp.summary().expect("paused");
        assert_eq!((s.routing_keys, s.waiting_blobs), (1, 2));
        assert_eq!(s.example_key, "Audit.General.t");
        // The gauges follow, kept as the events happen; a blob deferred twice counts once.
        assert!(matches!(
            bp.gate("Audit.General.t", &blob(3)),
            Gate::Wait(_)
        ));
        let gauges = |bp: &Backpressure| {
            (
                bp.metrics.downstream_paused_keys.get(),
                bp.metrics.downstream_waiting_blobs.get(),
                bp.metrics.downstream_paused_since.get() == s.since.timestamp(),
            )
        };
        assert_eq!(gauges(&bp), (1, 2, true));
        tokio::time::advance(FIRST_PROBE).await;
        let Gate::Probe(probe) = bp.gate("Audit.General.t", &blob(3)) else {
            panic!("the first job after the interval probes");
        };
        // One probe at a time.
        assert!(matches!(
            bp.gate("Audit.General.t", &blob(4)),
            Gate::Wait(_)
        ));
        probe.accepted();
        assert!(bp.summary().is_none());
        assert_eq!(
            (
                bp.metrics.downstream_paused_keys.get(),
                bp.metrics.downstream_waiting_blobs.get(),
                bp.metrics.downstream_paused_since.get()
            ),
            (0, 0, 0)
        );
        assert!(matches!(bp.gate("Audit.General.t", &blob(4)), Gate::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_probes_double_the_interval_up_to_the_maximum() {
        let bp = bp();
        bp.refused("k", &blob(1));
        let mut waits = Vec::new();
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(5)).await;
            let Gate::Probe(p) = bp.gate("k", &blob(1)) else {
                panic!("due");
            };
            waits.push(p.refused().as_secs());
        }
        assert_eq!(waits, vec![2, 4, 4, 4]);
        assert_eq!(bp.paused_keys(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unsettled_lets_the_next_job_probe() {
        let bp = bp();
        bp.refused("k", &blob(1));
        tokio::time::advance(FIRST_PROBE).await;
        let Gate::Probe(p) = bp.gate("k", &blob(1)) else {
            panic!("due");
        };
        drop(p);
        assert!(matches!(bp.gate("k", &blob(2)), Gate::Probe(_)));
    }
}
