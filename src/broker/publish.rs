//! Publishing: one shared confirm channel, the mandatory flag (an unroutable message is an
//! error, never a silent drop), and the [`Ledger`] that answers each submission with what
//! RabbitMQ said about *its* messages.
//!
//! Why it is built so: docs/DESIGN.md, "broker/publish".

use super::ledger::{Ledger, Slot};
use super::{Broker, BrokerError};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

/// A message to publish. Names are short strings built with [`super::short_string`].
pub struct OutMessage {
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub body: bytes::Bytes,
    pub properties: BasicProperties,
}

impl Broker {
    /// Publishes messages and waits until RabbitMQ confirmed every one. Any nack, unroutable
    /// return or channel failure fails the whole submission (callers retry it whole:
    /// at-least-once).
    pub async fn publish_batch(&self, messages: Vec<OutMessage>) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let publisher = self.publisher().await?;
        // Start every publish of the submission in one synchronous step under the order lock:
        // a lapin publish takes its delivery tag and queues its frames on its first poll, so the
        // submission's messages are contiguous on the channel and in ledger order — without
        // holding a lock while lapin's I/O thread writes them (that serialised every publisher).
        let mut publishing: Vec<PublishFuture<'_>> = messages
            .iter()
            .map(|m| Box::pin(publish_one(&publisher.channel, m)) as PublishFuture<'_>)
            .collect();
        let mut published: Vec<Option<Result<PublisherConfirm, BrokerError>>> =
            publishing.iter().map(|_| None).collect();
        let mut opened = None;
        std::future::poll_fn(|cx| {
            let _order = publisher.order.lock().expect("poisoned");
            opened = Some(
                publisher
                    .ledger
                    .open(messages.iter().map(|m| &m.routing_key)),
            );
            for (f, out) in publishing.iter_mut().zip(published.iter_mut()) {
                if let std::task::Poll::Ready(r) = f.as_mut().poll(cx) {
                    *out = Some(r);
                }
            }
            std::task::Poll::Ready(())
        })
        .await;
        let (seq, answer) = opened.expect("opened in the first poll");
        let slot = Slot::new(&publisher.ledger, seq, answer);
        // One deadline for the whole submission, publishes and confirms: a broker that stops
        // answering (a node that hangs rather than dies) fails the submission after
        // CONFIRM_TIMEOUT, not after CONFIRM_TIMEOUT per message.
        let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
        let mut broken = false;
        let mut refused = false;
        let mut confirms = Vec::with_capacity(messages.len());
        for (f, out) in publishing.iter_mut().zip(published) {
            let r = match out {
                Some(r) => r,
                None => tokio::time::timeout_at(deadline, f.as_mut())
                    .await
                    .unwrap_or_else(|_| {
                        broken = true;
                        Err(BrokerError::Unavailable("publish timed out".into()))
                    }),
            };
            match r {
                Ok(c) => confirms.push(c),
                Err(e) => publisher.ledger.fail(seq, e.to_string()),
            }
        }
        drop(publishing);
        // Every confirm is awaited: on a lost connection or channel lapin resolves each
        // outstanding one with an error, so the submission fails as a whole and its caller
        // publishes it again (at-least-once); none is taken for a success.
        for c in confirms {
            match tokio::time::timeout_at(deadline, c).await {
                Ok(Ok(Confirmation::Ack(None))) => {}
                Ok(Ok(Confirmation::Ack(Some(r)))) => {
                    publisher.ledger.returned(&r.delivery.routing_key)
                }
                Ok(Ok(Confirmation::Nack(r))) => {
                    refused = true;
                    if let Some(r) = r {
                        publisher.ledger.returned(&r.delivery.routing_key);
                    }
                    publisher.ledger.nacked(seq);
                }
                Ok(Ok(Confirmation::NotRequested)) => {
                    broken = true;
                    publisher
                        .ledger
                        .fail(seq, "channel is not in confirm mode".into());
                }
                Ok(Err(e)) => {
                    broken = true;
                    publisher.ledger.fail(seq, e.to_string());
                }
                Err(_) => {
                    broken = true;
                    publisher
                        .ledger
                        .fail(seq, "publisher confirm timed out".into());
                }
            }
        }
        if broken {
            // The pairing of returns on this channel is unknowable from here on.
            self.retire(&publisher).await;
        } else if refused {
            // A channel keeps a view of each quorum queue it publishes to. Opened on a node
            // while the queue's leader was being elected elsewhere (its node had just died),
            // that view can stay stale, and the channel then nacked every publish to that
            // queue — seen on a 3-node cluster: the work queue refused the webhook's blobs for
            // 90 s while records flowed on the same channel. A new channel looks the queue up
            // afresh; the old one closes when its last submission is answered.
            self.set_aside(&publisher).await;
        }
        slot.answer().await
    }

    /// Stops handing out `p` to new submissions (the next opens a new channel on the same
    /// connection); `p` closes itself when the submissions holding it are done.
    async fn set_aside(&self, p: &Arc<Publisher>) {
        let mut current = self.publisher.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, p)) {
            *current = None;
        }
    }

    /// The shared confirm channel, opened (with a fresh ledger) when there is none.
    async fn publisher(&self) -> Result<Arc<Publisher>, BrokerError> {
        let mut current = self.publisher.lock().await;
        if let Some(p) = current.as_ref() {
            if p.channel.status().connected() {
                return Ok(p.clone());
            }
        }
        let (channel, generation) = self.confirm_channel().await?;
        let p = Arc::new(Publisher {
            channel,
            generation,
            order: Mutex::new(()),
            ledger: Ledger::default(),
        });
        *current = Some(p.clone());
        Ok(p)
    }

    async fn retire(&self, p: &Arc<Publisher>) {
        self.set_aside(p).await;
        let _ = p.channel.close(200, "confirm failed".into()).await;
        self.invalidate(p.generation).await;
    }

    /// A new confirm-mode channel on the shared connection, and the connection's generation.
    async fn confirm_channel(&self) -> Result<(Channel, u64), BrokerError> {
        let (channel, generation) = self.channel_and_generation().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.noted(e.into()))?;
        Ok((channel, generation))
    }
}

/// The shared confirm channel and its ledger.
pub(super) struct Publisher {
    channel: Channel,
    generation: u64,
    /// Held while one submission's publishes are started, so they are contiguous.
    order: Mutex<()>,
    ledger: Ledger,
}

type PublishFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<PublisherConfirm, BrokerError>> + Send + 'a>,
>;

/// Publishes with the mandatory flag; returns the pending confirm.
async fn publish_one(ch: &Channel, m: &OutMessage) -> Result<PublisherConfirm, BrokerError> {
    ch.basic_publish(
        m.exchange.clone(),
        m.routing_key.clone(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        &m.body,
        m.properties.clone(),
    )
    .await
    .map_err(|e| BrokerError::Amqp(e.to_string()))
}
