//! The W3C trace context (`traceparent`, `tracestate`) in AMQP headers: put into a work item's
//! message at enqueue, read back by the worker, and put into every published record so that a
//! consumer can continue the trace.
//!
//! Only when tracing is on ([`crate::ops::telemetry`]: an OTLP endpoint is configured): off, every
//! function here returns at once and no header is added — a record's headers are exactly the
//! documented ones (docs/asyncapi.yaml, `traceparent` optional).
//!
//! Spans: `webhook.receive` (one per request, [`crate::pipeline::webhook`]) → `work_queue.enqueue` (one
//! per blob, [`enqueue_span`]) → `blob.fetch` (the worker, [`continue_trace`]) →
//! `record.publish` (one per batch of published records, [`publish_span`]). A replay
//! (`o365-relay replay`) is one trace too: `replay` ([`replay_span`]) → `blob.fetch` (one per
//! blob, [`replay_blob_span`]) → `record.publish`.

use crate::broker::{header, header_str, BasicProperties, FieldTable};
use crate::domain::{Source, TenantId, WorkItem};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The headers of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// A `traceparent` is 55 bytes; a `tracestate` at most 32 entries of 256 bytes; both fit.
const CAP: usize = 512;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Set once by [`crate::ops::telemetry::init`] when spans are exported.
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint is configured).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of one blob's enqueue, with its tenant, content type and content id: a child of
/// the current span (the webhook request), or the root of a trace of its own when the blob
/// comes from reconciliation. Disabled (no cost) when tracing is off.
pub fn enqueue_span(item: &WorkItem) -> Span {
    if !enabled() {
        return Span::none();
    }
    match item.source {
        Source::Webhook => tracing::info_span!(
            "work_queue.enqueue",
            tenant_id = %item.tenant_id,
            content_type = %item.content_type,
            content_id = %item.content_id,
            source = item.source.as_str(),
        ),
        _ => tracing::info_span!(
            parent: None,
            "work_queue.enqueue",
            tenant_id = %item.tenant_id,
            content_type = %item.content_type,
            content_id = %item.content_id,
            source = item.source.as_str(),
        ),
    }
}

/// `properties` with the trace context of `span` in their headers (unchanged when tracing is
/// off or the span is not sampled).
pub fn with_trace_context(properties: BasicProperties, span: &Span) -> BasicProperties {
    if !enabled() || span.is_none() {
        return properties;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    if carrier.is_empty() {
        return properties;
    }
    let mut headers = properties.headers().clone().unwrap_or_default();
    insert(&mut headers, &carrier);
    properties.with_headers(headers)
}

/// Puts the `traceparent` of `span` into a published record's `headers` (nothing when tracing
/// is off). Only the documented header (docs/asyncapi.yaml): the relay's traces start at its
/// webhook, so there is never a `tracestate` to pass on.
pub fn inject(headers: &mut FieldTable, span: &Span) {
    if !enabled() || span.is_none() {
        return;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACESTATE);
    insert(headers, &carrier);
}

fn insert(headers: &mut FieldTable, carrier: &HashMap<String, String>) {
    if let Some(v) = carrier.get(TRACEPARENT) {
        header(headers, TRACEPARENT, v, CAP);
    }
    if let Some(v) = carrier.get(TRACESTATE).filter(|v| !v.is_empty()) {
        header(headers, TRACESTATE, v, CAP);
    }
}

/// The trace context a work item's message carries (empty when it carries none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried(HashMap<String, String>);

impl Carried {
    /// Reads `traceparent` and `tracestate` from a delivery's properties (nothing when tracing
    /// is off: a context is only ever continued by a relay that exports it).
    pub fn from_properties(properties: &BasicProperties) -> Carried {
        if !enabled() {
            return Carried::default();
        }
        let mut map = HashMap::new();
        for key in [TRACEPARENT, TRACESTATE] {
            if let Some(v) = header_str(properties, key) {
                map.insert(key.to_string(), v);
            }
        }
        Carried(map)
    }

    /// Puts the carried context back into `headers` (a retry, deferred or parked copy of the
    /// work item); nothing when it carried none.
    pub fn put(&self, headers: &mut FieldTable) {
        insert(headers, &self.0);
    }
}

/// Makes `span` (the worker's `blob.fetch`) a child of the context the work item carried; a
/// work item without one (enqueued by a relay with tracing off) starts a trace of its own.
pub fn continue_trace(span: &Span, carried: &Carried) {
    if !enabled() || span.is_none() || carried.0.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&carried.0);
    let _ = span.set_parent(parent);
}

/// The root span of one replay: every blob it re-publishes, and so every replayed record's
/// `traceparent`, belongs to its trace. Disabled (no cost) when tracing is off.
pub fn replay_span(
    tenant: &TenantId,
    since: &str,
    until: &str,
    routing_prefix: Option<&str>,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        parent: None,
        "replay",
        tenant_id = %tenant,
        since,
        until,
        routing_prefix = routing_prefix.unwrap_or(""),
    )
}

/// The span of re-publishing one blob in a replay: a child of the replay's root span `parent`.
pub fn replay_blob_span(parent: &Span, item: &WorkItem) -> Span {
    if !enabled() || parent.is_none() {
        return Span::none();
    }
    tracing::info_span!(
        parent: parent,
        "blob",
        otel.name = "blob.fetch",
        tenant_id = %item.tenant_id,
        content_type = %item.content_type,
        content_id = %item.content_id,
        replay = true,
    )
}

/// The span of publishing one batch of a blob's records (a child of the current span, the
/// worker's `blob.fetch`); its context goes into every record of the batch.
pub fn publish_span(blob: &WorkItem, records: usize) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::info_span!(
        "record.publish",
        tenant_id = %blob.tenant_id,
        content_type = %blob.content_type,
        content_id = %blob.content_id,
        records,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};

    #[test]
    fn off_nothing_is_added_or_read() {
        // No subscriber with the OpenTelemetry layer in the unit tests: tracing is off.
        assert!(!enabled());
        let span = tracing::info_span!("record.publish");
        let props = with_trace_context(crate::broker::json_properties("id"), &span);
        assert!(props.headers().is_none());
        let mut headers = FieldTable::default();
        inject(&mut headers, &span);
        assert!(headers.inner().is_empty());
        let mut carrying = FieldTable::default();
        header(
            &mut carrying,
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            CAP,
        );
        let props = crate::broker::json_properties("id").with_headers(carrying);
        assert_eq!(Carried::from_properties(&props), Carried::default());
    }

    #[test]
    fn a_carried_context_is_put_back_as_it_came() {
        let mut map = HashMap::new();
        map.insert(
            TRACEPARENT.to_string(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
        );
        map.insert(TRACESTATE.to_string(), "vendor=x".to_string());
        let mut headers = FieldTable::default();
        Carried(map).put(&mut headers);
        let props = crate::broker::json_properties("id").with_headers(headers);
        assert_eq!(
            header_str(&props, TRACEPARENT).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(header_str(&props, TRACESTATE).as_deref(), Some("vendor=x"));
        let mut none = FieldTable::default();
        Carried::default().put(&mut none);
        assert!(none.inner().is_empty());
    }

    /// The sampler is the SDK's, read from `OTEL_TRACES_SAMPLER` when the relay builds its
    /// provider (the only test here that sets an `OTEL_*` variable).
    #[test]
    fn the_standard_sampler_variable_is_honoured() {
        std::env::set_var("OTEL_TRACES_SAMPLER", "always_off");
        let provider = crate::ops::telemetry::tracer_provider();
        std::env::remove_var("OTEL_TRACES_SAMPLER");
        let span = provider.tracer("test").start("x");
        assert!(
            !span.span_context().is_sampled(),
            "always_off samples nothing"
        );
        let cx = opentelemetry::Context::current_with_span(span);
        assert!(!cx.span().span_context().is_sampled());
        let _ = provider.shutdown();
    }
}
