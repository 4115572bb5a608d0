//! OpenTelemetry traces (docs/OPERATIONS.md, "Tracing"): with an OTLP endpoint set, one
//! notification's spans — `webhook.receive` → `work_queue.enqueue` → `blob.fetch` →
//! `record.publish` — form one trace, exported over OTLP/HTTP, and every record published
//! carries that trace's `traceparent`, so a consumer can continue it.
//!
//! A binary of its own: tracing is configured by the process environment (OpenTelemetry's
//! `OTEL_*` variables) and installed once per process, which no other test may share.

#[path = "../consumers/helpers.rs"]
mod helpers;

use actix_web::{web, App, HttpResponse, HttpServer};
use helpers::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The spans a small OTLP/HTTP receiver got (`POST /v1/traces`, protobuf).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }
}

async fn traces(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    match ExportTraceServiceRequest::decode(body.as_ref()) {
        Ok(req) => {
            let mut spans = received.0.lock().unwrap();
            for rs in req.resource_spans {
                for ss in rs.scope_spans {
                    spans.extend(ss.spans);
                }
            }
            HttpResponse::Ok()
                .content_type("application/x-protobuf")
                .body(Vec::new())
        }
        Err(e) => HttpResponse::BadRequest().body(e.to_string()),
    }
}

/// Starts the receiver on 127.0.0.1; its base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`).
fn start_receiver(received: Received) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(received.clone()))
            .app_data(web::PayloadConfig::new(16 << 20))
            .route("/v1/traces", web::post().to(traces))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    url
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const NAMES: [&str; 4] = [
    "webhook.receive",
    "work_queue.enqueue",
    "blob.fetch",
    "record.publish",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_is_one_trace_ending_at_the_publish_and_its_records_carry_it() {
    let received = Received::default();
    let endpoint = start_receiver(received.clone());
    // Before anything installs a subscriber: the relay's tracing reads the process environment.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    std::env::set_var("OTEL_TRACES_SAMPLER", "always_on");
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    o365_relay::ops::telemetry::init(o365_relay::config::LogFormat::Json);
    assert!(o365_relay::ops::trace_context::enabled(), "tracing is on");

    let relay = Relay::start(&[TENANT_A]).await;
    let p = &relay.pipeline;
    let blobs = p.sim.publish(TENANT_A, "Audit.Exchange", 1, Some(3)).await;
    assert_eq!(blobs.len(), 1);
    let blob = &blobs[0];
    let deliveries = p
        .sink
        .drain(
            blob.record_ids.len(),
            Duration::from_secs(30),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(
        deliveries.len(),
        blob.record_ids.len(),
        "every record relayed"
    );

    // The spans of that blob, once exported.
    let content_id = blob.content_id.clone();
    let complete = eventually(Duration::from_secs(20), || {
        o365_relay::ops::telemetry::flush();
        let spans = received.spans();
        let content_id = content_id.clone();
        async move {
            NAMES.iter().all(|n| {
                spans.iter().any(|s| {
                    s.name == *n
                        && (*n == "webhook.receive"
                            || attribute(s, "content_id").as_deref() == Some(content_id.as_str()))
                })
            })
        }
    })
    .await;
    let spans = received.spans();
    assert!(
        complete,
        "the receiver got {NAMES:?} for the blob; it got {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // The publish, and the chain of parents up from it: fetch, enqueue, receive — one trace.
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let publishes: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.name == "record.publish"
                && attribute(s, "content_id").as_deref() == Some(content_id.as_str())
        })
        .collect();
    assert_eq!(
        publishes.len(),
        1,
        "one publish batch for a blob of 3 records"
    );
    let publish = publishes[0];
    let mut chain = vec![publish];
    while let Some(parent) = by_id.get(&chain.last().unwrap().parent_span_id) {
        chain.push(parent);
    }
    let names: Vec<&str> = chain.iter().rev().map(|s| s.name.as_str()).collect();
    assert_eq!(names, NAMES, "the parent links, root first");
    assert!(
        chain.last().unwrap().parent_span_id.is_empty(),
        "webhook.receive is the trace's root"
    );
    let trace_id = hex(&publish.trace_id);
    for s in &chain {
        assert_eq!(hex(&s.trace_id), trace_id, "{} is in the trace", s.name);
    }
    for s in &chain[..3] {
        assert_eq!(
            attribute(s, "tenant_id").as_deref(),
            Some(TENANT_A),
            "{}",
            s.name
        );
        assert_eq!(
            attribute(s, "content_type").as_deref(),
            Some("Audit.Exchange"),
            "{}",
            s.name
        );
        assert_eq!(
            attribute(s, "content_id").as_deref(),
            Some(content_id.as_str()),
            "{}",
            s.name
        );
    }

    // Each record continues the trace from the publish span.
    let want = format!("00-{trace_id}-{}-01", hex(&publish.span_id));
    for d in &deliveries {
        assert_eq!(
            header(&d.properties, "traceparent").as_deref(),
            Some(want.as_str()),
            "the record's traceparent names the trace and the publish span"
        );
    }

    relay.stop().await;
    o365_relay::ops::telemetry::shutdown();
}
