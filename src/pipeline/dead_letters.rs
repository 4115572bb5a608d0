//! The dead-letter queue as an operator's tool: list, requeue and purge dead blobs, filtered by
//! tenant and reason (`o365-relay dead-letters …`, `/admin/dead-letters`).
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/dead_letters".

use crate::broker::{header_i64, short_string, Broker, BrokerError, Fate, Message, OutMessage};
use crate::domain::{TenantId, WorkItem};
use crate::pipeline::work_queue::{encode, QueueNames};
use serde::Serialize;
use std::sync::Arc;

/// Messages taken per round (one confirm round trip per batch of copies).
const BATCH: usize = 100;
/// The longest reason kept in a listing (the header itself is capped at 1 KiB).
const REASON_SHOWN: usize = 300;

/// Which dead letters an operation applies to.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub tenant: Option<TenantId>,
    /// Matches the error code exactly or appears in the reason (case-insensitive).
    pub reason: Option<String>,
    /// At most this many matching letters (all when `None`).
    pub limit: Option<usize>,
}

impl Filter {
    fn matches(&self, letter: &DeadLetter) -> bool {
        if let Some(t) = &self.tenant {
            if letter.tenant_id.as_deref() != Some(t.as_str()) {
                return false;
            }
        }
        if let Some(r) = &self.reason {
            let r = r.to_lowercase();
            let code = letter.code.as_deref().unwrap_or("").to_lowercase();
            let reason = letter.reason.as_deref().unwrap_or("").to_lowercase();
            if code != r && !reason.contains(&r) {
                return false;
            }
        }
        true
    }
}

/// One dead letter as the operator sees it (from its headers; the body is the work item).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    pub content_id: Option<String>,
    pub tenant_id: Option<String>,
    pub content_type: Option<String>,
    /// `o365-error-code`: Microsoft's code or the relay's (`malformed_record`, `expired`, …).
    pub code: Option<String>,
    /// `o365-dead-reason`, cut to a few hundred bytes.
    pub reason: Option<String>,
    pub dead_at: Option<String>,
    pub attempt: Option<i64>,
}

impl DeadLetter {
    fn read(m: &Message) -> DeadLetter {
        DeadLetter {
            content_id: m.message_id(),
            tenant_id: m.header("o365-tenant-id"),
            content_type: m.header("o365-content-type"),
            code: m.header("o365-error-code"),
            reason: m
                .header("o365-dead-reason")
                .map(|r| crate::domain::text::capped(&r, REASON_SHOWN).into_owned()),
            dead_at: m.header("o365-dead-at"),
            attempt: header_i64(&m.properties, "o365-attempt"),
        }
    }
}

/// What a walk did.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Walked {
    /// Dead letters looked at (those in the queue when the walk started).
    pub examined: u64,
    /// Of those, the ones the filter selected (up to its limit).
    pub matched: u64,
    /// Requeued or purged (0 for a listing).
    pub moved: u64,
    /// Selected for requeueing but not a readable work item: left in the dead queue.
    pub unreadable: u64,
    /// The selected letters (listing only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub letters: Vec<DeadLetter>,
}

/// What a walk does with the letters its filter selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Shows them (and keeps them).
    List,
    /// Sends them back to the work queue as fresh work items.
    Requeue,
    /// Deletes them.
    Purge,
}

/// The dead-letter queue of one work queue.
pub struct DeadLetters {
    broker: Arc<Broker>,
    names: QueueNames,
}

impl DeadLetters {
    pub fn new(broker: Arc<Broker>, names: QueueNames) -> DeadLetters {
        DeadLetters { broker, names }
    }

    /// Walks the letters present now (see docs/DESIGN.md, "pipeline/dead_letters"), doing `action` with those `filter`
    /// selects; a listing rotates the queue, it never empties it.
    pub async fn walk(&self, filter: &Filter, action: Action) -> Result<Walked, BrokerError> {
        let mut walked = Walked::default();
        self.broker
            .rotate(&self.names.dead, BATCH, &mut (), |m, ()| {
                walked.examined += 1;
                let selected = filter.limit.is_none_or(|n| walked.matched < n as u64)
                    && filter.matches(&DeadLetter::read(m));
                if selected {
                    walked.matched += 1;
                }
                match (selected, action) {
                    (true, Action::List) => {
                        walked.letters.push(DeadLetter::read(m));
                        Fate::Keep
                    }
                    (true, Action::Purge) => {
                        walked.moved += 1;
                        Fate::Drop
                    }
                    (true, Action::Requeue) => match self.to_work(m) {
                        Some(copy) => {
                            walked.moved += 1;
                            Fate::Publish(Box::new(copy))
                        }
                        None => {
                            walked.unreadable += 1;
                            Fate::Keep
                        }
                    },
                    (false, _) => Fate::Keep,
                }
            })
            .await?;
        if action != Action::List && walked.moved > 0 {
            tracing::info!(action = ?action, examined = walked.examined, moved = walked.moved, "Dead letters handled by an operator.");
        }
        Ok(walked)
    }

    /// The work item as a fresh job on the work queue; `None` when the body is not one.
    fn to_work(&self, m: &Message) -> Option<OutMessage> {
        let item: WorkItem = serde_json::from_slice(&m.body).ok()?;
        let (body, properties) = encode(&item).ok()?;
        Some(OutMessage {
            exchange: "".into(),
            routing_key: short_string(&self.names.work),
            body: body.into(),
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(tenant: &str, code: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            content_id: Some("c".into()),
            tenant_id: Some(tenant.into()),
            content_type: Some("Audit.General".into()),
            code: Some(code.into()),
            reason: Some(reason.into()),
            dead_at: None,
            attempt: Some(3),
        }
    }

    #[test]
    fn a_filter_selects_by_tenant_and_by_code_or_words_of_the_reason() {
        let t = TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap();
        let mine = letter(
            t.as_str(),
            "AF20051",
            "gave up after 8 attempts: content expired",
        );
        let other = letter(
            "1b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11",
            "malformed_record",
            "1 of 9 records are not JSON text",
        );
        let by_tenant = Filter {
            tenant: Some(t.clone()),
            ..Filter::default()
        };
        assert!(by_tenant.matches(&mine) && !by_tenant.matches(&other));
        let by_code = Filter {
            reason: Some("af20051".into()),
            ..Filter::default()
        };
        assert!(by_code.matches(&mine) && !by_code.matches(&other));
        let by_words = Filter {
            reason: Some("NOT JSON".into()),
            ..Filter::default()
        };
        assert!(!by_words.matches(&mine) && by_words.matches(&other));
        assert!(Filter::default().matches(&mine) && Filter::default().matches(&other));
    }
}
