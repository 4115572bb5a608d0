//! Settling a job: the one place an [`Outcome`] becomes RabbitMQ's — an ack, a copy to a retry
//! tier or the dead-letter queue (acked only after RabbitMQ confirmed the copy), or the
//! delivery handed back when the copy cannot be published.

use super::message::{forwarded_properties, NOT_BEFORE_HEADER, REASON_CAP};
use super::retry::{backoff, EXPIRY_MARGIN, MAX_DEFER};
use super::{Job, Outcome, WorkQueue};
use crate::broker::{short_string, Delivery, OutMessage};
use std::time::Duration;

/// A dead blob is remembered while Microsoft may still list it (7 days) and a day more.
const DEAD_MARKER_TTL: Duration = Duration::from_secs(8 * 86_400);

impl WorkQueue {
    pub(super) async fn settle(&self, d: &Delivery, job: Option<&Job>, outcome: Outcome) {
        match outcome {
            Outcome::Done => ack(d).await,
            Outcome::Retry { after, code, error } => {
                let Some(job) = job else {
                    return self.dead_letter(d, None, 0, &code, &error).await;
                };
                let attempt = job.attempt + 1;
                if attempt >= self.policy.max_attempts {
                    let why = format!("gave up after {attempt} attempts: {error}");
                    return self.dead_letter(d, Some(job), attempt, &code, &why).await;
                }
                let mut delay = backoff(self.policy.base, self.policy.max, attempt, after);
                if let Some(left) = job.item.expires_in() {
                    let left = Duration::from_secs(left.max(0) as u64);
                    if left <= EXPIRY_MARGIN {
                        let why = format!("content expires before it can be retried: {error}");
                        return self
                            .dead_letter(d, Some(job), attempt, "expired", &why)
                            .await;
                    }
                    delay = delay.min(left - EXPIRY_MARGIN);
                }
                self.retry_later(d, job, attempt, delay, &code, &error)
                    .await
            }
            Outcome::Defer { delay, reason } => match job {
                Some(job) => self.defer(d, job, delay, reason).await,
                // Only a job that was read can be deferred; should one not be, it is kept.
                None => {
                    let why = format!("an unreadable work item was deferred ({reason})");
                    self.dead_letter(d, None, 0, "malformed_work_item", &why)
                        .await
                }
            },
            Outcome::Dead { code, reason } => {
                let attempt = job.map_or(0, |j| j.attempt + 1);
                self.dead_letter(d, job, attempt, &code, &reason).await
            }
            Outcome::Park { reason } => match job {
                Some(job) => self.park(d, job, &reason).await,
                None => {
                    self.dead_letter(d, None, 0, "malformed_work_item", &reason)
                        .await
                }
            },
        }
    }

    async fn retry_later(
        &self,
        d: &Delivery,
        job: &Job,
        attempt: u32,
        delay: Duration,
        code: &str,
        error: &str,
    ) {
        let props = forwarded_properties(
            d,
            Some(job),
            attempt,
            &[("o365-last-error", error), ("o365-error-code", code)],
        )
        .with_expiration(delay.as_millis().max(1).to_string().into());
        let msg = OutMessage {
            exchange: "".into(),
            routing_key: short_string(self.names.retry_queue_for(delay)),
            body: d.body.clone(),
            properties: props,
        };
        match self.broker.publish_batch(vec![msg]).await {
            Ok(()) => {
                self.mark_job_in_flight(job, delay);
                self.metrics.blobs.with_label_values(&["retried"]).inc();
                tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, code, error = %crate::domain::text::capped(error, REASON_CAP), "Blob failed; retrying later.");
                ack(d).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot park the blob for retry; handing it back to RabbitMQ.");
                requeue(d).await;
            }
        }
    }

    /// Parks the job until its turn: in the retry tier for `delay` (at most [`MAX_DEFER`];
    /// a job back early is deferred again for the rest), attempt count unchanged.
    async fn defer(&self, d: &Delivery, job: &Job, delay: Duration, reason: &'static str) {
        if let Some(left) = job.item.expires_in() {
            let left = Duration::from_secs(left.max(0) as u64);
            if left <= delay.saturating_add(EXPIRY_MARGIN) {
                // Named for the cause when it is a consumer's full queue (the operator's fix is
                // there, not at Microsoft).
                let (code, why) = if reason == crate::pipeline::backpressure::DOWNSTREAM_FULL {
                    (
                        crate::pipeline::backpressure::DOWNSTREAM_FULL,
                        "content expires at Microsoft while a consumer queue still refuses its records (full: x-max-length with reject-publish)".to_string(),
                    )
                } else {
                    (
                        "expired",
                        format!(
                            "content expires at Microsoft before its tenant's turn ({reason}, {} s away)",
                            delay.as_secs()
                        ),
                    )
                };
                return self
                    .dead_letter(d, Some(job), job.attempt, code, &why)
                    .await;
            }
        }
        let now = chrono::Utc::now();
        let turn = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
        let wait = delay.clamp(Duration::from_millis(1), MAX_DEFER);
        let props = forwarded_properties(
            d,
            Some(job),
            job.attempt,
            &[
                (NOT_BEFORE_HEADER, &turn.timestamp_millis().to_string()),
                ("o365-deferred", reason),
            ],
        )
        .with_expiration(wait.as_millis().to_string().into());
        let msg = OutMessage {
            exchange: "".into(),
            routing_key: short_string(self.names.retry_queue_for(wait)),
            body: d.body.clone(),
            properties: props,
        };
        match self.broker.publish_batch(vec![msg]).await {
            Ok(()) => {
                self.mark_job_in_flight(job, wait);
                self.metrics.deferred.with_label_values(&[reason]).inc();
                tracing::debug!(
                    delay_ms = delay.as_millis() as u64,
                    reason,
                    "Blob deferred to its tenant's turn."
                );
                ack(d).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot defer the blob; handing it back to RabbitMQ.");
                requeue(d).await;
            }
        }
    }

    pub(super) async fn dead_letter(
        &self,
        d: &Delivery,
        job: Option<&Job>,
        attempt: u32,
        code: &str,
        reason: &str,
    ) {
        let now = chrono::Utc::now().to_rfc3339();
        let props = forwarded_properties(
            d,
            job,
            attempt,
            &[
                ("o365-dead-reason", reason),
                ("o365-error-code", code),
                ("o365-dead-at", &now),
            ],
        );
        let msg = OutMessage {
            exchange: "".into(),
            routing_key: short_string(&self.names.dead),
            body: d.body.clone(),
            properties: props,
        };
        match self.broker.publish_batch(vec![msg]).await {
            Ok(()) => {
                self.metrics.blobs.with_label_values(&["dead"]).inc();
                self.metrics
                    .dead_letters
                    .with_label_values(&[code_label(code)])
                    .inc();
                tracing::error!(
                    content_id = job.map(|j| j.item.content_id.as_str()).unwrap_or(""),
                    code = %crate::domain::text::capped(code, 64),
                    reason = %crate::domain::text::capped(reason, REASON_CAP),
                    "Blob sent to the dead-letter queue."
                );
                if let Some(job) = job {
                    let _ = self
                        .store
                        .activity()
                        .dead(&job.item.tenant_id, code, reason)
                        .await;
                    let ttl = job
                        .item
                        .expires_in()
                        .map_or(DEAD_MARKER_TTL, |s| {
                            Duration::from_secs(s.max(0) as u64) + Duration::from_secs(86_400)
                        })
                        .min(DEAD_MARKER_TTL);
                    let _ = self
                        .store
                        .dedup()
                        .mark_dead(&job.item.tenant_id, &job.item.content_id, ttl)
                        .await;
                }
                ack(d).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot dead-letter the blob; handing it back to RabbitMQ.");
                requeue(d).await;
            }
        }
    }
}

pub(super) async fn ack(d: &Delivery) {
    if let Err(e) = d.ack().await {
        tracing::warn!(error = %e, "Ack failed; RabbitMQ will redeliver the blob (it is de-duplicated).");
    }
}

/// Hands the message back to RabbitMQ for redelivery (only when it cannot be parked in the
/// retry or dead queue).
pub(super) async fn requeue(d: &Delivery) {
    let _ = d.requeue().await;
}

/// Bounded label values for the dead-letter metric: Microsoft's codes as the API error type
/// labels them, and the relay's own.
fn code_label(code: &str) -> &'static str {
    if let Some(label) = crate::microsoft::management::ApiError::code_label(code) {
        return label;
    }
    match code {
        // Content that expired at Microsoft while it waited here is counted as AF20051.
        "expired" => "AF20051",
        "tenant_not_served" => "tenant_not_served",
        "malformed_work_item" => "malformed_work_item",
        "truncated" | "malformed_content" | "malformed_record" => "malformed_content",
        "token" => "token",
        "panic" => "panic",
        crate::pipeline::backpressure::DOWNSTREAM_FULL => {
            crate::pipeline::backpressure::DOWNSTREAM_FULL
        }
        _ => "other",
    }
}
