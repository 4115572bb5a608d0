//! Parked jobs: the jobs of a parked tenant ([`crate::tenancy::health`], which says why one shared
//! queue rather than one per tenant) wait in `{work}.parked` without counting an attempt, with
//! a TTL that runs out when their content expires at Microsoft (the queue then dead-letters
//! them, already carrying the dead-letter headers); a sweep moves them back when their tenant
//! works again.

use super::message::forwarded_properties;
use super::settle::{ack, requeue};
use super::{Job, WorkQueue};
use crate::broker::{
    argument, header_str, json_properties, short_string, BasicProperties, BrokerError, Delivery,
    Fate, Message, OutMessage, QueueSpec, Tally,
};
use crate::domain::TenantId;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Parked jobs (see [`crate::tenancy::health`] for why one shared queue rather than one per tenant).
impl WorkQueue {
    /// Sets a job of a parked tenant aside in `{work}.parked`: the same message, its attempt
    /// count unchanged, with a per-message TTL that runs out when the content expires at
    /// Microsoft; the queue dead-letters it into `{work}.dead` then, and the copy already
    /// carries the dead-letter headers (code `expired`). Acked only after RabbitMQ confirmed
    /// the copy; handed back to RabbitMQ when it cannot be set aside.
    pub(super) async fn park(&self, d: &Delivery, job: &Job, reason: &str) {
        let why = format!("content expired at Microsoft while the tenant was parked: {reason}");
        let Some(ttl) = parked_ttl(job.item.content_expiration.as_deref(), chrono::Utc::now())
        else {
            self.metrics
                .parked_jobs
                .with_label_values(&["expired"])
                .inc();
            return self
                .dead_letter(d, Some(job), job.attempt, "expired", &why)
                .await;
        };
        let props = parked_properties(d, job, reason, &why, ttl);
        let published = match self.declare_parked().await {
            Ok(()) => {
                let msg = OutMessage {
                    exchange: "".into(),
                    routing_key: short_string(&self.names.parked),
                    body: d.body.clone(),
                    properties: props,
                };
                self.broker.publish_batch(vec![msg]).await
            }
            Err(e) => Err(e),
        };
        match published {
            Ok(()) => {
                self.mark_job_in_flight(job, ttl);
                self.metrics
                    .parked_jobs
                    .with_label_values(&["parked"])
                    .inc();
                tracing::info!(
                    content_id = %job.item.content_id,
                    ttl_s = ttl.as_secs(),
                    "Blob set aside until its tenant works again."
                );
                ack(d).await;
            }
            Err(e) => {
                // Declared again next time (someone may have deleted the queue).
                self.parked_declared.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "Cannot set the blob of a parked tenant aside; handing it back to RabbitMQ.");
                requeue(d).await;
            }
        }
    }

    /// Declares `{work}.parked` once per process (see [`WorkQueue::parked_spec`]).
    async fn declare_parked(&self) -> Result<(), BrokerError> {
        if self.parked_declared.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.parked_depth().await.map(|_| ())
    }

    /// `{work}.parked`, declared when absent (a passive look-up of a missing queue would close
    /// the channel with an error in the log): durable, the work queue's own arguments (its
    /// type), dead-lettering into `{work}.dead` when a message's TTL runs out.
    fn parked_spec(&self) -> QueueSpec {
        let mut arguments = self
            .broker
            .topology()
            .queues
            .iter()
            .find(|q| q.name == self.names.work)
            .map(|q| q.arguments.clone())
            .unwrap_or_default();
        argument(&mut arguments, "x-dead-letter-exchange", "");
        argument(
            &mut arguments,
            "x-dead-letter-routing-key",
            &self.names.dead,
        );
        QueueSpec {
            name: self.names.parked.clone(),
            arguments,
        }
    }

    /// Messages waiting in `{work}.parked` (declaring it when absent).
    pub async fn parked_depth(&self) -> Result<u32, BrokerError> {
        let depth = self.broker.declare_queue(&self.parked_spec()).await?;
        self.parked_declared.store(true, Ordering::SeqCst);
        Ok(depth)
    }

    /// Moves the jobs of tenants no longer parked from `{work}.parked` back to the work queue
    /// (attempt count kept, no TTL), and sets the others aside again with what is left of their
    /// TTL (dead-lettering those whose content expired meanwhile). A rotation of the parked
    /// queue ([`Broker::rotate`](crate::broker::Broker::rotate)): each message that was in the
    /// queue when it started is looked at once, in batches, each republished with confirms
    /// before it is acked, so a failure leaves the messages in the parked queue (or, after a
    /// confirm that was lost, in both: a duplicate the workers skip), never nowhere.
    pub async fn sweep_parked(
        &self,
        still_parked: &HashSet<TenantId>,
    ) -> Result<SweepStats, BrokerError> {
        let total = self.parked_depth().await?;
        self.metrics.parked_queue_depth.set(i64::from(total));
        let mut stats = SweepStats::default();
        let result = self
            .broker
            .rotate(&self.names.parked, SWEEP_BATCH, &mut stats, |m, counts| {
                Fate::Publish(Box::new(self.swept(
                    m,
                    still_parked,
                    chrono::Utc::now(),
                    counts,
                )))
            })
            .await;
        self.metrics
            .parked_jobs
            .with_label_values(&["released"])
            .inc_by(stats.released);
        self.metrics
            .parked_jobs
            .with_label_values(&["expired"])
            .inc_by(stats.expired);
        if stats.expired > 0 {
            self.metrics
                .blobs
                .with_label_values(&["dead"])
                .inc_by(stats.expired);
            self.metrics
                .dead_letters
                .with_label_values(&["AF20051"])
                .inc_by(stats.expired);
        }
        result.map(|_| stats)
    }

    /// Where one parked message goes in a sweep, and the copy that goes there.
    fn swept(
        &self,
        d: &Message,
        still_parked: &HashSet<TenantId>,
        now: chrono::DateTime<chrono::Utc>,
        counts: &mut SweepStats,
    ) -> OutMessage {
        let to = |queue: &str, properties: BasicProperties| OutMessage {
            exchange: "".into(),
            routing_key: short_string(queue),
            body: d.body.clone(),
            properties,
        };
        let Ok(job) = self.decode(d) else {
            // Only the relay writes here; should one be unreadable, the worker dead-letters it
            // with the reason.
            counts.released += 1;
            let id = d.message_id().unwrap_or_default();
            return to(&self.names.work, json_properties(&id));
        };
        if !still_parked.contains(&job.item.tenant_id) {
            counts.released += 1;
            let props = forwarded_properties(d, Some(&job), job.attempt, &[]);
            return to(&self.names.work, props);
        }
        let reason = header_str(&d.properties, PARKED_REASON_HEADER).unwrap_or_default();
        let why = header_str(&d.properties, "o365-dead-reason").unwrap_or_else(|| {
            format!("content expired at Microsoft while the tenant was parked: {reason}")
        });
        match parked_ttl(job.item.content_expiration.as_deref(), now) {
            Some(ttl) => {
                counts.kept += 1;
                to(
                    &self.names.parked,
                    parked_properties(d, &job, &reason, &why, ttl),
                )
            }
            None => {
                counts.expired += 1;
                let at = now.to_rfc3339();
                let props = forwarded_properties(
                    d,
                    Some(&job),
                    job.attempt,
                    &[
                        ("o365-dead-reason", &why),
                        ("o365-error-code", "expired"),
                        ("o365-dead-at", &at),
                    ],
                );
                to(&self.names.dead, props)
            }
        }
    }
}

/// Messages taken from the parked queue per confirm round of a sweep.
const SWEEP_BATCH: usize = 200;
/// Why the tenant of a parked copy was parked.
const PARKED_REASON_HEADER: &str = "o365-parked-reason";
/// A parked copy outlives its content's expiration by this much, so that RabbitMQ (whose
/// expiry is to the millisecond) never dead-letters it before Microsoft stops serving it.
const PARKED_TTL_MARGIN: Duration = Duration::from_secs(1);
/// No content lives longer than Microsoft's 7 days: a later `contentExpiration` (it comes from
/// outside) is capped, so a parked copy never waits longer than that.
const PARKED_TTL_MAX: Duration = Duration::from_secs(7 * 86_400);

/// How long a parked copy waits before it is dead-lettered: until `contentExpiration` (plus
/// [`PARKED_TTL_MARGIN`]), at most [`PARKED_TTL_MAX`]; unknown expiration: the maximum.
/// `None` when the content has already expired.
pub fn parked_ttl(
    content_expiration: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let Some(exp) = content_expiration.and_then(crate::domain::parse_ms_time) else {
        return Some(PARKED_TTL_MAX);
    };
    let left = (exp - now).to_std().ok().filter(|d| !d.is_zero())?;
    Some((left + PARKED_TTL_MARGIN).min(PARKED_TTL_MAX))
}

/// The properties of a parked copy: its attempt count unchanged, why its tenant is parked, the
/// dead-letter headers it keeps should it expire there, and its TTL.
fn parked_properties(
    d: &Message,
    job: &Job,
    reason: &str,
    why: &str,
    ttl: Duration,
) -> BasicProperties {
    forwarded_properties(
        d,
        Some(job),
        job.attempt,
        &[
            ("o365-error-code", "expired"),
            ("o365-dead-reason", why),
            (PARKED_REASON_HEADER, reason),
        ],
    )
    .with_expiration(ttl.as_millis().max(1).to_string().into())
}

/// What a sweep of the parked queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepStats {
    /// Back to the work queue (their tenant is no longer parked).
    pub released: u64,
    /// Set aside again (their tenant is still parked).
    pub kept: u64,
    /// Dead-lettered: the content expired while the tenant was parked.
    pub expired: u64,
}

impl Tally for SweepStats {
    fn add(&mut self, batch: SweepStats) {
        self.released += batch.released;
        self.kept += batch.kept;
        self.expired += batch.expired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_copy_expires_just_after_its_content_and_never_later_than_seven_days() {
        let now = chrono::Utc::now();
        let at = |d: chrono::Duration| (now + d).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let in_an_hour = parked_ttl(Some(&at(chrono::Duration::hours(1))), now).unwrap();
        assert!(in_an_hour > Duration::from_secs(3600));
        assert!(in_an_hour <= Duration::from_secs(3601));
        assert_eq!(
            parked_ttl(Some(&at(chrono::Duration::seconds(-5))), now),
            None
        );
        assert_eq!(
            parked_ttl(Some(&at(chrono::Duration::days(400))), now),
            Some(PARKED_TTL_MAX)
        );
        assert_eq!(parked_ttl(None, now), Some(PARKED_TTL_MAX));
        assert_eq!(parked_ttl(Some("not a time"), now), Some(PARKED_TTL_MAX));
    }
}
