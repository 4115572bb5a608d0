//! The work queue: the one owner of work items on RabbitMQ — their message format, the queue,
//! its retry tiers and its dead-letter queue.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/work_queue".

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
pub use names::{retry_queue_names, QueueNames, RETRY_TIERS};
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
    names: QueueNames,
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
        names: QueueNames,
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

    pub fn names(&self) -> &QueueNames {
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
