//! RabbitMQ: the endpoints of the broker (one URL, or several of one cluster), the topic
//! exchange records go to, and the work queue.

use super::parse::Parser;
use super::tls::{self, ClientIdentity, PemFile};
use crate::domain::secret::Secret;
use lapin::uri::AMQPUri;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    amqp_url: Option<String>,
    amqp_exchange: Option<String>,
    amqp_work_queue: Option<String>,
    amqp_queue_type: Option<String>,
    amqp_ca_path: Option<String>,
    amqp_client_cert_path: Option<String>,
    amqp_client_key_path: Option<String>,
}

const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One endpoint of `O365_AMQP_URL`: the URL (it carries the password, so it is a [`Secret`])
/// and where it points, `host:port` — the only part logs and `o365-relay check` show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AmqpEndpoint {
    pub url: Secret<String>,
    pub address: String,
}

impl AmqpEndpoint {
    /// Checks one URL with the parser lapin connects with, so that a URL accepted at start
    /// cannot fail to parse at a reconnect. The reason never quotes the URL (lapin's own
    /// message does, password included).
    pub fn parse(url: &str) -> Result<AmqpEndpoint, &'static str> {
        if url.is_empty() {
            return Err("is empty (expected one or more comma-separated amqp:// or amqps:// URLs of one cluster)");
        }
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err("must start with amqp:// or amqps://");
        }
        let named_host =
            url::Url::parse(url).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        let uri: AMQPUri = match url.parse() {
            Ok(uri) if named_host => uri,
            _ => return Err("is not a valid AMQP URL (expected amqp[s]://user:password@host:port/vhost, with a host)"),
        };
        Ok(AmqpEndpoint {
            url: Secret::new(url.to_string()),
            address: format!("{}:{}", uri.authority.host, uri.authority.port),
        })
    }

    pub fn is_tls(&self) -> bool {
        self.url.expose().starts_with("amqps://")
    }
}

/// `O365_AMQP_QUEUE_TYPE`: the type of the queues the relay declares (work, retry tiers, dead,
/// parked).
///
/// - **Quorum** (the default; recommended, and the only choice on a cluster): each queue is a
///   Raft group with a member on every node of the cluster — checked on three nodes by
///   `tests/cluster/rabbit.rs` — so it survives a node, and a publisher confirm means a
///   majority of members has the message. `x-quorum-initial-group-size` is not set, on
///   purpose: without it RabbitMQ places a member on every node the cluster has when the queue
///   is declared, which is right for the usual three or five; a number fixed here would be
///   wrong for other sizes, and membership is the cluster operator's to change
///   (`rabbitmq-queues grow` / `shrink` after adding or removing nodes).
/// - **Classic**: the queue lives on one node (the one the relay was connected to when it
///   declared it) and is not replicated. When that node dies the queue is unavailable until
///   the node returns (with its messages only if its disk survived). Use it only on a single
///   broker.
///
/// Known limit with either: a retry tier hands an expired message back to the work queue by
/// dead-lettering, which RabbitMQ does at most once; should the work queue have no leader at
/// that instant (a node dying), the message is dropped. The blob was never marked relayed, so
/// reconciliation enqueues it again (within `O365_RECONCILE_LOOKBACK`). Switching the tiers to
/// at-least-once dead-lettering needs other queue arguments, which RabbitMQ refuses on queues
/// that already exist (a migration of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueType {
    Quorum,
    Classic,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

pub(super) struct Amqp {
    /// At least one (when the configuration is valid), in the order given.
    pub endpoints: Vec<AmqpEndpoint>,
    pub exchange: String,
    pub work_queue: String,
    pub queue_type: QueueType,
    /// The private CA that signs the broker's certificate (`O365_AMQP_CA_PATH`, amqps://
    /// only), trusted in addition to the system's CA store.
    pub ca: Option<PemFile>,
    /// The client certificate presented to the broker (`O365_AMQP_CLIENT_CERT_PATH` and
    /// `O365_AMQP_CLIENT_KEY_PATH`, amqps:// only).
    pub client: Option<ClientIdentity>,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Amqp {
    let raw: Raw = p.raw(vars);
    let value = p.text("AMQP_URL", raw.amqp_url, DEFAULT_URL);
    let endpoints = endpoints(p, &value);
    let is_tls = endpoints.first().is_some_and(AmqpEndpoint::is_tls);
    let ca = tls::ca_file(p, "AMQP_CA_PATH", raw.amqp_ca_path);
    if ca.is_some() && !is_tls {
        p.fail(
            "AMQP_CA_PATH",
            "is set but O365_AMQP_URL is not amqps:// (the CA is only used with TLS)",
        );
    }
    let client = tls::client_identity(
        p,
        ("AMQP_CLIENT_CERT_PATH", raw.amqp_client_cert_path),
        ("AMQP_CLIENT_KEY_PATH", raw.amqp_client_key_path),
    );
    if client.is_some() && !is_tls {
        p.fail(
            "AMQP_CLIENT_CERT_PATH",
            "is set but O365_AMQP_URL is not amqps:// (a client certificate needs TLS)",
        );
    }
    let exchange = name(p, "AMQP_EXCHANGE", raw.amqp_exchange, "o365.audit");
    let work_queue = name(p, "AMQP_WORK_QUEUE", raw.amqp_work_queue, "o365.content");
    let queue_type = p.choice(
        "AMQP_QUEUE_TYPE",
        raw.amqp_queue_type,
        &[
            ("quorum", QueueType::Quorum),
            ("classic", QueueType::Classic),
        ],
        "a queue type",
    );
    Amqp {
        endpoints,
        exchange,
        work_queue,
        queue_type,
        ca,
        client,
    }
}

/// `O365_AMQP_URL`: one URL, or several comma-separated URLs of the nodes of one cluster (the
/// broker connects to them in turn, [`crate::broker`]). Every entry is checked; a problem names
/// the entry by its position, never by its text (it holds a password).
fn endpoints(p: &mut Parser, value: &str) -> Vec<AmqpEndpoint> {
    let entries: Vec<&str> = value.split(',').map(str::trim).collect();
    let mut endpoints = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match AmqpEndpoint::parse(entry) {
            Ok(e) => endpoints.push(e),
            Err(why) if entries.len() == 1 => p.fail("AMQP_URL", why),
            Err(why) => p.fail(
                "AMQP_URL",
                format!("entry {} of {}: {why}", i + 1, entries.len()),
            ),
        }
    }
    if endpoints.iter().any(AmqpEndpoint::is_tls) && !endpoints.iter().all(AmqpEndpoint::is_tls) {
        p.fail(
            "AMQP_URL",
            "mixes amqp:// and amqps:// URLs (the nodes of one cluster are reached the same way; the TLS settings apply to all of them)",
        );
    }
    endpoints
}

/// An exchange or queue name: a short string of at most 255 bytes, leaving room for the
/// `.retry.…` and `.dead` suffixes; names starting with `amq.` are reserved (AMQP 0-9-1,
/// `exchange.declare` and `queue.declare`).
fn name(p: &mut Parser, var: &str, v: Option<String>, default: &str) -> String {
    let name = p.text(var, v, default);
    if name.len() > 200 || name.starts_with("amq.") {
        p.fail(
            var,
            "must be at most 200 bytes and must not start with 'amq.' (reserved by RabbitMQ)",
        );
    }
    name
}
