//! The queues of one work queue, all named from `O365_AMQP_WORK_QUEUE`: the work queue, its
//! retry tiers, the dead-letter queue and the parked queue — and the topology the broker
//! declares for them.
//!
//! Retry tiers: RabbitMQ expires messages only at the head of a queue, so one retry queue would
//! make a 5-second retry wait behind a 30-minute one; with a queue per tier, a message waits at
//! most for the longest delay of its own tier.

use crate::broker::{argument, FieldTable, QueueSpec, Topology};
use crate::config::QueueType;
use std::time::Duration;

/// Retry tiers: (longest delay, queue suffix).
pub const RETRY_TIERS: [(Duration, &str); 5] = [
    (Duration::from_secs(5), "5s"),
    (Duration::from_secs(60), "1m"),
    (Duration::from_secs(600), "10m"),
    (Duration::from_secs(3600), "1h"),
    (Duration::from_secs(6 * 3600), "6h"),
];

/// The retry queues of a work queue, shortest tier first.
pub fn retry_queue_names(work: &str) -> Vec<String> {
    RETRY_TIERS
        .iter()
        .map(|(_, t)| format!("{work}.retry.{t}"))
        .collect()
}

/// The queue names derived from `O365_AMQP_WORK_QUEUE`.
#[derive(Clone, Debug)]
pub struct QueueNames {
    pub work: String,
    /// One per entry of [`RETRY_TIERS`].
    pub retry: Vec<String>,
    pub dead: String,
    /// Jobs of parked tenants (declared when the first job is parked).
    pub parked: String,
}

impl QueueNames {
    pub fn new(work: &str) -> QueueNames {
        QueueNames {
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
        argument(&mut args, "x-queue-type", queue_type.as_str());
        let mut retry_args = args.clone();
        argument(&mut retry_args, "x-dead-letter-exchange", "");
        argument(&mut retry_args, "x-dead-letter-routing-key", &self.work);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_go_to_the_shortest_tier_that_holds_their_delay() {
        let names = QueueNames::new("w");
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
}
