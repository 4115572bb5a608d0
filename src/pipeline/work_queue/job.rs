//! What a consumer sees of the work queue: a [`Job`] in, an [`Outcome`] out — the one way a
//! handler tells the queue how to settle the delivery (see [`super`]).

use crate::domain::WorkItem;
use std::time::Duration;

/// A work item taken from the queue.
#[derive(Debug, Clone)]
pub struct Job {
    pub item: WorkItem,
    /// Failed attempts before this one (0 on the first).
    pub attempt: u32,
    /// When it was deferred ([`Outcome::Defer`]): the turn it was deferred to.
    pub not_before: Option<chrono::DateTime<chrono::Utc>>,
    /// The trace context its message carried ([`crate::ops::trace_context`]; empty when off).
    pub trace: crate::ops::trace_context::Carried,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Try again later; `after` is Microsoft's `Retry-After` when it sent one.
    Retry {
        after: Option<Duration>,
        code: String,
        error: String,
    },
    /// Not now: come back after `delay` without counting an attempt (`reason` is a metric
    /// label, [`crate::pipeline::scheduling`]).
    Defer {
        delay: Duration,
        reason: &'static str,
    },
    /// Will not succeed: park it in the dead-letter queue with the reason.
    Dead {
        code: String,
        reason: String,
    },
    /// The tenant is parked: set the job aside, without counting an attempt, until the tenant
    /// works again (`reason`: why the tenant is parked).
    Park {
        reason: String,
    },
}

impl Outcome {
    pub fn retry(after: Option<Duration>, code: impl Into<String>, error: impl ToString) -> Self {
        Outcome::Retry {
            after,
            code: code.into(),
            error: error.to_string(),
        }
    }

    pub fn dead(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Outcome::Dead {
            code: code.into(),
            reason: reason.into(),
        }
    }

    pub fn park(reason: impl Into<String>) -> Self {
        Outcome::Park {
            reason: reason.into(),
        }
    }
}
