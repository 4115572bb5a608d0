//! The work queue: the one owner of work items on RabbitMQ — their message format, the queue,
//! its retry tiers and its dead-letter queue.
//!
//! Sources ([`crate::pipeline::webhook`], [`crate::pipeline::reconciler`]) call [`WorkQueue::enqueue`], which returns
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
//!   the tenant's turn ([`crate::pipeline::scheduling`]) is not a failure, so it never leads to the
//!   dead-letter queue — unless the content would expire at Microsoft first (dead, `expired`;
//!   `downstream_full` when it waited for a consumer's full queue, [`crate::pipeline::backpressure`]);
//! - [`Outcome::Dead`] → a copy goes to `{work}.dead` with the code and reason in headers, then ack;
//! - [`Outcome::Park`] → the job's tenant is parked ([`crate::tenancy::health`]): a copy goes to
//!   `{work}.parked` without counting an attempt, expiring into `{work}.dead` when its content
//!   expires at Microsoft, then ack; [`WorkQueue::sweep_parked`] moves it back when the tenant
//!   works again;
//! - a handler that **panics** is settled as dead with code `panic` (and counted): a delivery is
//!   never left unacked to hold a prefetch slot forever;
//! - when the copy cannot be published (RabbitMQ trouble), the delivery is handed back to
//!   RabbitMQ (nack + requeue) — never dropped.
//!
//! By concern: `names` (the queues and their topology), `job` (what a handler gets and
//! returns), `message` (the message format), `retry` (backoff), `consume` (the loop),
//! `settle` (an outcome applied), `park` (parked jobs and their sweep) and `in_flight`
//! (the Redis markers that keep reconciliation from queueing a second copy). Every RabbitMQ
//! operation goes through [`crate::broker`].

mod consume;
mod in_flight;
mod job;
mod message;
mod names;
mod park;
mod retry;
mod settle;

pub use in_flight::in_flight_guard;
pub use job::{Job, Outcome};
pub use message::{encode, REASON_CAP};
pub use names::{retry_queue_names, Names, RETRY_TIERS};
pub use park::{parked_ttl, SweepStats};
pub use retry::{backoff, RetryPolicy, MAX_RETRY_AFTER};

use crate::broker::{short_string, Broker, BrokerError, OutMessage};
use crate::domain::WorkItem;
use crate::microsoft::notification::ContentRules;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

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
            .map(crate::ops::trace_context::enqueue_span)
            .collect();
        let out = items
            .iter()
            .zip(&spans)
            .map(|(item, span)| {
                encode(item).map(|(body, properties)| OutMessage {
                    exchange: "".into(),
                    routing_key: work.clone(),
                    body: body.into(),
                    properties: crate::ops::trace_context::with_trace_context(properties, span),
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
}
