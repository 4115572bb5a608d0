//! Rotation: the one way the relay rewrites a queue in place — the parked sweep
//! ([`crate::pipeline::work_queue::WorkQueue::sweep_parked`]) and the dead-letter tools
//! ([`crate::pipeline::dead_letters`]) both use it.
//!
//! Why it is built so: docs/DESIGN.md, "broker/rotate".

use super::topology::passive_depth;
use super::{short_string, Broker, BrokerError, Message, OutMessage};
use futures_util::future::join_all;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::{Acker, Channel};

/// What becomes of one message taken by a rotation.
pub enum Fate {
    /// This copy is published (any exchange, routing key and properties); the original is
    /// deleted once RabbitMQ confirmed it.
    Publish(Box<OutMessage>),
    /// The same message (body and properties) goes back to the tail of the queue.
    Keep,
    /// Deleted, without a copy.
    Drop,
}

/// What a caller counts over a rotation: each batch starts from `Default` and is added to the
/// total only once its copies were confirmed and its originals acknowledged.
pub trait Tally: Default {
    fn add(&mut self, batch: Self);
}

impl Tally for () {
    fn add(&mut self, _batch: ()) {}
}

impl Broker {
    /// Rotates `queue` (see docs/DESIGN.md, "broker/rotate"), `batch` messages per confirm round: `decide` says
    /// what becomes of each message and counts it in its batch's tally; the tallies of settled
    /// batches are added to `total` (also when a later batch fails). Returns how many messages
    /// were taken and settled.
    pub async fn rotate<T, F>(
        &self,
        queue: &str,
        batch: usize,
        total: &mut T,
        mut decide: F,
    ) -> Result<u64, BrokerError>
    where
        T: Tally,
        F: FnMut(&Message, &mut T) -> Fate,
    {
        let channel = self.channel().await?;
        let result = self
            .rotate_on(&channel, queue, batch.max(1), total, &mut decide)
            .await;
        let _ = channel.close(200, "rotated".into()).await;
        result
    }

    async fn rotate_on<T, F>(
        &self,
        channel: &Channel,
        queue: &str,
        batch: usize,
        total: &mut T,
        decide: &mut F,
    ) -> Result<u64, BrokerError>
    where
        T: Tally,
        F: FnMut(&Message, &mut T) -> Fate,
    {
        let name = short_string(queue);
        let mut left = u64::from(passive_depth(channel, queue).await?);
        let mut settled = 0u64;
        while left > 0 {
            let mut taken: Vec<(Message, Acker)> = Vec::with_capacity(batch);
            while (taken.len() as u64) < left.min(batch as u64) {
                match channel
                    .basic_get(name.clone(), BasicGetOptions { no_ack: false })
                    .await
                {
                    Ok(Some(m)) => taken.push(Message::of(m.delivery)),
                    Ok(None) => break,
                    Err(e) => {
                        hand_back(&taken).await;
                        return Err(e.into());
                    }
                }
            }
            if taken.is_empty() {
                break;
            }
            left -= taken.len() as u64;
            let mut tally = T::default();
            let copies: Vec<OutMessage> = taken
                .iter()
                .filter_map(|(m, _)| match decide(m, &mut tally) {
                    Fate::Publish(copy) => Some(*copy),
                    Fate::Keep => Some(OutMessage {
                        exchange: "".into(),
                        routing_key: name.clone(),
                        body: m.body.clone(),
                        properties: m.properties.clone(),
                    }),
                    Fate::Drop => None,
                })
                .collect();
            // Copies first, confirmed; only then are the originals acknowledged.
            if let Err(e) = self.publish_batch(copies).await {
                hand_back(&taken).await;
                return Err(e);
            }
            let acks = taken.iter().map(|(_, a)| a.ack(BasicAckOptions::default()));
            let acked = first_error(join_all(acks).await);
            // The copies exist: the batch counts even when an ack failed (its originals then
            // come back to the queue as duplicates, which the workers skip).
            total.add(tally);
            settled += taken.len() as u64;
            if let Err(e) = acked {
                tracing::warn!(error = %e, queue, "Ack failed after the copies were confirmed; RabbitMQ keeps the originals too (duplicates).");
                return Err(e);
            }
        }
        Ok(settled)
    }
}

/// The first failure among acknowledgements, if any.
fn first_error(results: Vec<lapin::Result<bool>>) -> Result<(), BrokerError> {
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), |e| Err(e.into()))
}

/// Hands a batch back to RabbitMQ (nack with requeue); a failure here leaves them to the
/// channel's closing, which hands them back too.
async fn hand_back(taken: &[(Message, Acker)]) {
    for (_, acker) in taken {
        let _ = acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await;
    }
}
