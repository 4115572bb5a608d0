//! Content workers: each job is one blob — fetch it with the tenant's token (through
//! [`crate::management`]), split it into records as the bytes Microsoft sent
//! ([`crate::records`]), de-duplicate, publish through the [`RecordSink`], mark the blob relayed.
//! The [`WorkQueue`] settles the job from the [`Outcome`] returned here.
//!
//! Nothing is acknowledged before its records are confirmed. Failures are classified by
//! Microsoft's error code (`Retry` with its `Retry-After`, or `Dead` with the reason). A record
//! that is not JSON text does not stop the blob: the others are relayed, and the blob then goes
//! to the dead-letter queue naming the bad record, so nothing is dropped unseen. A blob whose body
//! does not arrive whole within `O365_FETCH_TIMEOUT` is retried (a drip-fed body cannot hold a
//! worker for ever).

use crate::broker::BrokerError;
use crate::domain::{parse_ms_time, WorkItem};
use crate::management::{ApiError, Disposition, ManagementClient};
use crate::metrics::Metrics;
use crate::records::{ArraySplitter, AuditRecord, RecordsError};
use crate::sink::RecordSink;
use crate::store::{Claim, Store};
use crate::subscriptions::Subscriptions;
use crate::tenants::Tenants;
use crate::work_queue::{Job, Outcome, WorkQueue};
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
            RelayError::Broker(_) => "broker".into(),
            RelayError::Busy(_) => "busy".into(),
        }
    }

    fn disposition(&self) -> Disposition {
        match self {
            RelayError::Api(e) => e.disposition(),
            RelayError::Records(RecordsError::TooLarge(_)) => Disposition::GiveUp,
            RelayError::MalformedRecords { .. } => Disposition::GiveUp,
            RelayError::Records(_) | RelayError::Deadline(_) => Disposition::Retry(None),
            RelayError::Broker(_) | RelayError::Busy(_) => Disposition::Retry(None),
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
    pub metrics: Arc<Metrics>,
    /// `O365_RECORD_DEDUP_TTL` (zero: no record de-duplication).
    pub record_dedup_ttl: Duration,
    /// `O365_FETCH_TIMEOUT`: a blob's whole fetch, from request to last byte.
    pub fetch_timeout: Duration,
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
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
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
        let span = tracing::info_span!("blob", tenant_id = %item.tenant_id, content_type = %item.content_type, content_id = %item.content_id);
        self.process(item).instrument(span).await
    }

    async fn process(&self, item: WorkItem) -> Outcome {
        if !self.tenants.is_served(&item.tenant_id).await {
            return Outcome::dead("tenant_not_served", "tenant is no longer served");
        }
        if let Ok(true) = self
            .store
            .is_relayed(&item.tenant_id, &item.content_id)
            .await
        {
            tracing::debug!("Blob already relayed; skipping.");
            self.metrics.blobs.with_label_values(&["duplicate"]).inc();
            return Outcome::Done;
        }
        let started = Instant::now();
        match self.relay_blob(&item).await {
            Ok(stats) => {
                let ttl = item
                    .expires_in()
                    .filter(|s| *s > 0)
                    .map(|s| Duration::from_secs(s as u64))
                    .unwrap_or(Duration::from_secs(7 * 86_400))
                    + MARKER_GRACE;
                let _ = self
                    .store
                    .mark_relayed(&item.tenant_id, &item.content_id, ttl)
                    .await;
                self.metrics.blobs.with_label_values(&["relayed"]).inc();
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
            Err(e) => match e.disposition() {
                Disposition::GiveUp => Outcome::dead(e.code(), e.to_string()),
                Disposition::StartSubscription => {
                    self.subscriptions
                        .ensure_started(&item.tenant_id, item.content_type)
                        .await;
                    Outcome::retry(None, e.code(), &e)
                }
                Disposition::Retry(after) => Outcome::retry(after, e.code(), &e),
            },
        }
    }

    /// Fetches the blob and publishes its records, streaming: at most one batch of records is
    /// held. The whole fetch is bounded by `O365_FETCH_TIMEOUT`; publishing is not cut short
    /// (a batch in flight finishes and is recorded).
    pub async fn relay_blob(&self, item: &WorkItem) -> Result<BlobStats, RelayError> {
        let deadline = tokio::time::Instant::now() + self.fetch_timeout;
        let late = || RelayError::Deadline(self.fetch_timeout);
        let resp = tokio::time::timeout_at(
            deadline,
            self.management
                .fetch_content(&item.tenant_id, &item.content_uri),
        )
        .await
        .map_err(|_| late())??;
        let mut body = resp.bytes_stream();
        let mut splitter = ArraySplitter::new();
        let mut raw = Vec::new();
        let mut batch: Vec<AuditRecord> = Vec::with_capacity(BATCH);
        let mut seen_here: HashSet<String> = HashSet::new();
        let mut stats = BlobStats::default();
        let mut first_malformed = None;
        let mut index = 0;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        while let Some(chunk) = tokio::time::timeout_at(deadline, body.next())
            .await
            .map_err(|_| late())?
        {
            let chunk = chunk.map_err(|e| {
                ApiError::Transport(format!("reading content: {}", e.without_url()))
            })?;
            splitter.feed(&chunk, &mut raw)?;
            for r in raw.drain(..) {
                match AuditRecord::parse(r, index) {
                    Ok(record) => batch.push(record),
                    Err(e) => {
                        stats.malformed += 1;
                        first_malformed.get_or_insert(e);
                    }
                }
                index += 1;
                if batch.len() >= BATCH {
                    self.publish_records(item, &mut batch, &mut seen_here, &mut stats, &owner)
                        .await?;
                }
            }
        }
        splitter.finish()?;
        self.publish_records(item, &mut batch, &mut seen_here, &mut stats, &owner)
            .await?;
        if let Some(first) = first_malformed {
            self.metrics.records_malformed.inc_by(stats.malformed);
            return Err(RelayError::MalformedRecords {
                count: stats.malformed,
                total: index as u64,
                first,
            });
        }
        Ok(stats)
    }

    /// Publishes a batch, each record once: duplicates within the blob are skipped here; across
    /// blobs and workers a record is claimed in Redis before it is published and marked done
    /// after its confirm, so two workers never both publish it. A record another worker is
    /// publishing right now is waited for. Without Redis everything is published (consumers
    /// de-duplicate on `message_id`).
    async fn publish_records(
        &self,
        item: &WorkItem,
        batch: &mut Vec<AuditRecord>,
        seen_here: &mut HashSet<String>,
        stats: &mut BlobStats,
        owner: &str,
    ) -> Result<(), RelayError> {
        if batch.is_empty() {
            return Ok(());
        }
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
        let ttl = self.record_dedup_ttl;
        let dedup = !ttl.is_zero();
        let give_up_at = Instant::now() + CLAIM_TTL + Duration::from_secs(10);
        while !todo.is_empty() {
            let (mine, pending): (Vec<&AuditRecord>, Vec<&AuditRecord>) = if dedup {
                let ids: Vec<&str> = todo.iter().map(|r| r.id.as_str()).collect();
                match self
                    .store
                    .claim_records(&item.tenant_id, &ids, owner, CLAIM_TTL)
                    .await
                {
                    Ok(claims) => {
                        let (mut mine, mut pending) = (Vec::new(), Vec::new());
                        for (r, c) in todo.iter().zip(claims) {
                            match c {
                                Claim::Mine => mine.push(*r),
                                Claim::Done => duplicates += 1,
                                Claim::Pending => pending.push(*r),
                            }
                        }
                        (mine, pending)
                    }
                    Err(_) => (std::mem::take(&mut todo), Vec::new()),
                }
            } else {
                (std::mem::take(&mut todo), Vec::new())
            };
            let ids: Vec<&str> = mine.iter().map(|r| r.id.as_str()).collect();
            if let Err(e) = self.sink.publish(item, &mine).await {
                if dedup {
                    let _ = self
                        .store
                        .release_claims(&item.tenant_id, &ids, owner)
                        .await;
                }
                return Err(e.into());
            }
            stats.published += mine.len() as u64;
            self.metrics
                .records_published
                .with_label_values(&[item.content_type.as_str()])
                .inc_by(mine.len() as u64);
            if dedup {
                let _ = self.store.finish_records(&item.tenant_id, &ids, ttl).await;
            }
            todo = pending;
            if !todo.is_empty() {
                if Instant::now() > give_up_at {
                    return Err(RelayError::Busy(format!(
                        "{} records stayed claimed by another worker",
                        todo.len()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        stats.duplicates += duplicates;
        self.metrics.records_duplicate.inc_by(duplicates);
        batch.clear();
        Ok(())
    }
}
