//! The record sink: publishes audit records to the topic exchange (`O365_AMQP_EXCHANGE`) and owns
//! what consumers see of them — routing key `{contentType}.{tenantId}`, the record's bytes as the
//! body, persistent JSON properties with `message_id` = the record id, and the `o365-*` headers.
//!
//! Confirms: [`RecordSink::publish`] returns only when RabbitMQ confirmed every record of the
//! batch. Records are published mandatory: when no queue is bound for their routing key,
//! RabbitMQ returns them and the batch fails as [`BrokerError::Unroutable`] — the blob is retried
//! later and nothing is counted as published. A return is attributed by its routing key (see
//! [`crate::broker`]), and all records of a batch share the blob's routing key, so a return
//! always fails the batch it belongs to and never another blob's.
//!
//! Header caps: record fields copied into headers (`RecordType`, `Workload`, `Operation`,
//! `CreationTime`) are cut to [`RECORD_HEADER_CAP`] bytes with a truncation marker — Microsoft's
//! values are short, and a huge one must not make the header frame exceed `frame_max` (which
//! closes the connection). The body is never cut.

use crate::broker::{header, json_properties, short_string, Broker, BrokerError, OutMessage};
use crate::domain::WorkItem;
use crate::records::AuditRecord;
use lapin::types::FieldTable;
use std::sync::Arc;

/// Cap of each header value copied from a record field (bytes).
pub const RECORD_HEADER_CAP: usize = 256;

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
    pub fn properties(blob: &WorkItem, record: &AuditRecord) -> lapin::BasicProperties {
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
        let routing_key = short_string(&Self::routing_key(blob));
        let exchange = short_string(&self.exchange);
        let messages = records
            .iter()
            .map(|r| OutMessage {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                body: r.raw.clone(),
                properties: Self::properties(blob, r),
            })
            .collect();
        self.broker.publish_batch(messages).await
    }
}
