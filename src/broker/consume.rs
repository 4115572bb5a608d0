//! Taking messages: a consumer on a channel of its own (the work queue's), and the messages
//! it yields — their body and properties ([`Message`]) and how they are settled ([`Delivery`]:
//! ack, or hand back to RabbitMQ). The rest of the relay reads and settles messages through
//! these types, never through lapin's.

use super::{header_str, short_string, Broker, BrokerError};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Acker, BasicProperties, Channel};

/// A message taken from a queue: its body and properties, as RabbitMQ delivered them.
#[derive(Clone, Debug)]
pub struct Message {
    pub body: bytes::Bytes,
    pub properties: BasicProperties,
}

impl Message {
    pub(super) fn of(delivery: lapin::message::Delivery) -> (Message, Acker) {
        (
            Message {
                body: delivery.data.into(),
                properties: delivery.properties,
            },
            delivery.acker,
        )
    }

    /// A string header ([`header_str`]).
    pub fn header(&self, key: &str) -> Option<String> {
        header_str(&self.properties, key)
    }

    /// The message id, as text.
    pub fn message_id(&self) -> Option<String> {
        super::message_id(&self.properties)
    }
}

/// A consumed message, to be settled exactly once: [`Delivery::ack`] or
/// [`Delivery::requeue`]. Left unsettled, RabbitMQ redelivers it when its channel closes.
pub struct Delivery {
    message: Message,
    acker: Acker,
}

impl std::ops::Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Delivery {
    /// Done with: RabbitMQ deletes it.
    pub async fn ack(&self) -> Result<(), BrokerError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    /// Handed back to RabbitMQ for redelivery.
    pub async fn requeue(&self) -> Result<(), BrokerError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
        Ok(())
    }
}

/// A consumer of one queue, on a channel of its own.
pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
}

impl Broker {
    /// Consumes `queue` with at most `prefetch` messages unacknowledged at once.
    pub async fn consume(&self, queue: &str, prefetch: u16) -> Result<Consumer, BrokerError> {
        let channel = self.channel().await?;
        channel
            .basic_qos(prefetch.max(1), BasicQosOptions::default())
            .await?;
        let inner = channel
            .basic_consume(
                short_string(queue),
                format!("o365-relay-{}", uuid::Uuid::new_v4().simple()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Consumer { channel, inner })
    }
}

impl Consumer {
    /// The next delivery; an error when the channel or connection failed, `None` when
    /// RabbitMQ cancelled the consumer. Cancel-safe (for `select!`).
    pub async fn next(&mut self) -> Option<Result<Delivery, BrokerError>> {
        let next = self.inner.next().await?;
        Some(
            next.map(|d| {
                let (message, acker) = Message::of(d);
                Delivery { message, acker }
            })
            .map_err(|e| BrokerError::Amqp(e.to_string())),
        )
    }

    /// Closes the consumer's channel (its unacknowledged deliveries go back to the queue).
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }
}
