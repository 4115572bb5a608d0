//! RabbitMQ: the connection, the topic exchange records go to, and the work queue.

use super::parse::Parser;
use crate::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    amqp_url: Option<String>,
    amqp_exchange: Option<String>,
    amqp_work_queue: Option<String>,
    amqp_queue_type: Option<String>,
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
