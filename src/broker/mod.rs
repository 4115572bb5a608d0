//! RabbitMQ: the one owner of lapin. Nothing outside this folder opens a channel, declares,
//! publishes, takes or acknowledges a message (`tests/architecture.rs` checks it); the rest of
//! the relay says *what* it wants — publish these messages, consume that queue, rotate this
//! one — and the broker does it with the safety every caller needs: publisher confirms, the
//! mandatory flag, acknowledgements only after the copy was confirmed, reconnects.
//!
//! Why it is built so: docs/DESIGN.md, "broker".

mod connection;
mod consume;
mod headers;
mod ledger;
mod publish;
mod rotate;
mod topology;

pub use connection::{probe, Connected};
pub use consume::{Consumer, Delivery, Message};
pub use headers::{
    argument, header, header_i64, header_int, header_str, json_properties, message_id, sha256_id,
    short_string, MAX_HEADER_VALUE, SHORT_STRING_MAX,
};
pub use lapin::types::FieldTable;
pub use lapin::BasicProperties;
pub use publish::OutMessage;
pub use rotate::{Fate, Tally};
pub use topology::{bind_all_records, declare_exchange, QueueSpec, Topology};

use crate::config::AmqpEndpoint;
use connection::{Endpoint, Live, TlsFiles};
use publish::Publisher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};

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

pub struct Broker {
    /// `O365_AMQP_URL`: one URL, or the nodes of one cluster, tried in turn.
    endpoints: Vec<Endpoint>,
    /// Where the next connection attempt starts: the endpoint after the one connected to last
    /// (or after the last that failed), so a reconnect moves on to another node instead of
    /// knocking on the one that just went away — as other clients' host lists do.
    next_endpoint: AtomicUsize,
    /// The endpoint of the shared connection (`host:port`), while connected.
    connected_to: Mutex<Option<String>>,
    /// The client property `connection_name`: which process, and what it does, as RabbitMQ's
    /// connection list shows it (`rabbitmqctl list_connections client_properties`).
    connection_name: String,
    /// With amqps://: the private CA and client certificate, if any ([`Broker::with_tls`]).
    tls: Option<TlsFiles>,
    topology: Topology,
    live: tokio::sync::Mutex<Option<Live>>,
    generation: AtomicU64,
    topology_declared: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// When the last connection attempt failed: for a second after it, callers get an
    /// immediate error instead of each waiting on a connect of their own (a webhook request
    /// must answer 503 fast during an outage, not queue behind reconnects).
    failed_at: Mutex<Option<std::time::Instant>>,
    connections_opened: prometheus::IntCounter,
    /// The one shared confirm channel: one channel lets RabbitMQ confirm many messages at once
    /// (measured: four channels, or a channel per batch, cost a fifth to a third of ingest).
    publisher: tokio::sync::Mutex<Option<Arc<Publisher>>>,
}

impl Broker {
    /// `endpoints` are `O365_AMQP_URL`'s, in order; `connection_name` names every connection
    /// this broker opens; `connections_opened` counts every connection made (a rise after the
    /// first means the connection was lost or closed by RabbitMQ).
    pub fn new(
        endpoints: &[AmqpEndpoint],
        connection_name: impl Into<String>,
        topology: Topology,
        connections_opened: prometheus::IntCounter,
    ) -> Broker {
        Broker {
            endpoints: endpoints.iter().map(Endpoint::new).collect(),
            next_endpoint: AtomicUsize::new(0),
            connected_to: Mutex::new(None),
            connection_name: connection_name.into(),
            tls: None,
            topology,
            live: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
            topology_declared: AtomicBool::new(false),
            last_error: Mutex::new(None),
            failed_at: Mutex::new(None),
            connections_opened,
            publisher: tokio::sync::Mutex::new(None),
        }
    }
}
