//! The topology: the audit exchange and the relay's queues, declared on every new connection
//! (a node that lost its definitions, or a fresh cluster, gets them again), queues declared
//! later (the parked queue, on first use), and the depth of a queue.
//!
//! The exchange is declared exactly one way ([`declare_exchange`]): whatever declares it
//! differently — a consumer, the demo, a test — is refused by RabbitMQ (PRECONDITION_FAILED).

use super::{short_string, Broker, BrokerError};
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};
use std::sync::atomic::Ordering;

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

impl Broker {
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the topology was declared on some connection (for `/readyz`).
    pub fn topology_declared(&self) -> bool {
        self.topology_declared.load(Ordering::SeqCst)
    }

    /// Declares the topology on `ch` (a new connection's first channel).
    pub(super) async fn declare_on(&self, ch: &Channel) -> Result<(), BrokerError> {
        declare_exchange(ch, &self.topology.exchange).await?;
        for q in &self.topology.queues {
            declare_durable(ch, q).await?;
        }
        self.topology_declared.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Messages ready in `queue` (which must exist).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let depth = passive_depth(&ch, queue).await;
        let _ = ch.close(200, "ok".into()).await;
        depth
    }

    /// Declares a durable queue outside the topology (creating it when absent: a passive
    /// look-up of a missing queue closes the channel with an error in RabbitMQ's log), and
    /// returns how many messages it holds.
    pub async fn declare_queue(&self, spec: &QueueSpec) -> Result<u32, BrokerError> {
        let ch = self.channel().await?;
        let depth = declare_durable(&ch, spec).await;
        let _ = ch.close(200, "declared".into()).await;
        depth
    }
}

/// Declares a durable queue with its arguments; returns its depth.
async fn declare_durable(ch: &Channel, q: &QueueSpec) -> Result<u32, BrokerError> {
    let declared = ch
        .queue_declare(
            short_string(&q.name),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            q.arguments.clone(),
        )
        .await?;
    Ok(declared.message_count())
}

/// The depth of an existing queue, looked up passively on `ch`.
pub(super) async fn passive_depth(ch: &Channel, queue: &str) -> Result<u32, BrokerError> {
    let q = ch
        .queue_declare(
            short_string(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
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
