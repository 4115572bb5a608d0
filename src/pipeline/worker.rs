//! Content workers: each job is one blob — admitted by the [`Scheduler`] (or deferred to its
//! tenant's turn), fetch it with the tenant's token (through
//! [`crate::microsoft::management`]), split it into records as the bytes Microsoft sent
//! ([`crate::pipeline::records`]), de-duplicate, publish through the [`RecordSink`], mark the blob relayed.
//! The [`WorkQueue`] settles the job from the [`Outcome`] returned here.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/worker".

use crate::broker::BrokerError;
use crate::domain::{parse_ms_time, Source, WorkItem};
use crate::microsoft::management::{ApiError, Disposition, ManagementClient};
use crate::ops::metrics::Metrics;
use crate::pipeline::backpressure::{Backpressure, Gate, ProbeGuard, DOWNSTREAM_FULL};
use crate::pipeline::records::{ArraySplitter, AuditRecord, RecordsError};
use crate::pipeline::scheduling::{Dispatch, Scheduler};
use crate::pipeline::sink::{Publication, RecordSink};
use crate::pipeline::work_queue::{Job, Outcome, WorkQueue};
use crate::store::dedup::{ClaimPolicy, PublishOnceError, RecordKey};
use crate::store::Store;
use crate::tenancy::parking::{Parked, Parking, Whose};
use crate::tenancy::subscriptions::Subscriptions;
use crate::tenancy::tenants::{TenantState, Tenants};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Records published per confirm round (and per Redis de-duplication round trip).
pub const BATCH: usize = 500;
/// A relayed blob's marker outlives the blob by a day (Microsoft serves content for 7 days).
const MARKER_GRACE: Duration = Duration::from_secs(86_400);
/// A relayed blob's marker lives at most this long, whatever `contentExpiration` says (as the
/// dead-letter marker): content can be retrieved for 7 days after it became available (Office
/// 365 Management Activity API FAQs and troubleshooting), so a marker need not outlive that by
/// more than the grace.
const RELAYED_MARKER_MAX: Duration = Duration::from_secs(8 * 86_400);
/// How long a record claim survives an owner that died mid-publish: the redelivered blob waits
/// this long for the dead owner's claims. A live owner finishes a batch well within it (its
/// confirms time out sooner); were it slower, the claim would lapse and the record could be
/// published twice — never lost.
const CLAIM_TTL: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("content body: {0}")]
    Records(#[from] RecordsError),
    #[error("{count} of {total} records are not JSON text and were not relayed (first: {first})")]
    MalformedRecords {
        count: u64,
        total: u64,
        first: RecordsError,
    },
    #[error("the blob did not arrive whole within {0:?} (O365_FETCH_TIMEOUT)")]
    Deadline(Duration),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("{0}")]
    Busy(String),
    /// A consumer queue refused the records (full): wait, see [`crate::pipeline::backpressure`].
    #[error("a consumer queue refused the records (full?); waiting {0:?} before the next probe")]
    Refused(Duration),
}

impl RelayError {
    pub fn code(&self) -> String {
        match self {
            RelayError::Api(e) => e.code().to_string(),
            RelayError::Records(RecordsError::Truncated) => "truncated".into(),
            RelayError::Records(_) => "malformed_content".into(),
            RelayError::MalformedRecords { .. } => "malformed_record".into(),
            RelayError::Deadline(_) => "deadline".into(),
            RelayError::Broker(BrokerError::Unroutable(_)) => "unroutable".into(),
            RelayError::Broker(BrokerError::Nacked(_)) | RelayError::Refused(_) => {
                DOWNSTREAM_FULL.into()
            }
            RelayError::Broker(_) => "broker".into(),
            RelayError::Busy(_) => "busy".into(),
        }
    }

    /// What the caller should do about the error.
    pub fn disposition(&self) -> Disposition {
        match self {
            RelayError::Api(e) => e.disposition(),
            RelayError::Records(RecordsError::TooLarge(_)) => Disposition::GiveUp,
            RelayError::MalformedRecords { .. } => Disposition::GiveUp,
            RelayError::Records(_) | RelayError::Deadline(_) => Disposition::Retry(None),
            RelayError::Broker(_) | RelayError::Busy(_) => Disposition::Retry(None),
            RelayError::Refused(wait) => Disposition::Retry(Some(*wait)),
        }
    }
}

/// What relaying one blob achieved.
#[derive(Debug, Default, Clone, Copy)]
pub struct BlobStats {
    pub records: u64,
    pub published: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

/// Fetches blobs and relays their records.
pub struct Worker {
    pub management: Arc<ManagementClient>,
    pub sink: Arc<RecordSink>,
    pub store: Arc<Store>,
    pub tenants: Arc<Tenants>,
    pub subscriptions: Arc<Subscriptions>,
    /// Parks the tenant when a fetch fails for the tenant's own reason ([`crate::tenancy::health`]).
    pub parking: Arc<Parking>,
    pub metrics: Arc<Metrics>,
    /// Which jobs may fetch now (tenant budget and share of the workers).
    pub scheduler: Arc<Scheduler>,
    /// `O365_RECORD_DEDUP_TTL` (zero: no record de-duplication).
    pub record_dedup_ttl: Duration,
    /// `O365_FETCH_TIMEOUT`: a blob's whole fetch, from request to last byte.
    pub fetch_timeout: Duration,
    /// Routing keys paused by a full consumer queue.
    pub backpressure: Arc<Backpressure>,
}

impl Worker {
    /// Consumes `queue` until `shutdown`, consuming again after any broker failure.
    pub async fn run(
        self: Arc<Self>,
        queue: Arc<WorkQueue>,
        concurrency: usize,
        shutdown: CancellationToken,
        drain_budget: Duration,
    ) {
        const FIRST_DELAY: Duration = Duration::from_millis(200);
        let mut delay = FIRST_DELAY;
        while !shutdown.is_cancelled() {
            let consuming_since = Instant::now();
            let worker = self.clone();
            let handler = move |job: Job| {
                let worker = worker.clone();
                async move { worker.handle(job).await }
            };
            match queue
                .consume(concurrency, &shutdown, drain_budget, handler)
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    // A consumer that ran a while ended by a new failure (its node died, say),
                    // not by the last one's again: back off from the start, so a long-lived
                    // replica resumes on another node as fast as a fresh one.
                    if consuming_since.elapsed() > Duration::from_secs(30) {
                        delay = FIRST_DELAY;
                    }
                    tracing::warn!(error = %e, "Work queue consumer stopped; consuming again.");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One job: the blob's outcome.
    pub async fn handle(&self, job: Job) -> Outcome {
        let item = job.item;
        let span = tracing::info_span!("blob", otel.name = "blob.fetch", tenant_id = %item.tenant_id, content_type = %item.content_type, content_id = %item.content_id);
        crate::ops::trace_context::continue_trace(&span, &job.trace);
        self.process(item, job.not_before).instrument(span).await
    }

    async fn process(
        &self,
        item: WorkItem,
        turn: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Outcome {
        let state = match self.tenants.state(&item.tenant_id).await {
            // A fresh look before setting the job aside: the tenant may just have been un-parked.
            Some(TenantState::Parked { .. }) => self.tenants.state_now(&item.tenant_id).await,
            other => other,
        };
        match state {
            // Not fetched: no token request, no worker slot held while the tenant is broken.
            Some(TenantState::Parked { reason, .. }) => return Outcome::park(reason),
            Some(s) if s.accepts_notifications() => {}
            _ => return Outcome::dead("tenant_not_served", "tenant is no longer served"),
        }
        if let Ok(true) = self
            .store
            .dedup()
            .is_relayed(&item.tenant_id, &item.content_id)
            .await
        {
            tracing::debug!("Blob already relayed; skipping.");
            self.metrics.blobs.with_label_values(&["duplicate"]).inc();
            return Outcome::Done;
        }
        // A consumer queue refuses this key's records: wait without fetching (no attempt, no
        // call to Microsoft), unless this job is the key's probe.
        let probe = match self
            .backpressure
            .gate(&RecordSink::routing_key(&item), &item.content_id)
        {
            Gate::Open => None,
            Gate::Probe(guard) => Some(guard),
            Gate::Wait(delay) => {
                return Outcome::Defer {
                    delay,
                    reason: DOWNSTREAM_FULL,
                }
            }
        };
        // Held until the blob is relayed or failed: its place in the tenant's share.
        let _permit = match self.scheduler.admit(&item.tenant_id, turn).await {
            Dispatch::Run(permit) => permit,
            Dispatch::Defer { delay, reason } => return Outcome::Defer { delay, reason },
        };
        let started = Instant::now();
        match self.stream_blob(&item, Publication::Live, probe).await {
            Ok(stats) => {
                let ttl = relayed_marker_ttl(item.expires_in());
                let _ = self
                    .store
                    .dedup()
                    .mark_relayed(&item.tenant_id, &item.content_id, ttl)
                    .await;
                self.metrics.blobs.with_label_values(&["relayed"]).inc();
                let recovered = item.source == Source::Reconcile;
                let _ = self
                    .store
                    .activity()
                    .relayed(
                        &item.tenant_id,
                        item.content_type,
                        stats.published,
                        recovered,
                    )
                    .await;
                self.metrics
                    .fetch_duration
                    .with_label_values(&[item.content_type.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                if let Some(created) = item.content_created.as_deref().and_then(parse_ms_time) {
                    self.metrics.relay_lag.observe(
                        (chrono::Utc::now() - created).num_milliseconds().max(0) as f64 / 1000.0,
                    );
                }
                tracing::info!(
                    records = stats.records,
                    published = stats.published,
                    duplicates = stats.duplicates,
                    "Blob relayed."
                );
                Outcome::Done
            }
            Err(e) => self.failed(&item, e).await,
        }
    }

    /// A failed blob's outcome: its tenant parked when the failure is the tenant's, else
    /// retried or dead-lettered by Microsoft's error code.
    async fn failed(&self, item: &WorkItem, e: RelayError) -> Outcome {
        if let RelayError::Refused(delay) = e {
            return Outcome::Defer {
                delay,
                reason: DOWNSTREAM_FULL,
            };
        }
        if let RelayError::Api(api) = &e {
            match self
                .parking
                .whose(&item.tenant_id, item.content_type, api)
                .await
            {
                Whose::Calls => {}
                Whose::Unknown => return Outcome::retry(None, e.code(), &e),
                Whose::Tenants(failure) => {
                    return match self.parking.park(&item.tenant_id, &failure).await {
                        // The job waits in the parked queue without counting an attempt.
                        Parked::Parked { reason } => Outcome::park(reason),
                        // Un-parked meanwhile, or Redis cannot keep the state: as before parking.
                        Parked::Healthy | Parked::Unavailable => {
                            Outcome::retry(None, &failure.code, &failure.reason)
                        }
                        Parked::NotServed => {
                            Outcome::dead("tenant_not_served", "tenant is no longer served")
                        }
                    };
                }
            }
        }
        match e.disposition() {
            Disposition::GiveUp => Outcome::dead(e.code(), e.to_string()),
            Disposition::StartSubscription => {
                self.subscriptions
                    .ensure_started(&item.tenant_id, item.content_type)
                    .await;
                Outcome::retry(None, e.code(), &e)
            }
            Disposition::Retry(after) => Outcome::retry(after, e.code(), &e),
        }
    }

    /// Fetches the blob and publishes its records, streaming: at most one batch of records is
    /// held. The fetch was admitted by the [`Scheduler`]: it is already counted in the tenant's
    /// budget. The whole fetch is bounded by `O365_FETCH_TIMEOUT`; publishing is not cut short
    /// (a batch in flight finishes and is recorded).
    pub async fn relay_blob(&self, item: &WorkItem) -> Result<BlobStats, RelayError> {
        self.stream_blob(item, Publication::Live, None).await
    }

    /// Fetches the blob and publishes every record again as a replay (`o365-replay: true`),
    /// ignoring the de-duplication markers and writing none (`o365-relay replay`).
    pub async fn replay_blob(
        &self,
        item: &WorkItem,
        routing_prefix: Option<&str>,
    ) -> Result<BlobStats, RelayError> {
        self.stream_blob(item, Publication::Replay { routing_prefix }, None)
            .await
    }

    async fn stream_blob(
        &self,
        item: &WorkItem,
        publication: Publication<'_>,
        probe: Option<ProbeGuard<'_>>,
    ) -> Result<BlobStats, RelayError> {
        let deadline = tokio::time::Instant::now() + self.fetch_timeout;
        let late = || RelayError::Deadline(self.fetch_timeout);
        let resp = tokio::time::timeout_at(
            deadline,
            self.management
                .fetch_admitted_content(&item.tenant_id, &item.content_uri),
        )
        .await
        .map_err(|_| late())??;
        let mut body = resp.bytes_stream();
        let mut splitter = ArraySplitter::new();
        let mut raw = Vec::new();
        let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH);
        let mut run = Run {
            seen: HashSet::new(),
            stats: BlobStats::default(),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            probe,
        };
        let mut first_malformed = None;
        let mut index = 0;
        while let Some(chunk) = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| late())?
        {
            let chunk = chunk.map_err(|e| ApiError::transport("reading content", e))?;
            splitter.feed(&chunk, &mut raw)?;
            for r in raw.drain(..) {
                match AuditRecord::parse(r, index) {
                    Ok(record) => batch.push(record),
                    Err(e) => {
                        run.stats.malformed += 1;
                        first_malformed.get_or_insert(e);
                    }
                }
                index += 1;
                if batch.len() >= BATCH {
                    self.publish_batch(item, publication, &mut batch, &mut run)
                        .await?;
                }
            }
        }
        splitter.finish()?;
        self.publish_batch(item, publication, &mut batch, &mut run)
            .await?;
        if let Some(first) = first_malformed {
            self.metrics.records_malformed.inc_by(run.stats.malformed);
            return Err(RelayError::MalformedRecords {
                count: run.stats.malformed,
                total: index as u64,
                first,
            });
        }
        Ok(run.stats)
    }

    async fn publish_batch(
        &self,
        item: &WorkItem,
        publication: Publication<'_>,
        batch: &mut Vec<AuditRecord>,
        run: &mut Run<'_>,
    ) -> Result<(), RelayError> {
        match publication {
            Publication::Live => self.publish_records(item, batch, run).await,
            Publication::Replay { .. } => {
                // Within the blob, a record Microsoft repeated goes out once; nothing else is
                // de-duplicated (the point of a replay).
                run.stats.records += batch.len() as u64;
                let todo: Vec<&AuditRecord> = batch
                    .iter()
                    .filter(|r| run.seen.insert(r.id.clone()))
                    .collect();
                run.stats.duplicates += (batch.len() - todo.len()) as u64;
                self.sink.publish_as(item, &todo, publication).await?;
                run.stats.published += todo.len() as u64;
                batch.clear();
                Ok(())
            }
        }
    }

    /// Publishes a batch, each record once: duplicates within the blob are skipped here; across
    /// blobs and workers [`crate::store::dedup::Dedup::publish_once`] claims each record in
    /// Redis before it is published and marks it done after its confirm, so two workers never
    /// both publish it. A record another worker is publishing right now is waited for. Without
    /// Redis everything is published (consumers de-duplicate on `message_id`).
    async fn publish_records(
        &self,
        item: &WorkItem,
        batch: &mut Vec<AuditRecord>,
        run: &mut Run<'_>,
    ) -> Result<(), RelayError> {
        if batch.is_empty() {
            return Ok(());
        }
        let Run {
            seen: seen_here,
            stats,
            owner,
            probe,
        } = run;
        let owner = owner.as_str();
        stats.records += batch.len() as u64;
        let mut duplicates = 0u64;
        let mut todo: Vec<&AuditRecord> = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            if seen_here.insert(r.id.clone()) {
                todo.push(r);
            } else {
                duplicates += 1;
            }
        }
        // A probe publishes one record first: accepted, the key flows and the rest follows;
        // refused, the job waits (the one record is the probe's whole cost). A record that
        // turns out to be a duplicate proves nothing: the next one probes.
        while probe.is_some() && !todo.is_empty() {
            let rest = todo.split_off(1);
            let tried = self.publish_once(item, todo, owner).await;
            todo = rest;
            match tried {
                Ok((0, dups)) => duplicates += dups,
                Ok((published, dups)) => {
                    stats.published += published;
                    duplicates += dups;
                    if let Some(guard) = probe.take() {
                        guard.accepted();
                    }
                }
                Err(RelayError::Refused(_)) => {
                    let wait = probe
                        .take()
                        .map_or(crate::pipeline::backpressure::FIRST_PROBE, |g| g.refused());
                    return Err(RelayError::Refused(wait));
                }
                Err(e) => return Err(e),
            }
        }
        let (published, dups) = match self.publish_once(item, todo, owner).await {
            Err(RelayError::Refused(_)) => {
                let key = RecordSink::routing_key(item);
                return Err(RelayError::Refused(
                    self.backpressure.refused(&key, &item.content_id),
                ));
            }
            other => other?,
        };
        stats.published += published;
        duplicates += dups;
        stats.duplicates += duplicates;
        self.metrics.records_duplicate.inc_by(duplicates);
        batch.clear();
        Ok(())
    }

    /// [`crate::store::dedup::Dedup::publish_once`] of `records`: (published, duplicates). A
    /// refusal from downstream (a nack) is [`RelayError::Refused`] ([`crate::pipeline::backpressure`]).
    async fn publish_once(
        &self,
        item: &WorkItem,
        records: Vec<&AuditRecord>,
        owner: &str,
    ) -> Result<(u64, u64), RelayError> {
        if records.is_empty() {
            return Ok((0, 0));
        }
        let policy = ClaimPolicy {
            owner,
            claim_ttl: CLAIM_TTL,
            done_ttl: self.record_dedup_ttl,
            give_up_after: CLAIM_TTL + Duration::from_secs(10),
        };
        let done = self
            .store
            .dedup()
            .publish_once(
                &item.tenant_id,
                records,
                |r| RecordKey {
                    id: &r.id,
                    created: &r.creation_time,
                },
                policy,
                |records| async move {
                    self.sink.publish(item, &records).await?;
                    self.metrics
                        .records_published
                        .with_label_values(&[item.content_type.as_str()])
                        .inc_by(records.len() as u64);
                    Ok::<(), BrokerError>(())
                },
            )
            .await
            .map_err(|e| match e {
                // The caller pauses the key, or settles its probe.
                PublishOnceError::Publish(BrokerError::Nacked(_)) => {
                    RelayError::Refused(Duration::ZERO)
                }
                PublishOnceError::Publish(e) => RelayError::Broker(e),
                busy @ PublishOnceError::Busy(_) => RelayError::Busy(busy.to_string()),
            })?;
        Ok((done.published, done.duplicates))
    }
}

/// One blob's relay in progress: the record ids seen in it (Microsoft repeats some), its
/// figures, the owner of its record claims, and its probe when the blob probes a paused routing
/// key ([`crate::pipeline::backpressure`]; dropped unsettled with the run when the blob fails first).
struct Run<'p> {
    seen: HashSet<String>,
    stats: BlobStats,
    owner: String,
    probe: Option<ProbeGuard<'p>>,
}

/// How long a relayed blob's marker lives: until the blob's `contentExpiration` (7 days when
/// unknown or past) plus a day, at most [`RELAYED_MARKER_MAX`].
fn relayed_marker_ttl(expires_in: Option<i64>) -> Duration {
    let until_expiry = expires_in
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s as u64))
        .unwrap_or(Duration::from_secs(7 * 86_400));
    (until_expiry + MARKER_GRACE).min(RELAYED_MARKER_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    #[test]
    fn a_relayed_marker_outlives_its_blob_by_a_day() {
        assert_eq!(
            relayed_marker_ttl(Some(3_600)),
            Duration::from_secs(3_600 + DAY)
        );
        assert_eq!(
            relayed_marker_ttl(Some(6 * DAY as i64)),
            Duration::from_secs(7 * DAY)
        );
    }

    #[test]
    fn a_relayed_marker_of_unknown_or_past_expiry_lives_eight_days() {
        assert_eq!(relayed_marker_ttl(None), Duration::from_secs(8 * DAY));
        assert_eq!(relayed_marker_ttl(Some(0)), Duration::from_secs(8 * DAY));
        assert_eq!(relayed_marker_ttl(Some(-60)), Duration::from_secs(8 * DAY));
    }

    #[test]
    fn a_far_content_expiration_is_capped_at_eight_days() {
        assert_eq!(
            relayed_marker_ttl(Some(30 * DAY as i64)),
            Duration::from_secs(8 * DAY)
        );
        assert_eq!(relayed_marker_ttl(Some(i64::MAX)), RELAYED_MARKER_MAX);
    }
}
