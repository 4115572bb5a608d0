//! A work item's message: its body (the item's JSON), its properties and headers — what
//! [`encode`] writes, what a job is read back from, and what a retry, deferred, dead or parked
//! copy carries (rebuilt from what the relay knows, never the delivery's whole headers table).

use super::{Job, WorkQueue};
use crate::broker::{
    header, header_int, header_str, json_properties, BasicProperties, BrokerError, FieldTable,
    Message,
};
use crate::domain::WorkItem;

/// Cap of the error and reason headers (bytes).
pub const REASON_CAP: usize = 1024;

/// Failed attempts before this copy (0 on the first).
pub(super) const ATTEMPT_HEADER: &str = "o365-attempt";
/// On a deferred job: its turn, milliseconds since the epoch.
pub(super) const NOT_BEFORE_HEADER: &str = "o365-not-before";

/// A work item's message: its JSON, persistent, `message_id` = content id (at most 255 bytes,
/// checked by [`crate::domain::ContentId`]), headers naming tenant, content type and source.
pub fn encode(item: &WorkItem) -> Result<(Vec<u8>, BasicProperties), BrokerError> {
    // Sized for the whole item at once (the URI and the ids are most of it), not grown by
    // doubling from empty.
    let mut body = Vec::with_capacity(192 + 2 * item.content_uri.len());
    serde_json::to_writer(&mut body, item).map_err(|e| BrokerError::Amqp(e.to_string()))?;
    let mut headers = FieldTable::default();
    for (k, v) in item.header_pairs() {
        header(&mut headers, k, v, REASON_CAP);
    }
    header(
        &mut headers,
        "o365-source",
        item.source.as_str(),
        REASON_CAP,
    );
    Ok((
        body,
        json_properties(item.content_id.as_str()).with_headers(headers),
    ))
}

impl WorkQueue {
    /// The job a message carries: its work item (checked again against the content rules),
    /// attempt count and turn; the reason when it is not a readable work item.
    pub(super) fn decode(&self, m: &Message) -> Result<Job, String> {
        let item: WorkItem =
            serde_json::from_slice(&m.body).map_err(|e| format!("unreadable work item: {e}"))?;
        self.rules.recheck(&item)?;
        let attempt = header_str(&m.properties, ATTEMPT_HEADER)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let not_before = header_str(&m.properties, NOT_BEFORE_HEADER)
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis);
        Ok(Job {
            item,
            attempt,
            not_before,
            trace: crate::ops::trace_context::Carried::from_properties(&m.properties),
        })
    }
}

/// Properties of a retry or dead-letter copy: rebuilt from what the relay knows (never the
/// delivery's whole headers table, which could be anything and overflow a frame), the attempt
/// count, and `extra` headers, each capped at [`REASON_CAP`].
pub(super) fn forwarded_properties(
    m: &Message,
    job: Option<&Job>,
    attempt: u32,
    extra: &[(&'static str, &str)],
) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(job) = job {
        for (k, v) in job.item.header_pairs() {
            header(&mut headers, k, v, REASON_CAP);
        }
        header(
            &mut headers,
            "o365-source",
            job.item.source.as_str(),
            REASON_CAP,
        );
        // A retried, deferred or parked blob stays in the trace it started in.
        job.trace.put(&mut headers);
    }
    header_int(&mut headers, ATTEMPT_HEADER, i64::from(attempt));
    for (k, v) in extra {
        header(&mut headers, k, v, REASON_CAP);
    }
    let id = job
        .map(|j| j.item.content_id.as_str().to_string())
        .or_else(|| m.message_id())
        .unwrap_or_default();
    json_properties(&id).with_headers(headers)
}
