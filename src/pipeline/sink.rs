//! The record sink: publishes audit records to the topic exchange (`O365_AMQP_EXCHANGE`) and owns
//! what consumers see of them — routing key `{contentType}.{tenantId}`, the record's bytes as the
//! body, persistent JSON properties with `message_id` = the record id, and the `o365-*` headers.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/sink".

use crate::broker::{
    header, json_properties, short_string, BasicProperties, Broker, BrokerError, FieldTable,
    OutMessage,
};
use crate::domain::WorkItem;
use crate::pipeline::records::AuditRecord;
use std::sync::Arc;
use tracing::Instrument;

/// Cap of each header value copied from a record field (bytes).
pub const RECORD_HEADER_CAP: usize = 256;

/// The header that marks a replayed record (`o365-relay replay`).
pub const REPLAY_HEADER: &str = "o365-replay";

/// How records are published: live (the relay's normal path) or as a replay of history — the
/// same message with `o365-replay: true`, and optionally under `{prefix}.` so one consumer can
/// take history without the others seeing it twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publication<'a> {
    Live,
    Replay { routing_prefix: Option<&'a str> },
}

/// Checks a replay routing-key prefix: 1–64 of `[A-Za-z0-9_-]` (no dots and no wildcards, so
/// `{prefix}.#` binds exactly the replayed records).
pub fn check_routing_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "routing prefix {prefix:?}: 1 to 64 letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

pub struct RecordSink {
    broker: Arc<Broker>,
    exchange: String,
}

impl RecordSink {
    pub fn new(broker: Arc<Broker>, exchange: &str) -> RecordSink {
        RecordSink {
            broker,
            exchange: exchange.to_string(),
        }
    }

    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// `{contentType}.{tenantId}`: both validated, so at most 63 bytes.
    pub fn routing_key(blob: &WorkItem) -> String {
        format!("{}.{}", blob.content_type, blob.tenant_id)
    }

    /// The properties of one record's message.
    pub fn properties(blob: &WorkItem, record: &AuditRecord) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in blob.header_pairs() {
            header(&mut h, k, v, RECORD_HEADER_CAP);
        }
        header(
            &mut h,
            "o365-content-id",
            blob.content_id.as_str(),
            RECORD_HEADER_CAP,
        );
        header(
            &mut h,
            "o365-record-type",
            &record.record_type,
            RECORD_HEADER_CAP,
        );
        header(&mut h, "o365-workload", &record.workload, RECORD_HEADER_CAP);
        header(
            &mut h,
            "o365-operation",
            &record.operation,
            RECORD_HEADER_CAP,
        );
        header(
            &mut h,
            "o365-creation-time",
            &record.creation_time,
            RECORD_HEADER_CAP,
        );
        json_properties(&record.id).with_headers(h)
    }

    /// Publishes records of one blob and waits until RabbitMQ confirmed every one.
    pub async fn publish(
        &self,
        blob: &WorkItem,
        records: &[&AuditRecord],
    ) -> Result<(), BrokerError> {
        self.publish_as(blob, records, Publication::Live).await
    }

    /// [`RecordSink::publish`], live or as a replay.
    pub async fn publish_as(
        &self,
        blob: &WorkItem,
        records: &[&AuditRecord],
        publication: Publication<'_>,
    ) -> Result<(), BrokerError> {
        let routing_key = match publication {
            Publication::Replay {
                routing_prefix: Some(prefix),
            } => format!("{prefix}.{}", Self::routing_key(blob)),
            _ => Self::routing_key(blob),
        };
        let routing_key = short_string(&routing_key);
        let exchange = short_string(&self.exchange);
        let replay = matches!(publication, Publication::Replay { .. });
        // Tracing on: one span for the batch, its context in every record (`traceparent`).
        let span = crate::ops::trace_context::publish_span(blob, records.len());
        let messages = records
            .iter()
            .map(|r| {
                let mut properties = Self::properties(blob, r);
                if replay || !span.is_none() {
                    let mut headers = properties.headers().clone().unwrap_or_default();
                    if replay {
                        header(&mut headers, REPLAY_HEADER, "true", RECORD_HEADER_CAP);
                    }
                    crate::ops::trace_context::inject(&mut headers, &span);
                    properties = properties.with_headers(headers);
                }
                OutMessage {
                    exchange: exchange.clone(),
                    routing_key: routing_key.clone(),
                    body: r.raw.clone(),
                    properties,
                }
            })
            .collect();
        self.broker.publish_batch(messages).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routing_prefix_is_one_plain_word() {
        for ok in ["replay", "siem-backfill", "new_consumer_2"] {
            assert!(check_routing_prefix(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a.b", "#", "*", "with space", &"x".repeat(65)] {
            assert!(check_routing_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
