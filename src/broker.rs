//! RabbitMQ: the one owner of lapin. Keeps one connection (rebuilt after any failure, with the
//! topology declared again on each new connection), and publishes batches with publisher
//! confirms and the mandatory flag, so an unroutable message is an error, never a silent drop.
//!
//! **Why every batch gets a channel of its own.** RabbitMQ reports an unroutable mandatory
//! message with a `basic.return` followed by the `basic.ack` of the same message, and lapin hands
//! a return to whichever confirm of the channel resolves next. With several tasks publishing on
//! one channel, a record's return was reported on a webhook enqueue or a retry publish of another
//! task (and the record counted as published: lost). So [`Broker::publish_batch`] checks out a
//! confirm channel for the batch alone, awaits *every* confirm of the batch, and only then hands
//! the channel back to the pool: a return can only land on a confirm of the batch that caused it.
//! A channel whose confirms did not all resolve (timeout, channel error) is closed, not reused.
//!
//! **Frames.** The whole content header (properties and headers table) must fit in one frame
//! (`frame_max`, 128 KiB by default) or RabbitMQ closes the *connection*. Header values are
//! therefore capped ([`MAX_HEADER_VALUE`], with [`TRUNCATION_MARKER`]), and AMQP short strings
//! (message ids, names) are never built from unchecked data ([`short_string`]).

use crate::secret::Secret;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(15);
/// Idle confirm channels kept for reuse; more are opened on demand and closed after use.
const POOL_IDLE: usize = 64;
/// Batches publishing at once per process (each holds a channel; RabbitMQ allows 2,047).
const MAX_PUBLISHING: usize = 256;

/// The longest header value the relay writes, in bytes. Far below `frame_max` even with every
/// header at its cap.
pub const MAX_HEADER_VALUE: usize = 1024;
/// Ends a header value that was cut to its cap.
pub const TRUNCATION_MARKER: &str = "…[truncated]";
/// AMQP short strings (message id, routing key, names) hold at most 255 bytes.
pub const SHORT_STRING_MAX: usize = 255;

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

/// A queue the relay declares, with its arguments.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub name: String,
    pub arguments: FieldTable,
}

/// What is declared on every new connection: the audit exchange and the relay's queues.
#[derive(Clone, Debug)]
pub struct Topology {
    pub exchange: String,
    pub queues: Vec<QueueSpec>,
}

struct Live {
    generation: u64,
    connection: Arc<Connection>,
}

/// A confirm-mode channel and the connection generation it was opened on.
struct ConfirmChannel {
    channel: Channel,
    generation: u64,
}

pub struct Broker {
    url: Secret<String>,
    topology: Topology,
    live: tokio::sync::Mutex<Option<Live>>,
    generation: AtomicU64,
    topology_declared: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the last connection attempt failed: for a second after it, callers get an
    /// immediate error instead of each waiting on a connect of their own (a webhook request
    /// must answer 503 fast during an outage, not queue behind reconnects).
    failed_at: Mutex<Option<std::time::Instant>>,
    idle: Mutex<Vec<ConfirmChannel>>,
    publishing: tokio::sync::Semaphore,
    connections_opened: prometheus::IntCounter,
}

impl Broker {
    /// `connections_opened` counts every connection made (a rise after the first means the
    /// connection was lost or closed by RabbitMQ).
    pub fn new(
        amqp_url: &Secret<String>,
        topology: Topology,
        connections_opened: prometheus::IntCounter,
    ) -> Broker {
        let mut url = amqp_url.expose().clone();
        if !url.contains("heartbeat=") {
            url.push_str(if url.contains('?') {
                "&heartbeat=10"
            } else {
                "?heartbeat=10"
            });
        }
        Broker {
            url: Secret::new(url),
            topology,
            live: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            topology_declared: AtomicBool::new(false),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            publishing: tokio::sync::Semaphore::new(MAX_PUBLISHING),
            connections_opened,
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Opens a new connection (bounded in time), not shared with anything else.
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

    /// The shared connection, reconnecting (and declaring the topology) when it is gone.
    async fn connection(&self) -> Result<(Arc<Connection>, u64), BrokerError> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref() {
            if l.connection.status().connected() {
                return Ok((l.connection.clone(), l.generation));
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
        let connection = Arc::new(self.connect().await?);
        self.connections_opened.inc();
        let ch = connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))?;
        self.declare_on(&ch).await.map_err(|e| self.failed(e))?;
        let _ = ch.close(200, "declared".into()).await;
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        if generation > 1 {
            tracing::info!("RabbitMQ connection re-established.");
        }
        *self.last_error.lock().expect("poisoned") = None;
        *self.failed_at.lock().expect("poisoned") = None;
        *live = Some(Live {
            generation,
            connection: connection.clone(),
        });
        Ok((connection, generation))
    }

    /// A fresh channel on the shared connection (consumers own theirs).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let (connection, _) = self.connection().await?;
        connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))
    }

    /// Forgets the connection of `generation` after an error, so the next call reconnects.
    async fn invalidate(&self, generation: u64) {
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

    /// Connects (declaring the topology) unless connected: `/readyz` and start-up use it.
    pub async fn ensure_connected(&self) -> Result<(), BrokerError> {
        self.connection().await.map(|_| ())
    }

    async fn declare_on(&self, ch: &Channel) -> Result<(), BrokerError> {
        declare_exchange(ch, &self.topology.exchange).await?;
        for q in &self.topology.queues {
            ch.queue_declare(
                q.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                q.arguments.clone(),
            )
            .await?;
        }
        self.topology_declared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Messages ready in `queue`.
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                short_string(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        let _ = ch.close(200, "ok".into()).await;
        Ok(q?.message_count())
    }

    async fn checkout(&self) -> Result<ConfirmChannel, BrokerError> {
        let (connection, generation) = self.connection().await?;
        loop {
            let idle = self.idle.lock().expect("poisoned").pop();
            match idle {
                Some(c) if c.generation == generation && c.channel.status().connected() => {
                    return Ok(c)
                }
                Some(_) => continue,
                None => break,
            }
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| self.failed(e.into()))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| self.failed(e.into()))?;
        Ok(ConfirmChannel {
            channel,
            generation,
        })
    }

    fn check_in(&self, c: ConfirmChannel) {
        let mut idle = self.idle.lock().expect("poisoned");
        if idle.len() < POOL_IDLE {
            idle.push(c);
        } else {
            drop(idle);
            tokio::spawn(async move {
                let _ = c.channel.close(200, "surplus".into()).await;
            });
        }
    }

    /// Publishes a batch on a channel of its own and waits for every confirm. Any nack,
    /// unroutable return or channel failure fails the whole batch (callers retry it whole:
    /// at-least-once).
    pub async fn publish_batch(&self, messages: &[OutMessage<'_>]) -> Result<(), BrokerError> {
        if messages.is_empty() {
            return Ok(());
        }
        let _permit = self
            .publishing
            .acquire()
            .await
            .map_err(|_| BrokerError::Unavailable("closing".into()))?;
        let ch = self.checkout().await?;
        let mut pending = Vec::with_capacity(messages.len());
        for m in messages {
            match publish_one(&ch.channel, m).await {
                Ok(c) => pending.push(c),
                Err(e) => {
                    // Confirms already pending die with the channel; nothing of it is reused.
                    let _ = ch.channel.close(200, "publish failed".into()).await;
                    if !ch.channel.status().connected() {
                        self.invalidate(ch.generation).await;
                    }
                    return Err(e);
                }
            }
        }
        let mut first_error = None;
        let mut channel_ok = true;
        for (c, m) in pending.into_iter().zip(messages) {
            if let Err(e) = await_confirm(c, m.routing_key).await {
                if !matches!(e, BrokerError::Unroutable(_) | BrokerError::Nacked(_)) {
                    channel_ok = false;
                }
                first_error.get_or_insert(e);
            }
        }
        if channel_ok {
            self.check_in(ch);
        } else {
            let _ = ch.channel.close(200, "confirm failed".into()).await;
            self.invalidate(ch.generation).await;
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Closes the connection cleanly (shutdown).
    pub async fn close(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("poisoned"));
        for c in idle {
            let _ = c.channel.close(200, "shutdown".into()).await;
        }
        if let Some(l) = self.live.lock().await.take() {
            let _ = l.connection.close(200, "shutdown".into()).await;
        }
    }
}

/// Declares the audit exchange exactly as the relay does (a durable topic exchange). Whatever
/// binds before the relay starts — consumers, the demo, tests — must declare it identically, or
/// RabbitMQ refuses the second declaration (PRECONDITION_FAILED).
pub async fn declare_exchange(ch: &Channel, exchange: &str) -> Result<(), BrokerError> {
    ch.exchange_declare(
        short_string(exchange),
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
    ch.queue_declare(short_string(queue), options, arguments)
        .await?;
    ch.queue_bind(
        short_string(queue),
        short_string(exchange),
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
async fn publish_one(ch: &Channel, m: &OutMessage<'_>) -> Result<PublisherConfirm, BrokerError> {
    ch.basic_publish(
        short_string(m.exchange),
        short_string(m.routing_key),
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
/// was unroutable; a nack or a closed channel is a failure.
async fn await_confirm(c: PublisherConfirm, routing_key: &str) -> Result<(), BrokerError> {
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

/// An AMQP short string that cannot panic: text of more than 255 bytes becomes
/// `sha256:<64 hex digits>` of the text. Callers with a documented derivation of their own
/// (record ids) apply it first; this is the last line of defence.
pub fn short_string(s: &str) -> ShortString {
    if s.len() <= SHORT_STRING_MAX {
        ShortString::from(s)
    } else {
        ShortString::from(sha256_id(s.as_bytes()))
    }
}

/// `sha256:` and the lower-case hex SHA-256 of `bytes` (71 bytes).
pub fn sha256_id(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = openssl::sha::sha256(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Persistent JSON message properties shared by every message the relay sends.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(short_string(message_id))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("o365-relay".into())
}

/// `value` cut to at most `cap` bytes (at a character boundary), ending with
/// [`TRUNCATION_MARKER`] when it was cut.
pub fn capped(value: &str, cap: usize) -> Cow<'_, str> {
    if value.len() <= cap {
        return Cow::Borrowed(value);
    }
    let mut end = cap.saturating_sub(TRUNCATION_MARKER.len());
    while end > 0 && !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATION_MARKER}", &value[..end]))
}

/// Adds a string header, capped at `cap` bytes (never above [`MAX_HEADER_VALUE`]).
pub fn header(table: &mut FieldTable, key: &'static str, value: &str, cap: usize) {
    let v = capped(value, cap.min(MAX_HEADER_VALUE));
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
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
    fn long_values_are_capped_at_a_character_boundary_with_a_marker() {
        let v = "é".repeat(1000);
        let c = capped(&v, 101);
        assert!(c.len() <= 101, "{} bytes", c.len());
        assert!(c.ends_with(TRUNCATION_MARKER));
        assert_eq!(capped("short", 101), "short");
    }

    #[test]
    fn short_strings_never_exceed_255_bytes() {
        let long = "x".repeat(300);
        let s = short_string(&long);
        assert_eq!(s.as_str().len(), 71);
        assert!(s.as_str().starts_with("sha256:"));
        assert_eq!(short_string("abc").as_str(), "abc");
        assert_eq!(short_string(&long), short_string(&long));
    }
}
