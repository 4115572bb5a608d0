//! The work queue: the one owner of work items on RabbitMQ — their message format, the queue,
//! its retry tiers and its dead-letter queue.
//!
//! Sources ([`crate::webhook`], [`crate::reconciler`]) call [`WorkQueue::enqueue`], which returns
//! once RabbitMQ confirmed every item. Consumers call [`WorkQueue::consume`] with a handler that
//! turns a [`Job`] into an [`Outcome`]; the queue then settles the delivery in exactly one way:
//!
//! - [`Outcome::Done`] → ack;
//! - [`Outcome::Retry`] → a copy goes to `{work}.retry.{tier}` with a per-message TTL and comes
//!   back to the work queue when it expires (exponential backoff with jitter; Microsoft's
//!   `Retry-After` honoured up to [`MAX_RETRY_AFTER`] and never past the content's expiration),
//!   then ack; after `O365_MAX_ATTEMPTS` it is dead instead;
//! - [`Outcome::Defer`] → a copy goes to the retry tier for the delay, its attempt count
//!   unchanged, its turn in `o365-not-before` and why in `o365-deferred`, then ack: waiting for
//!   the tenant's turn ([`crate::scheduling`]) is not a failure, so it never leads to the
//!   dead-letter queue — unless the content would expire at Microsoft first (dead, `expired`;
//!   `downstream_full` when it waited for a consumer's full queue, [`crate::backpressure`]);
//! - [`Outcome::Dead`] → a copy goes to `{work}.dead` with the code and reason in headers, then ack;
//! - [`Outcome::Park`] → the job's tenant is parked ([`crate::health`]): a copy goes to
//!   `{work}.parked` without counting an attempt, expiring into `{work}.dead` when its content
//!   expires at Microsoft, then ack; [`WorkQueue::sweep_parked`] moves it back when the tenant
//!   works again;
//! - a handler that **panics** is settled as dead with code `panic` (and counted): a delivery is
//!   never left unacked to hold a prefetch slot forever;
//! - when the copy cannot be published (RabbitMQ trouble), the delivery is handed back to
//!   RabbitMQ (nack + requeue) — never dropped.
//!
//! Retry tiers: RabbitMQ expires messages only at the head of a queue, so one retry queue would
//! make a 5-second retry wait behind a 30-minute one; with a queue per tier, a message waits at
//! most for the longest delay of its own tier.

use crate::broker::{
    header, header_str, json_properties, short_string, Broker, BrokerError, OutMessage, QueueSpec,
    Topology,
};
use crate::config::QueueType;
use crate::domain::{ContentId, TenantId, WorkItem};
use crate::metrics::Metrics;
use crate::notification::ContentRules;
use crate::store::Store;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Retry tiers: (longest delay, queue suffix).
pub const RETRY_TIERS: [(Duration, &str); 5] = [
    (Duration::from_secs(5), "5s"),
    (Duration::from_secs(60), "1m"),
    (Duration::from_secs(600), "10m"),
    (Duration::from_secs(3600), "1h"),
    (Duration::from_secs(6 * 3600), "6h"),
];

/// The longest `Retry-After` honoured. Microsoft does not document the header; a value of years
/// would park a blob past its 7-day retention at the head of a tier, blocking all behind it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// A retry is scheduled at least this long before the content expires at Microsoft.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// Cap of the error and reason headers (bytes).
pub const REASON_CAP: usize = 1024;

const ATTEMPT_HEADER: &str = "o365-attempt";
/// On a deferred job: its turn, milliseconds since the epoch.
const NOT_BEFORE_HEADER: &str = "o365-not-before";
/// The longest a deferred job waits in a tier before it is looked at again (the longest tier):
/// a longer TTL would hold the head of that tier for longer than its name says.
const MAX_DEFER: Duration = RETRY_TIERS[RETRY_TIERS.len() - 1].0;
/// A dead blob is remembered while Microsoft may still list it (7 days) and a day more.
const DEAD_MARKER_TTL: Duration = Duration::from_secs(8 * 86_400);

/// The retry queues of a work queue, shortest tier first.
pub fn retry_queue_names(work: &str) -> Vec<String> {
    RETRY_TIERS
        .iter()
        .map(|(_, t)| format!("{work}.retry.{t}"))
        .collect()
}

/// The queue names derived from `O365_AMQP_WORK_QUEUE`.
#[derive(Clone, Debug)]
pub struct Names {
    pub work: String,
    /// One per entry of [`RETRY_TIERS`].
    pub retry: Vec<String>,
    pub dead: String,
    /// Jobs of parked tenants (declared when the first job is parked).
    pub parked: String,
}

impl Names {
    pub fn new(work: &str) -> Names {
        Names {
            work: work.to_string(),
            retry: retry_queue_names(work),
            dead: format!("{work}.dead"),
            parked: format!("{work}.parked"),
        }
    }

    /// The retry queue for a delay: the shortest tier that holds it (the longest for longer).
    pub fn retry_queue_for(&self, delay: Duration) -> &str {
        let i = RETRY_TIERS
            .iter()
            .position(|(max, _)| delay <= *max)
            .unwrap_or(RETRY_TIERS.len() - 1);
        &self.retry[i]
    }

    /// The exchange and queues to declare: the work queue, its retry tiers (dead-lettering
    /// back into the work queue when a message's TTL expires) and the dead-letter queue.
    pub fn topology(&self, exchange: &str, queue_type: QueueType) -> Topology {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.as_str().into()),
        );
        let mut retry_args = args.clone();
        retry_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        retry_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.work.as_str().into()),
        );
        let mut queues = vec![QueueSpec {
            name: self.work.clone(),
            arguments: args.clone(),
        }];
        queues.extend(self.retry.iter().map(|q| QueueSpec {
            name: q.clone(),
            arguments: retry_args.clone(),
        }));
        queues.push(QueueSpec {
            name: self.dead.clone(),
            arguments: args,
        });
        Topology {
            exchange: exchange.to_string(),
            queues,
        }
    }
}

/// How failed jobs are retried.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
    /// How long a blob just enqueued is taken to be in flight ([`in_flight_guard`]).
    pub in_flight_guard: Duration,
}

/// How long a freshly enqueued blob keeps its in-flight marker: five reconciliation passes
/// (`O365_RECONCILE_INTERVAL`), between 30 s and 30 min. A job that waits longer (a retry, a
/// deferral, a parked tenant) has its marker renewed for the wait; one that is lost (a purged
/// queue) is queued again by reconciliation once its marker lapses.
pub fn in_flight_guard(reconcile_interval: Duration) -> Duration {
    (reconcile_interval * 5).clamp(Duration::from_secs(30), Duration::from_secs(1800))
}

/// Backoff for attempt `n` (1-based): `base·2^(n-1)` capped at `max`, with "equal jitter"
/// (half fixed, half random) so retries of many blobs spread out; never less than `Retry-After`
/// (itself capped at [`MAX_RETRY_AFTER`]).
pub fn backoff(
    base: Duration,
    max: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)))
        .min(max);
    let half = exp / 2;
    let jitter = Duration::from_millis(rand::random_range(0..=half.as_millis().max(1) as u64));
    (half + jitter).max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// A work item taken from the queue.
#[derive(Debug, Clone)]
pub struct Job {
    pub item: WorkItem,
    /// Failed attempts before this one (0 on the first).
    pub attempt: u32,
    /// When it was deferred ([`Outcome::Defer`]): the turn it was deferred to.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The trace context its message carried ([`crate::trace_context`]; empty when off).
    pub trace: crate::trace_context::Carried,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Try again later; `after` is Microsoft's `Retry-After` when it sent one.
    Retry {
        after: Option<Duration>,
        code: String,
        error: String,
    },
    /// Not now: come back after `delay` without counting an attempt (`reason` is a metric
    /// label, [`crate::scheduling`]).
    Defer {
        delay: Duration,
        reason: &'static str,
    },
    /// Will not succeed: park it in the dead-letter queue with the reason.
    Dead {
        code: String,
        reason: String,
    },
    /// The tenant is parked: set the job aside, without counting an attempt, until the tenant
    /// works again (`reason`: why the tenant is parked).
    Park {
        reason: String,
    },
}

impl Outcome {
    pub fn retry(after: Option<Duration>, code: impl Into<String>, error: impl ToString) -> Self {
        Outcome::Retry {
            after,
            code: code.into(),
            error: error.to_string(),
        }
    }

    pub fn dead(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::Dead {
            code: code.into(),
            reason: reason.into(),
        }
    }

    pub fn park(reason: impl Into<String>) -> Self {
        Outcome::Park {
            reason: reason.into(),
        }
    }
}

pub struct WorkQueue {
    broker: Arc<Broker>,
    store: Arc<Store>,
    names: Names,
    rules: ContentRules,
    policy: RetryPolicy,
    metrics: Arc<Metrics>,
    /// Whether `{work}.parked` was declared by this process (it is never deleted).
    parked_declared: AtomicBool,
}

impl WorkQueue {
    pub fn new(
        broker: Arc<Broker>,
        store: Arc<Store>,
        names: Names,
        rules: ContentRules,
        policy: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> WorkQueue {
        WorkQueue {
            broker,
            store,
            names,
            rules,
            policy,
            metrics,
            parked_declared: AtomicBool::new(false),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Publishes work items to the work queue and waits for every confirm.
    pub async fn enqueue(&self, items: &[WorkItem]) -> Result<(), BrokerError> {
        let work = short_string(&self.names.work);
        // One span per blob (tracing on), its context in the blob's headers; they end at the
        // confirm.
        let spans: Vec<tracing::Span> = items
            .iter()
            .map(crate::trace_context::enqueue_span)
            .collect();
        let out = items
            .iter()
            .zip(&spans)
            .map(|(item, span)| {
                encode(item).map(|(body, properties)| OutMessage {
                    exchange: "".into(),
                    routing_key: work.clone(),
                    body: body.into(),
                    properties: crate::trace_context::with_trace_context(properties, span),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.broker.publish_batch(out).await?;
        drop(spans);
        let blobs = items
            .iter()
            .map(|i| (i.tenant_id.clone(), i.content_id.clone()))
            .collect();
        self.mark_in_flight(blobs, self.policy.in_flight_guard);
        Ok(())
    }

    /// Marks blobs in flight for `wait` (and the guard beyond it), so that reconciliation does
    /// not queue a second copy while one waits in a queue: in the background, after the
    /// confirm — the marker is an optimisation (a second copy is de-duplicated by the relayed
    /// marker and the record claims), and the webhook's answer does not wait for it.
    fn mark_in_flight(&self, blobs: Vec<(TenantId, ContentId)>, wait: Duration) {
        if blobs.is_empty() {
            return;
        }
        let ttl = wait.saturating_add(self.policy.in_flight_guard);
        let store = self.store.clone();
        tokio::spawn(async move {
            let marks: Vec<(&TenantId, &ContentId, Duration)> =
                blobs.iter().map(|(t, c)| (t, c, ttl)).collect();
            if let Err(e) = store.dedup().mark_enqueued(&marks).await {
                tracing::debug!(error = %e, "Cannot mark blobs in flight; reconciliation may queue a second copy.");
            }
        });
    }

    fn mark_job_in_flight(&self, job: &Job, wait: Duration) {
        self.mark_in_flight(
            vec![(job.item.tenant_id.clone(), job.item.content_id.clone())],
            wait,
        );
    }

    /// Messages ready in the work queue.
    pub async fn depth(&self) -> Result<u32, BrokerError> {
        self.broker.queue_depth(&self.names.work).await
    }

    /// Messages waiting in the retry tiers, all together.
    pub async fn retry_depth(&self) -> Result<u32, BrokerError> {
        let mut total = 0u32;
        for q in &self.names.retry {
            total = total.saturating_add(self.broker.queue_depth(q).await?);
        }
        Ok(total)
    }

    /// Messages in the dead-letter queue.
    pub async fn dead_depth(&self) -> Result<u32, BrokerError> {
        self.broker.queue_depth(&self.names.dead).await
    }

    /// Consumes the work queue with at most `concurrency` jobs at once until `shutdown`; then
    /// lets jobs in flight finish until `drain_deadline` (those still running are left unacked,
    /// and RabbitMQ redelivers them). Returns an error as soon as the channel or connection
    /// failed (the caller consumes again; the jobs in flight finish in the background).
    pub async fn consume<H, Fut>(
        self: &Arc<Self>,
        concurrency: usize,
        shutdown: &CancellationToken,
        drain_budget: Duration,
        handler: H,
    ) -> Result<(), BrokerError>
    where
        H: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let ch = self.broker.channel().await?;
        ch.basic_qos(
            concurrency.clamp(1, u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await?;
        let mut consumer = ch
            .basic_consume(
                short_string(&self.names.work),
                format!("o365-relay-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.names.work, concurrency, "Consuming the work queue.");
        let mut tasks = tokio::task::JoinSet::new();
        let result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let queue = self.clone();
                        let handler = handler.clone();
                        tasks.spawn(async move { queue.run_job(delivery, &*handler).await });
                    }
                    Some(Err(e)) => break Err(BrokerError::Amqp(e.to_string())),
                    None => break Err(BrokerError::Unavailable("consumer closed".into())),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if matches!(result, Err(BrokerError::Amqp(_))) {
            // The channel is gone (its node died, say): the jobs in flight can no longer be
            // acked on it, and RabbitMQ hands their blobs to a live consumer. Let them finish
            // on their own (their records are published, their markers set, so the redelivery
            // is cheap) while the caller consumes again at once — waiting for them held the
            // new consumer back for as long as the slowest fetch, up to the drain budget.
            tasks.detach_all();
            return result;
        }
        let drained = tokio::time::timeout(drain_budget, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("Blobs still in flight at shutdown are left to RabbitMQ to redeliver.");
            tasks.abort_all();
        }
        let _ = ch.close(200, "bye".into()).await;
        result
    }

    /// Decodes, runs and settles one delivery. Whatever the handler does — return, fail or
    /// panic — the delivery ends acked (done, retried or dead) or handed back to RabbitMQ.
    async fn run_job<H, Fut>(&self, delivery: Delivery, handler: &H)
    where
        H: Fn(Job) -> Fut,
        Fut: Future<Output = Outcome>,
    {
        let (job, outcome) = match self.decode(&delivery) {
            Err(reason) => (None, Outcome::dead("malformed_work_item", reason)),
            Ok(job) => {
                let run = std::panic::AssertUnwindSafe(handler(job.clone())).catch_unwind();
                let outcome = run.await.unwrap_or_else(|panic| {
                    self.metrics.job_panics.inc();
                    Outcome::dead(
                        "panic",
                        format!("the worker panicked: {}", panic_message(&panic)),
                    )
                });
                (Some(job), outcome)
            }
        };
        let settle = std::panic::AssertUnwindSafe(self.settle(&delivery, job.as_ref(), outcome))
            .catch_unwind();
        if settle.await.is_err() {
            self.metrics.job_panics.inc();
            requeue(&delivery).await;
        }
    }

    fn decode(&self, d: &Delivery) -> Result<Job, String> {
        let item: WorkItem =
            serde_json::from_slice(&d.data).map_err(|e| format!("unreadable work item: {e}"))?;
        self.rules.recheck(&item)?;
        let attempt = header_str(&d.properties, ATTEMPT_HEADER)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let not_before = header_str(&d.properties, NOT_BEFORE_HEADER)
            .and_then(|s| s.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis);
        Ok(Job {
            item,
            attempt,
            not_before,
            trace: crate::trace_context::Carried::from_properties(&d.properties),
        })
    }

    async fn settle(&self, d: &Delivery, job: Option<&Job>, outcome: Outcome) {
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
            body: d.data.clone().into(),
            properties: props,
        };
        match self.broker.publish_batch(vec![msg]).await {
            Ok(()) => {
                self.mark_job_in_flight(job, delay);
                self.metrics.blobs.with_label_values(&["retried"]).inc();
                tracing::warn!(attempt, delay_ms = delay.as_millis() as u64, code, error = %crate::text::capped(error, REASON_CAP), "Blob failed; retrying later.");
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
                let (code, why) = if reason == crate::backpressure::DOWNSTREAM_FULL {
                    (
                        crate::backpressure::DOWNSTREAM_FULL,
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
            body: d.data.clone().into(),
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

    async fn dead_letter(
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
            body: d.data.clone().into(),
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
                    code = %crate::text::capped(code, 64),
                    reason = %crate::text::capped(reason, REASON_CAP),
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

/// Parked jobs (see [`crate::health`] for why one shared queue rather than one per tenant).
impl WorkQueue {
    /// Sets a job of a parked tenant aside in `{work}.parked`: the same message, its attempt
    /// count unchanged, with a per-message TTL that runs out when the content expires at
    /// Microsoft; the queue dead-letters it into `{work}.dead` then, and the copy already
    /// carries the dead-letter headers (code `expired`). Acked only after RabbitMQ confirmed
    /// the copy; handed back to RabbitMQ when it cannot be set aside.
    async fn park(&self, d: &Delivery, job: &Job, reason: &str) {
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
                    body: d.data.clone().into(),
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

    /// Declares `{work}.parked` once per process (see [`WorkQueue::declare_parked_on`]).
    async fn declare_parked(&self) -> Result<(), BrokerError> {
        if self.parked_declared.load(Ordering::SeqCst) {
            return Ok(());
        }
        let ch = self.broker.channel().await?;
        let declared = self.declare_parked_on(&ch).await;
        let _ = ch.close(200, "declared".into()).await;
        declared.map(|_| ())
    }

    /// Declares `{work}.parked` on `ch` (creating it when absent: a passive declaration of a
    /// missing queue would close the channel with an error in the log): durable, the work
    /// queue's own arguments (its type), dead-lettering into `{work}.dead` when a message's TTL
    /// runs out. Returns how many messages it holds.
    async fn declare_parked_on(&self, ch: &lapin::Channel) -> Result<u32, BrokerError> {
        let mut args = self
            .broker
            .topology()
            .queues
            .iter()
            .find(|q| q.name == self.names.work)
            .map(|q| q.arguments.clone())
            .unwrap_or_default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(self.names.dead.as_str().into()),
        );
        let q = ch
            .queue_declare(
                short_string(&self.names.parked),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        self.parked_declared.store(true, Ordering::SeqCst);
        Ok(q.message_count())
    }

    /// Messages waiting in `{work}.parked` (declaring it when absent).
    pub async fn parked_depth(&self) -> Result<u32, BrokerError> {
        let ch = self.broker.channel().await?;
        let depth = self.declare_parked_on(&ch).await;
        let _ = ch.close(200, "ok".into()).await;
        depth
    }

    /// Moves the jobs of tenants no longer parked from `{work}.parked` back to the work queue
    /// (attempt count kept, no TTL), and sets the others aside again with what is left of their
    /// TTL (dead-lettering those whose content expired meanwhile). Looks at each message that
    /// was in the queue when it started, once, in batches: each batch is republished with
    /// confirms before it is acked, so a failure leaves the messages in the parked queue (or,
    /// after a confirm that was lost, in both: a duplicate the workers skip), never nowhere.
    pub async fn sweep_parked(
        &self,
        still_parked: &HashSet<TenantId>,
    ) -> Result<SweepStats, BrokerError> {
        let mut stats = SweepStats::default();
        let ch = self.broker.channel().await?;
        let queue = short_string(&self.names.parked);
        let total = match self.declare_parked_on(&ch).await {
            Ok(n) => n,
            Err(e) => {
                let _ = ch.close(200, "bye".into()).await;
                return Err(e);
            }
        };
        self.metrics.parked_queue_depth.set(i64::from(total));
        let mut left = total;
        let result = loop {
            if left == 0 {
                break Ok(());
            }
            let mut batch = Vec::new();
            while batch.len() < SWEEP_BATCH && (batch.len() as u32) < left {
                match ch
                    .basic_get(queue.clone(), BasicGetOptions { no_ack: false })
                    .await
                {
                    Ok(Some(m)) => batch.push(m.delivery),
                    Ok(None) => break,
                    Err(e) => {
                        requeue_all(&batch).await;
                        return Err(e.into());
                    }
                }
            }
            if batch.is_empty() {
                break Ok(());
            }
            left = left.saturating_sub(batch.len() as u32);
            let now = chrono::Utc::now();
            let mut out = Vec::with_capacity(batch.len());
            let mut counts = SweepStats::default();
            for d in &batch {
                out.push(self.swept(d, still_parked, now, &mut counts));
            }
            if let Err(e) = self.broker.publish_batch(out).await {
                requeue_all(&batch).await;
                break Err(e);
            }
            for d in &batch {
                ack(d).await;
            }
            stats.released += counts.released;
            stats.kept += counts.kept;
            stats.expired += counts.expired;
        };
        let _ = ch.close(200, "swept".into()).await;
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
        result.map(|()| stats)
    }

    /// Where one parked message goes in a sweep, and the copy that goes there.
    fn swept(
        &self,
        d: &Delivery,
        still_parked: &HashSet<TenantId>,
        now: chrono::DateTime<chrono::Utc>,
        counts: &mut SweepStats,
    ) -> OutMessage {
        let to = |queue: &str, properties: lapin::BasicProperties| OutMessage {
            exchange: "".into(),
            routing_key: short_string(queue),
            body: d.data.clone().into(),
            properties,
        };
        let Ok(job) = self.decode(d) else {
            // Only the relay writes here; should one be unreadable, the worker dead-letters it
            // with the reason.
            counts.released += 1;
            let id = d
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
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
    d: &Delivery,
    job: &Job,
    reason: &str,
    why: &str,
    ttl: Duration,
) -> lapin::BasicProperties {
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

async fn requeue_all(batch: &[Delivery]) {
    for d in batch {
        requeue(d).await;
    }
}

/// A work item's message: its JSON, persistent, `message_id` = content id (at most 255 bytes,
/// checked by [`crate::domain::ContentId`]), headers naming tenant, content type and source.
pub fn encode(item: &WorkItem) -> Result<(Vec<u8>, lapin::BasicProperties), BrokerError> {
    let body = serde_json::to_vec(item).map_err(|e| BrokerError::Amqp(e.to_string()))?;
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

/// Properties of a retry or dead-letter copy: rebuilt from what the relay knows (never the
/// delivery's whole headers table, which could be anything and overflow a frame), the attempt
/// count, and `extra` headers, each capped at [`REASON_CAP`].
fn forwarded_properties(
    d: &Delivery,
    job: Option<&Job>,
    attempt: u32,
    extra: &[(&'static str, &str)],
) -> lapin::BasicProperties {
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
    headers.insert(
        ATTEMPT_HEADER.into(),
        AMQPValue::LongLongInt(i64::from(attempt)),
    );
    for (k, v) in extra {
        header(&mut headers, k, v, REASON_CAP);
    }
    let id = job
        .map(|j| j.item.content_id.as_str().to_string())
        .or_else(|| d.properties.message_id().as_ref().map(|s| s.to_string()))
        .unwrap_or_default();
    json_properties(&id).with_headers(headers)
}

async fn ack(d: &Delivery) {
    if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "Ack failed; RabbitMQ will redeliver the blob (it is de-duplicated).");
    }
}

/// Hands the message back to RabbitMQ for redelivery (only when it cannot be parked in the
/// retry or dead queue).
async fn requeue(d: &Delivery) {
    let _ = d
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    crate::text::capped(&text, 512).into_owned()
}

/// Bounded label values for the dead-letter metric: Microsoft's codes as the API error type
/// labels them, and the relay's own.
fn code_label(code: &str) -> &'static str {
    if let Some(label) = crate::management::ApiError::code_label(code) {
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
        crate::backpressure::DOWNSTREAM_FULL => crate::backpressure::DOWNSTREAM_FULL,
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_go_to_the_shortest_tier_that_holds_their_delay() {
        let names = Names::new("w");
        assert_eq!(
            names.retry_queue_for(Duration::from_millis(200)),
            "w.retry.5s"
        );
        assert_eq!(names.retry_queue_for(Duration::from_secs(5)), "w.retry.5s");
        assert_eq!(names.retry_queue_for(Duration::from_secs(6)), "w.retry.1m");
        assert_eq!(
            names.retry_queue_for(Duration::from_secs(1800)),
            "w.retry.1h"
        );
        assert_eq!(
            names.retry_queue_for(Duration::from_secs(86_400)),
            "w.retry.6h"
        );
    }

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

    #[test]
    fn backoff_grows_caps_and_honours_retry_after_up_to_an_hour() {
        let base = Duration::from_secs(10);
        let max = Duration::from_secs(600);
        for attempt in 1..=12 {
            let d = backoff(base, max, attempt, None);
            let exp = (base * 2u32.pow(attempt - 1)).min(max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {attempt}: {d:?} not in [{:?}, {exp:?}]",
                exp / 2
            );
        }
        assert!(backoff(base, max, 1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
        let absurd = backoff(base, max, 1, Some(Duration::from_secs(100_000_000)));
        assert_eq!(absurd, MAX_RETRY_AFTER);
    }
}
