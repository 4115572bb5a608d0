//! An example consumer of the audit records o365-relay publishes (docs/asyncapi.yaml), with
//! lapin.
//!
//! Declares its own queue, binds it to the relay's topic exchange, acknowledges each message
//! after processing it, and skips the duplicates that at-least-once delivery brings
//! (de-duplication on `message_id` within a bounded window). "Processing" here prints one JSON
//! line per record; put your own work in [`process`].
//!
//! With `--queue-type stream` the queue is a RabbitMQ stream: messages stay after they are
//! acknowledged, and any consumer can read the history again from `--stream-offset`.
//!
//! Standard error: `ready …` once consuming, `duplicate <message_id>` per skipped message, and
//! `stopped: N records, D duplicates` at the end. Stops on SIGTERM or Ctrl-C (exit status 0).

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use std::collections::{HashSet, VecDeque};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser, Debug)]
#[command(about = "Consumes the audit records o365-relay publishes (docs/asyncapi.yaml)")]
struct Args {
    /// RabbitMQ URL (its value is never shown: it may hold a password).
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// The relay's exchange.
    #[arg(long, env = "O365_AMQP_EXCHANGE", default_value = "o365.audit")]
    exchange: String,
    /// This consumer's queue.
    #[arg(long, default_value = "o365.consumer.rust")]
    queue: String,
    /// Binding key, repeatable: `#` (default), `Audit.Exchange.*`, `#.<tenant id>`,
    /// `<replay prefix>.#`.
    #[arg(long = "bind", value_name = "KEY", default_value = "#")]
    bind: Vec<String>,
    #[arg(long, value_enum, default_value_t = QueueType::Quorum)]
    queue_type: QueueType,
    /// Where a stream consumer starts: `first`, `last`, `next`, an offset, or an interval back
    /// from now (`7D`, `12h`, `30m`).
    #[arg(long, default_value = "first", value_parser = stream_offset)]
    stream_offset: AMQPValue,
    /// Unacknowledged messages at once (basic.qos).
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Message ids remembered for de-duplication.
    #[arg(long, default_value_t = 100_000)]
    dedup_window: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum QueueType {
    Quorum,
    Classic,
    Stream,
}

impl QueueType {
    fn name(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
            QueueType::Stream => "stream",
        }
    }
}

/// The `x-stream-offset` consumer argument: a name, an offset number, or an interval back from
/// now that RabbitMQ reads itself (`7D`, `12h`, `30m`, `10s`).
fn stream_offset(value: &str) -> Result<AMQPValue, String> {
    if let Ok(offset) = value.parse::<i64>() {
        return Ok(AMQPValue::LongLongInt(offset));
    }
    let interval = value.len() > 1
        && value[..value.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && value.ends_with(['Y', 'M', 'D', 'h', 'm', 's']);
    if matches!(value, "first" | "last" | "next") || interval {
        return Ok(AMQPValue::LongString(value.into()));
    }
    Err("first, last, next, an offset, or an interval like 7D or 12h".into())
}

/// The last `size` message ids processed; the oldest is forgotten first. A duplicate comes soon
/// after its original (a publish repeated after a lost confirm, a blob retried), so a window of
/// the last ids is enough, and memory stays bounded.
struct RecentIds {
    size: usize,
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl RecentIds {
    fn new(size: usize) -> RecentIds {
        RecentIds {
            size: size.max(1),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn add(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            while self.order.len() > self.size {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// One record: here, a line on standard output. An error stops the consumer before the
/// acknowledgement, so RabbitMQ delivers the message again (to this consumer's next run).
fn process(d: &Delivery) -> anyhow::Result<()> {
    let record: serde_json::Value =
        serde_json::from_slice(&d.data).context("the body is one JSON record")?;
    let line = serde_json::json!({
        "message_id": d.properties.message_id().as_ref().map(|s| s.as_str()),
        "routing_key": d.routing_key.as_str(),
        "replay": header(d, "o365-replay").as_deref() == Some("true"),
        "tenant_id": header(d, "o365-tenant-id"),
        "operation": record.get("Operation"),
        "creation_time": record.get("CreationTime"),
    });
    println!("{line}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut terminate = signal(SignalKind::terminate())?;
    let conn = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("connect to RabbitMQ")?;
    let channel = conn.create_channel().await?;
    // Exactly as the relay declares it, so either may start first.
    channel
        .exchange_declare(
            args.exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .context("declare the exchange")?;
    // A durable queue of our own: records wait here while we are down (a stream keeps them).
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(args.queue_type.name().into()),
    );
    channel
        .queue_declare(
            args.queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            queue_args,
        )
        .await
        .context("declare the queue")?;
    for key in &args.bind {
        channel
            .queue_bind(
                args.queue.as_str().into(),
                args.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("bind the queue with {key}"))?;
    }
    // Bounded in-flight messages; a stream queue refuses consumers without it.
    channel
        .basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consume_args = FieldTable::default();
    if args.queue_type == QueueType::Stream {
        // Where to start reading the stream: every consumer chooses its own.
        consume_args.insert("x-stream-offset".into(), args.stream_offset.clone());
    }
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "o365-consumer".into(),
            BasicConsumeOptions::default(), // manual acknowledgements
            consume_args,
        )
        .await
        .context("consume the queue")?;
    eprintln!(
        "ready: queue {} ({}) bound to {} with {}",
        args.queue,
        args.queue_type.name(),
        args.exchange,
        args.bind.join(", ")
    );

    let mut seen = RecentIds::new(args.dedup_window);
    let (mut records, mut duplicates) = (0u64, 0u64);
    let outcome = loop {
        let delivery = tokio::select! {
            _ = terminate.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("consuming")),
                None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
            },
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_string());
        match &id {
            Some(id) if seen.contains(id) => {
                duplicates += 1;
                eprintln!("duplicate {id}");
            }
            _ => {
                if let Err(e) = process(&delivery) {
                    break Err(e);
                }
                if let Some(id) = &id {
                    seen.add(id);
                }
                records += 1;
            }
        }
        // After processing: a crash before this line means the message comes again.
        if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
            break Err(anyhow::Error::new(e).context("acknowledge"));
        }
    };
    // Unacknowledged messages go back to the queue.
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    eprintln!("stopped: {records} records, {duplicates} duplicates");
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_forgets_the_oldest_id_first() {
        let mut seen = RecentIds::new(2);
        seen.add("a");
        seen.add("b");
        seen.add("a");
        assert!(seen.contains("a") && seen.contains("b"));
        seen.add("c");
        assert!(!seen.contains("a") && seen.contains("b") && seen.contains("c"));
    }

    #[test]
    fn stream_offsets_are_names_numbers_or_intervals() {
        assert_eq!(
            stream_offset("first"),
            Ok(AMQPValue::LongString("first".into()))
        );
        assert_eq!(stream_offset("42"), Ok(AMQPValue::LongLongInt(42)));
        assert_eq!(stream_offset("7D"), Ok(AMQPValue::LongString("7D".into())));
        for bad in ["", "D", "7d", "yesterday", "1.5h"] {
            assert!(stream_offset(bad).is_err(), "{bad}");
        }
    }
}
