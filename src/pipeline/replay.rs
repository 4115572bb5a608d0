//! Replay: re-publish a tenant's history that Microsoft still holds (`o365-relay replay`). For
//! a downstream system that wants the last week, or a consumer that lost data.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/replay".

use crate::domain::{parse_ms_time, ContentType, TenantId, WorkItem};
use crate::microsoft::management::{ApiError, Disposition, ManagementClient};
use crate::microsoft::notification::ContentRules;
use crate::pipeline::reconciler::{windows, RETENTION, SKEW};
use crate::pipeline::worker::{RelayError, Worker};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Blobs fetched at once.
const CONCURRENCY: usize = 4;
/// Attempts per blob.
const ATTEMPTS: u32 = 3;
/// The longest wait between attempts, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// What to replay.
#[derive(Clone, Debug)]
pub struct ReplayRequest {
    pub tenant: TenantId,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub content_types: Vec<ContentType>,
    pub routing_prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("tenant {0} is not served (see `o365-relay tenants list`)")]
    NotServed(TenantId),
    #[error("listing {content_type} failed")]
    Listing {
        content_type: ContentType,
        #[source]
        source: ApiError,
    },
}

/// Where a replay stands, reported after the listing and after each blob.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Progress {
    /// Blobs listed for the period.
    pub blobs: u64,
    /// Blobs replayed whole.
    pub replayed: u64,
    /// Blobs that failed every attempt.
    pub failed: u64,
    /// Records published.
    pub records: u64,
}

/// How a replay ended.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub tenant: TenantId,
    /// The period actually listed (the start is moved up to Microsoft's 7 days when asked for
    /// more; see `clamped`).
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub clamped: bool,
    pub progress: Progress,
    /// Content types without a subscription at Microsoft (AF20022/AF20023): nothing to list.
    pub unsubscribed: Vec<ContentType>,
    /// `(content id, error)` of each blob that failed every attempt.
    pub failures: Vec<(String, String)>,
}

pub struct Replayer {
    pub management: Arc<ManagementClient>,
    pub worker: Arc<Worker>,
    pub rules: ContentRules,
}

impl Replayer {
    /// The earliest time Microsoft still lists content for (7 days, minus a margin for clocks).
    pub fn earliest(now: DateTime<Utc>) -> DateTime<Utc> {
        now - RETENTION + SKEW
    }

    pub async fn run(
        &self,
        request: &ReplayRequest,
        mut progress: impl FnMut(&Progress),
    ) -> Result<Summary, ReplayError> {
        let tenant = &request.tenant;
        if !self.worker.tenants.is_served(tenant).await {
            return Err(ReplayError::NotServed(tenant.clone()));
        }
        let earliest = Self::earliest(Utc::now());
        let since = request.since.max(earliest);
        // Listing times are whole seconds (the end excluded): round the end up, so content
        // created in the last second before `until` is listed too.
        let until = request.until.min(Utc::now());
        let until = match until.timestamp_subsec_nanos() {
            0 => until,
            n => until + chrono::Duration::nanoseconds(1_000_000_000 - i64::from(n)),
        };
        // Tracing on: the replay is one trace, each blob a span under its root.
        let root = crate::ops::trace_context::replay_span(
            tenant,
            &since.to_rfc3339(),
            &until.to_rfc3339(),
            request.routing_prefix.as_deref(),
        );
        let mut blobs: Vec<WorkItem> = Vec::new();
        let mut unsubscribed = Vec::new();
        'types: for &ct in &request.content_types {
            for (ws, we) in windows(since, until) {
                let listed = match self.management.list_content(tenant, ct, ws, we).await {
                    Ok(listed) => listed,
                    Err(e) if e.disposition() == Disposition::StartSubscription => {
                        unsubscribed.push(ct);
                        continue 'types;
                    }
                    Err(source) => {
                        return Err(ReplayError::Listing {
                            content_type: ct,
                            source,
                        })
                    }
                };
                for entry in listed {
                    match self.rules.listing_entry(tenant, ct, entry) {
                        Ok(item) => blobs.push(item),
                        Err(r) => {
                            tracing::warn!(tenant_id = %tenant, content_type = %ct, reason = %r.detail, "Listed content refused; not replayed.");
                        }
                    }
                }
            }
        }
        // Oldest first, so a consumer sees history in order (as far as blobs go), each once.
        blobs.sort_by_key(|b| b.content_created.as_deref().and_then(parse_ms_time));
        blobs.dedup_by(|a, b| a.content_id == b.content_id);
        let mut state = Progress {
            blobs: blobs.len() as u64,
            ..Progress::default()
        };
        progress(&state);
        let prefix = request.routing_prefix.as_deref();
        let mut failures = Vec::new();
        let mut results = stream::iter(blobs)
            .map(|item| {
                let span = crate::ops::trace_context::replay_blob_span(&root, &item);
                async move {
                    let r = self.replay_one(&item, prefix).await;
                    (item, r)
                }
                .instrument(span)
            })
            .buffer_unordered(CONCURRENCY);
        while let Some((item, result)) = results.next().await {
            match result {
                Ok(records) => {
                    state.replayed += 1;
                    state.records += records;
                }
                Err(e) => {
                    state.failed += 1;
                    tracing::warn!(tenant_id = %tenant, content_id = %item.content_id, error = %e, "Blob not replayed.");
                    failures.push((item.content_id.as_str().to_string(), e.to_string()));
                }
            }
            progress(&state);
        }
        Ok(Summary {
            tenant: tenant.clone(),
            since,
            until,
            clamped: since > request.since,
            progress: state,
            unsubscribed,
            failures,
        })
    }

    /// One blob, retried on transient failures: the records published.
    async fn replay_one(&self, item: &WorkItem, prefix: Option<&str>) -> Result<u64, RelayError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.worker.replay_blob(item, prefix).await {
                Ok(stats) => return Ok(stats.published),
                Err(e) if attempt < ATTEMPTS => match e.disposition() {
                    Disposition::Retry(after) => {
                        let backoff = Duration::from_secs(1 << attempt);
                        tokio::time::sleep(after.unwrap_or(backoff).clamp(backoff, MAX_WAIT)).await;
                    }
                    _ => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}
