//! The consume loop: deliveries of the work queue run as jobs, at most `concurrency` at once,
//! each settled exactly once whatever its handler does — returns, fails or panics.

use super::settle::requeue;
use super::{Job, Outcome, WorkQueue};
use crate::broker::{BrokerError, Delivery};
use futures_util::FutureExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

impl WorkQueue {
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
        let mut consumer = self
            .broker
            .consume(
                &self.names.work,
                concurrency.clamp(1, u16::MAX as usize) as u16,
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
                    Some(Err(e)) => break Err(e),
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
        consumer.close().await;
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
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    crate::domain::text::capped(&text, 512).into_owned()
}
