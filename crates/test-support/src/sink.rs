//! What downstream consumers see: a queue bound `#` to the relay's topic exchange (every
//! record), read back as raw deliveries, as decoded [`SinkMessage`]s, counted in the
//! background by message id ([`Tally`]) or only counted ([`Counter`], cheap enough for a
//! benchmark's measurements).

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the sink's queue is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkQueue {
    /// A plain queue; the test deletes it (see [`crate::ResourceGuard`]).
    Plain,
    /// A durable queue: it outlives a broker connection the test cuts.
    Durable,
    /// Exclusive and auto-deleted: it goes with the connection.
    Temporary,
    /// A quorum queue: durable and replicated on every node of a cluster, so it outlives the
    /// node it was declared on.
    Quorum,
    /// A consumer's length-limited queue: durable, at most `max_length` messages, and
    /// `x-overflow` = `overflow` (`reject-publish`: RabbitMQ nacks a publish while it is full;
    /// `reject-publish-dlx`: the same, and the refused copy goes to `dead_letter_queue`, which
    /// is declared too, through the default exchange).
    Limited {
        max_length: i64,
        overflow: &'static str,
        dead_letter_queue: Option<&'static str>,
    },
}

/// A queue bound to every record (`#`) of a topic exchange, on a connection of its own.
pub struct Sink {
    conn: Connection,
    channel: Channel,
    exchange: String,
    queue: String,
}

impl Sink {
    /// Declares `exchange` as the relay declares it (topic, durable, no arguments), declares
    /// `queue` and binds it `#`. Call it before the relay publishes: records are published
    /// mandatory, and a record no queue takes comes back to the relay.
    pub async fn bind(
        amqp_url: &str,
        exchange: &str,
        queue: &str,
        kind: SinkQueue,
    ) -> Result<Sink, lapin::Error> {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let options = QueueDeclareOptions {
            durable: matches!(
                kind,
                SinkQueue::Durable | SinkQueue::Quorum | SinkQueue::Limited { .. }
            ),
            exclusive: kind == SinkQueue::Temporary,
            auto_delete: kind == SinkQueue::Temporary,
            ..Default::default()
        };
        let mut arguments = FieldTable::default();
        if kind == SinkQueue::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        if let SinkQueue::Limited {
            max_length,
            overflow,
            dead_letter_queue,
        } = kind
        {
            arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(max_length));
            arguments.insert("x-overflow".into(), AMQPValue::LongString(overflow.into()));
            if let Some(dlq) = dead_letter_queue {
                channel
                    .queue_declare(
                        dlq.into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                arguments.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString("".into()),
                );
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(dlq.into()),
                );
            }
        }
        channel
            .queue_declare(queue.into(), options, arguments)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Sink {
            conn,
            channel,
            exchange: exchange.to_string(),
            queue: queue.to_string(),
        })
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The channel the queue was declared on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The sink's connection (for other channels: depth checks, other queues).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// A consumer of the sink queue (auto-ack), for a test that reads as records arrive.
    pub async fn consume(&self) -> Result<Consumer, lapin::Error> {
        self.channel
            .basic_consume(
                self.queue.as_str().into(),
                format!("sink-{}", crate::unique()).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
    }

    /// Takes records until `want` arrived (or `wait` passed), then listens `linger` more to
    /// catch extras (duplicates).
    pub async fn drain(&self, want: usize, wait: Duration, linger: Duration) -> Vec<Delivery> {
        drain(&self.conn, &self.queue, want, wait, linger).await
    }

    /// [`Sink::drain`], decoded.
    pub async fn messages(
        &self,
        want: usize,
        wait: Duration,
        linger: Duration,
    ) -> Vec<SinkMessage> {
        self.drain(want, wait, linger)
            .await
            .iter()
            .map(SinkMessage::from)
            .collect()
    }

    /// Counts every record by message id in the background, from now until the returned
    /// handle is dropped.
    pub async fn tally(&self) -> Result<Tally, lapin::Error> {
        let mut consumer = self.consume().await?;
        let received = Arc::new(Mutex::new(Received::default()));
        let r = received.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let id = message_id(&d);
                let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
                r.total += 1;
                *r.per_id.entry(id).or_insert(0) += 1;
            }
        });
        Ok(Tally { received, task })
    }

    /// Counts every record in the background, from now until the returned handle is dropped:
    /// one atomic add per delivery, no decoding.
    pub async fn counter(&self) -> Result<Counter, lapin::Error> {
        let mut consumer = self.consume().await?;
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(_)) = consumer.next().await {
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Counter { count, task })
    }

    /// Closes the channel and the connection (a temporary queue goes with them).
    pub async fn close(self) {
        let _ = self.channel.close(200, "bye".into()).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

/// What a [`Tally`] counted.
#[derive(Debug, Default)]
pub struct Received {
    /// Deliveries per message id (the record's `Id`); more than one is a duplicate.
    pub per_id: HashMap<String, u32>,
    /// Every delivery.
    pub total: u64,
}

/// The background count of a [`Sink`]; stops counting when dropped.
pub struct Tally {
    pub received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background count of a [`Sink`] ([`Sink::counter`]); stops counting when dropped.
pub struct Counter {
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Counter {
    /// Deliveries counted since the start or the last [`Counter::reset`].
    pub fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Counts from zero again.
    pub fn reset(&self) {
        self.count.store(0, Ordering::Relaxed);
    }

    /// Waits until `want` deliveries were counted, looking every 2 ms (a benchmark times it);
    /// when they were, or `Err` saying how many arrived when `timeout` passed first.
    pub async fn wait_for(&self, want: u64, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get() >= want {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "only {} of {want} messages arrived within {timeout:?}",
                    self.get()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One record as a consumer reads it.
#[derive(Clone, Debug)]
pub struct SinkMessage {
    pub routing_key: String,
    pub message_id: Option<String>,
    /// Headers whose value is text or an integer, as text.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl SinkMessage {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }
}

impl From<&Delivery> for SinkMessage {
    fn from(d: &Delivery) -> SinkMessage {
        let headers = d
            .properties
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_string(), value_text(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        SinkMessage {
            routing_key: d.routing_key.as_str().to_string(),
            message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
            headers,
            body: d.data.clone(),
        }
    }
}

/// A delivery's `message_id` (the record's `Id`), empty when it has none.
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default()
}

/// A header of a message as text (text and integer values; `None` for others or when absent).
pub fn header(props: &BasicProperties, key: &str) -> Option<String> {
    value_text(props.headers().as_ref()?.inner().get(key)?)
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Takes every message from `queue` (auto-ack) until `want` arrived (or `wait` passed), then
/// keeps listening for `linger` to catch extras.
pub async fn drain(
    conn: &Connection,
    queue: &str,
    want: usize,
    wait: Duration,
    linger: Duration,
) -> Vec<Delivery> {
    let ch = conn.create_channel().await.expect("open an AMQP channel");
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            format!("t-{}", crate::unique()).into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the queue");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => got.push(d),
            _ => break,
        }
    }
    let until = tokio::time::Instant::now() + linger;
    while let Ok(Some(Ok(d))) = tokio::time::timeout_at(until, consumer.next()).await {
        got.push(d);
    }
    let _ = ch.close(200, "ok".into()).await;
    got
}

/// Messages in `queue` right now (passive declare); `None` when it does not exist or the
/// broker cannot be reached.
pub async fn depth(conn: &Connection, queue: &str) -> Option<u32> {
    let ch = conn.create_channel().await.ok()?;
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, "ok".into()).await;
    Some(q.message_count())
}
