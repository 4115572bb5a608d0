//! RabbitMQ: the one owner of lapin. Declares the topology, publishes with confirms (and the
//! mandatory flag, so an unroutable message is an error, not a silent drop), and rebuilds the
//! connection and channels after any failure.
//!
//! Topology (contract.md): topic exchange `O365_AMQP_EXCHANGE`; work queue
//! `O365_AMQP_WORK_QUEUE`; `{work}.retry.{tier}` (5s, 1m, 10m, 1h, 6h), whose messages carry a
//! per-message TTL no longer than their tier and are
//! dead-lettered back into the work queue when it expires (delayed retries); `{work}.dead` for
//! blobs that will not succeed, with the reason in a header.

use crate::config::{QueueType, Settings};
use crate::secret::Secret;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ is unreachable: {0}")]
    Unavailable(String),
    #[error("RabbitMQ refused the message: {0}")]
    Nacked(String),
    #[error("RabbitMQ could not route the message (no queue bound for '{0}')")]
    Unroutable(String),
    #[error("RabbitMQ operation failed: {0}")]
    Amqp(String),
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Amqp(e.to_string())
    }
}

/// Retry tiers. RabbitMQ expires messages only at the head of a queue, so one retry queue
/// would make a 5-second retry wait behind a 30-minute one; with a queue per tier, a message
/// waits at most for the longest delay of its own tier.
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

/// Queue and exchange names.
#[derive(Clone, Debug)]
pub struct Names {
    pub exchange: String,
    pub work: String,
    /// One per entry of [`RETRY_TIERS`].
    pub retry: Vec<String>,
    pub dead: String,
    pub queue_type: QueueType,
}

impl Names {
    pub fn from_settings(s: &Settings) -> Names {
        Names {
            exchange: s.amqp_exchange.clone(),
            work: s.amqp_work_queue.clone(),
            retry: retry_queue_names(&s.amqp_work_queue),
            dead: format!("{}.dead", s.amqp_work_queue),
            queue_type: s.amqp_queue_type,
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
}

struct Live {
    generation: u64,
    connection: Connection,
    publisher: Channel,
}

pub struct Broker {
    url: Secret<String>,
    names: Names,
    live: tokio::sync::Mutex<Option<Live>>,
    generation: AtomicU64,
    topology_declared: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the last connection attempt failed: for a second after it, callers get an
    /// immediate error instead of each waiting on a connect of their own (a webhook request
    /// must answer 503 fast during an outage, not queue behind reconnects).
    failed_at: Mutex<Option<std::time::Instant>>,
}

/// A confirm-mode channel and the connection generation it belongs to.
#[derive(Clone)]
pub struct Publisher {
    pub channel: Channel,
    pub generation: u64,
}

impl Broker {
    pub fn new(settings: &Settings) -> Broker {
        let mut url = settings.amqp_url.expose().clone();
        if !url.contains("heartbeat=") {
            url.push_str(if url.contains('?') {
                "&heartbeat=10"
            } else {
                "?heartbeat=10"
            });
        }
        Broker {
            url: Secret::new(url),
            names: Names::from_settings(settings),
            live: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            topology_declared: AtomicBool::new(false),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
        }
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Opens a new connection (bounded in time).
    pub async fn connect(&self) -> Result<Connection, BrokerError> {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(self.url.expose(), ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.failed(BrokerError::Unavailable(e.to_string()))),
            Err(_) => Err(self.failed(BrokerError::Unavailable(
                "connection attempt timed out".into(),
            ))),
        }
    }

    fn failed(&self, e: BrokerError) -> BrokerError {
        *self.last_error.lock().expect("poisoned") = Some(e.to_string());
        *self.failed_at.lock().expect("poisoned") = Some(std::time::Instant::now());
        e
    }

    /// The last failure, for `/readyz`.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("poisoned").clone()
    }

    /// The shared confirm-mode publishing channel, reconnecting (and re-declaring the topology)
    /// when the previous connection or channel is gone.
    pub async fn publisher(&self) -> Result<Publisher, BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if l.connection.status().connected() && l.publisher.status().connected() {
                return Ok(Publisher {
                    channel: l.publisher.clone(),
                    generation: l.generation,
                });
            }
            tracing::warn!("RabbitMQ connection lost; reconnecting.");
        }
        *live = None;
        let recently_failed = self
            .failed_at
            .lock()
            .expect("poisoned")
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if recently_failed {
            return Err(BrokerError::Unavailable(
                self.last_error().unwrap_or_else(|| "reconnecting".into()),
            ));
        }
        let connection = self.connect().await?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.failed(e.into()))?;
        self.declare_on(&publisher)
            .await
            .map_err(|e| self.failed(e))?;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if generation > 1 {
            tracing::info!("RabbitMQ connection re-established.");
        }
        *self.last_error.lock().expect("poisoned") = None;
        *self.failed_at.lock().expect("poisoned") = None;
        *live = Some(Live {
            generation,
            connection,
            publisher: publisher.clone(),
        });
        Ok(Publisher {
            channel: publisher,
            generation,
        })
    }

    /// A fresh channel on the current connection (consumers own theirs).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        self.publisher().await?;
        let live = self.live.lock().await;
        let l = live
            .as_ref()
            .ok_or_else(|| BrokerError::Unavailable("not connected".into()))?;
        l.connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))
    }

    /// Forgets the connection of `generation` after an error, so the next call reconnects.
    pub async fn invalidate(&self, generation: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.generation == generation) {
            if let Some(l) = live.take() {
                let _ = l.connection.close(320, "reconnecting".into()).await;
            }
        }
    }

    /// Whether the topology was declared on some connection (for `/readyz`).
    pub fn topology_declared(&self) -> bool {
        self.topology_declared.load(Ordering::SeqCst)
    }

    /// Whether a connection is open right now.
    pub async fn is_connected(&self) -> bool {
        let live = self.live.lock().await;
        live.as_ref()
            .is_some_and(|l| l.connection.status().connected() && l.publisher.status().connected())
    }

    fn queue_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(self.names.queue_type.as_str().into()),
        );
        args
    }

    async fn declare_on(&self, ch: &Channel) -> Result<(), BrokerError> {
        let n = &self.names;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        declare_exchange(ch, &n.exchange).await?;
        ch.queue_declare(n.work.as_str().into(), durable, self.queue_args())
            .await?;
        let mut retry_args = self.queue_args();
        retry_args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        retry_args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(n.work.as_str().into()),
        );
        for q in &n.retry {
            ch.queue_declare(q.as_str().into(), durable, retry_args.clone())
                .await?;
        }
        ch.queue_declare(n.dead.as_str().into(), durable, self.queue_args())
            .await?;
        self.topology_declared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Declares the exchange and queues (idempotent).
    pub async fn declare_topology(&self) -> Result<(), BrokerError> {
        self.publisher().await.map(|_| ())
    }

    /// Messages ready in the work queue.
    pub async fn work_queue_depth(&self) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                self.names.work.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Publishes a batch and waits for every confirm. Any nack, unroutable return, or channel
    /// failure fails the whole batch (callers retry it whole: at-least-once).
    pub async fn publish_all(&self, messages: Vec<OutMessage<'_>>) -> Result<(), BrokerError> {
        let p = self.publisher().await?;
        let mut pending = Vec::new();
        for m in messages {
            match publish_one(&p.channel, &m).await {
                Ok(c) => pending.push((m.routing_key.to_string(), c)),
                Err(e) => {
                    self.invalidate(p.generation).await;
                    return Err(e);
                }
            }
        }
        for (rk, c) in pending {
            if let Err(e) = await_confirm(c, &rk).await {
                if matches!(e, BrokerError::Amqp(_) | BrokerError::Unavailable(_)) {
                    self.invalidate(p.generation).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Closes the connection cleanly (shutdown).
    pub async fn close(&self) {
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.publisher.close(200, "shutdown".into()).await;
            let _ = l.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// Declares the audit exchange exactly as the relay does (a durable topic exchange). Whatever
/// binds before the relay starts — consumers, the demo, tests — must declare it identically, or
/// RabbitMQ refuses the second declaration (PRECONDITION_FAILED).
pub async fn declare_exchange(ch: &Channel, exchange: &str) -> Result<(), BrokerError> {
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares `queue` and binds it to every record of `exchange` (`#`), declaring the exchange
/// first: a consumer that exists before the relay publishes (records are published mandatory).
pub async fn bind_all_records(
    ch: &Channel,
    exchange: &str,
    queue: &str,
    options: QueueDeclareOptions,
    arguments: FieldTable,
) -> Result<(), BrokerError> {
    declare_exchange(ch, exchange).await?;
    ch.queue_declare(queue.into(), options, arguments).await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// A message to publish.
pub struct OutMessage<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub properties: BasicProperties,
}

/// Publishes with the mandatory flag; returns the pending confirm.
pub async fn publish_one(
    ch: &Channel,
    m: &OutMessage<'_>,
) -> Result<PublisherConfirm, BrokerError> {
    ch.basic_publish(
        m.exchange.into(),
        m.routing_key.into(),
        BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        },
        m.body,
        m.properties.clone(),
    )
    .await
    .map_err(|e| BrokerError::Amqp(e.to_string()))
}

/// Awaits a confirm: `Ack(None)` is success; `Ack(Some(returned))` means the mandatory message
/// was unroutable (library-notes.md); a nack or a closed channel is a failure.
pub async fn await_confirm(c: PublisherConfirm, routing_key: &str) -> Result<(), BrokerError> {
    match tokio::time::timeout(CONFIRM_TIMEOUT, c).await {
        Err(_) => Err(BrokerError::Amqp("publisher confirm timed out".into())),
        Ok(Err(e)) => Err(BrokerError::Amqp(e.to_string())),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::Unroutable(routing_key.to_string())),
        Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked(routing_key.to_string())),
        Ok(Ok(Confirmation::NotRequested)) => {
            Err(BrokerError::Amqp("channel is not in confirm mode".into()))
        }
    }
}

/// Persistent JSON message properties shared by every message the relay sends.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("o365-relay".into())
}

/// Adds a string header.
pub fn header(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_go_to_the_shortest_tier_that_holds_their_delay() {
        let names = Names {
            exchange: "x".into(),
            work: "w".into(),
            retry: retry_queue_names("w"),
            dead: "w.dead".into(),
            queue_type: QueueType::Quorum,
        };
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
