//! RabbitMQ: the connection, the topic exchange records go to, and the work queue.

use super::parse::Parser;
use super::tls::{self, ClientIdentity, PemFile};
use crate::secret::Secret;
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
    pub url: Secret<String>,
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
    let url = p.text(
        "AMQP_URL",
        raw.amqp_url,
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        p.fail("AMQP_URL", "must start with amqp:// or amqps://");
    }
    let is_tls = url.starts_with("amqps://");
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
        url: Secret::new(url),
        exchange,
        work_queue,
        queue_type,
        ca,
        client,
    }
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
