//! OpenTelemetry traces (docs/OPERATIONS.md, "Tracing"): with an OTLP endpoint set, one
//! notification's spans — `webhook.receive` → `work_queue.enqueue` → `blob.fetch` →
//! `record.publish` — form one trace, exported over OTLP/HTTP, and every record published
//! carries that trace's `traceparent`, so a consumer can continue it. A replay is one trace
//! too (root span `replay`), and the spans ended just before a graceful stop are exported.
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
use std::collections::{BTreeSet, HashMap};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
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

/// The one OTLP/HTTP receiver of this process, on a thread of its own (it outlives each test's
/// runtime), and the relay's tracing installed towards it — once, before anything else installs
/// a subscriber (the harness's `Pipeline` would): every test calls this first. Its base URL
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`) and what it received; the tests tell their spans apart by
/// trace and content ids.
fn receiver() -> &'static (String, Received) {
    static RECEIVER: OnceLock<(String, Received)> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let received = Received::default();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let into = received.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(into.clone()))
                    .app_data(web::PayloadConfig::new(16 << 20))
                    .route("/v1/traces", web::post().to(traces))
            })
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
            let _ = runtime.block_on(server);
        });
        // The relay's tracing reads the process environment.
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &url);
        std::env::set_var("OTEL_TRACES_SAMPLER", "always_on");
        std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
        o365_relay::ops::telemetry::init(o365_relay::config::LogFormat::Json);
        (url, received)
    })
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
    let (_, received) = receiver();
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
}

/// The trace id and the parent span id a `traceparent` names.
fn trace_parent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {value}");
    (parts[1].to_string(), parts[2].to_string())
}

/// `o365-relay replay` (the binary) with tracing on: the replay is one trace — a root span
/// `replay`, a `blob.fetch` per blob under it, the `record.publish` spans under those — exported
/// before the command exits, and every replayed record carries a `traceparent` of that trace
/// naming the publish span of its blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_one_trace_and_its_records_carry_it() {
    let (endpoint, received) = receiver();
    let relay = Relay::start(&[TENANT_A]).await;
    let p = &relay.pipeline;
    let mut blobs = p.sim.publish(TENANT_A, "Audit.Exchange", 1, Some(3)).await;
    blobs.extend(
        p.sim
            .publish(TENANT_A, "Audit.SharePoint", 1, Some(3))
            .await,
    );
    let want: BTreeSet<String> = blobs.iter().flat_map(|b| b.record_ids.clone()).collect();
    let live = p
        .sink
        .drain(
            want.len(),
            Duration::from_secs(30),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(live.len(), want.len(), "relayed live first");

    // Only the replay's process exports to this receiver (its environment is its own).
    let replay = RelayCommand::new(
        env!("CARGO_BIN_EXE_o365-relay"),
        &["replay", "--tenant", TENANT_A, "--since", "1h"],
    )
    .envs(p.env.vars().to_vec())
    .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())
    .env("OTEL_TRACES_SAMPLER", "always_on");
    let out = tokio::task::spawn_blocking(move || replay.output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed = p
        .sink
        .drain(
            want.len(),
            Duration::from_secs(30),
            Duration::from_millis(300),
        )
        .await;
    let got: BTreeSet<String> = replayed.iter().map(sink::message_id).collect();
    assert_eq!(got, want, "every record replayed");

    // One trace for the whole replay.
    let parents: Vec<(String, String, String)> = replayed
        .iter()
        .map(|d| {
            assert_eq!(
                header(&d.properties, "o365-replay").as_deref(),
                Some("true")
            );
            let tp = header(&d.properties, "traceparent")
                .unwrap_or_else(|| panic!("a replayed record carries a traceparent"));
            let (trace, span) = trace_parent(&tp);
            let content_id = header(&d.properties, "o365-content-id").expect("o365-content-id");
            (trace, span, content_id)
        })
        .collect();
    let traces: BTreeSet<&str> = parents.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        traces.len(),
        1,
        "the replay's records are in one trace: {traces:?}"
    );
    let trace_id = traces.into_iter().next().unwrap().to_string();

    // Its spans reached the receiver by the time the command exited (flushed at its end).
    let spans = received.spans();
    let by_id: HashMap<String, &Span> = spans
        .iter()
        .filter(|s| hex(&s.trace_id) == trace_id)
        .map(|s| (hex(&s.span_id), s))
        .collect();
    let roots: Vec<&&Span> = by_id
        .values()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(
        roots.len(),
        1,
        "one root span in the replay's trace; the receiver got {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let root = roots[0];
    assert_eq!(root.name, "replay");
    assert_eq!(attribute(root, "tenant_id").as_deref(), Some(TENANT_A));
    for (_, span_id, content_id) in &parents {
        let publish = by_id
            .get(span_id)
            .unwrap_or_else(|| panic!("the span a record names ({span_id}) was exported"));
        assert_eq!(publish.name, "record.publish");
        let fetch = by_id
            .get(&hex(&publish.parent_span_id))
            .expect("the publish span's parent was exported");
        assert_eq!(fetch.name, "blob.fetch");
        assert_eq!(
            attribute(fetch, "content_id").as_deref(),
            Some(content_id.as_str())
        );
        assert_eq!(
            fetch.parent_span_id, root.span_id,
            "the blob's span is under the root"
        );
    }
    let fetches = by_id.values().filter(|s| s.name == "blob.fetch").count();
    assert_eq!(fetches, blobs.len(), "a blob.fetch span per replayed blob");

    relay.stop().await;
}

/// Spans ended just before a graceful stop are exported: the relay binary, its batch exporter
/// told to wait a minute between exports (`OTEL_BSP_SCHEDULE_DELAY`), relays a blob and is
/// stopped with SIGTERM as soon as the records are on the exchange; by the time it has exited,
/// the receiver has the blob's whole trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_ended_just_before_a_graceful_stop_are_exported() {
    let (endpoint, received) = receiver();
    let mut p = Pipeline::start("trace", &[TENANT_A]).await;
    let q = o365_relay::pipeline::work_queue::QueueNames::new(&p.names.work_queue);
    p.guard
        .queues
        .extend([q.dead, q.parked].into_iter().chain(q.retry));
    // The child binds the pipeline's ports itself (the simulator notifies the public one).
    let (public, admin) = p.listeners();
    let (public_port, admin_port) = (
        public.local_addr().unwrap().port(),
        admin.local_addr().unwrap().port(),
    );
    drop((public, admin));
    let log = std::env::temp_dir().join(format!("o365-relay-trace-{}.log", p.names.id));
    let mut relay = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["serve"])
        .envs(p.env.clone().listen_on(public_port, admin_port).into_vars())
        .env("O365_LOG_FORMAT", "pretty")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .env("OTEL_BSP_SCHEDULE_DELAY", "60000")
        .spawn(&log);
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    relay.wait_ready(&admin_url, Duration::from_secs(30)).await;

    let blobs = p.sim.publish(TENANT_A, "Audit.Exchange", 1, Some(3)).await;
    let content_id = blobs[0].content_id.clone();
    let deliveries = p
        .sink
        .drain(3, Duration::from_secs(30), Duration::ZERO)
        .await;
    assert_eq!(deliveries.len(), 3, "relayed:\n{}", relay.logs());
    relay.sigterm();
    let status = relay.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "stopped gracefully ({status:?}):\n{}",
        relay.logs()
    );

    // No waiting: what the relay exported, it exported before it exited.
    let spans = received.spans();
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let (trace_id, span_id) = header(&deliveries[0].properties, "traceparent")
        .map(|tp| trace_parent(&tp))
        .expect("the records carry a traceparent");
    let publish = by_id
        .values()
        .find(|s| hex(&s.trace_id) == trace_id && hex(&s.span_id) == span_id)
        .unwrap_or_else(|| {
            panic!(
                "the publish span the records name was exported before the relay exited; the \
                 receiver got {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    let mut chain = vec![*publish];
    while let Some(parent) = by_id.get(&chain.last().unwrap().parent_span_id) {
        chain.push(parent);
    }
    let names: Vec<&str> = chain.iter().rev().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names, NAMES,
        "the blob's whole trace was exported, root first"
    );
    assert_eq!(
        attribute(chain[1], "content_id").as_deref(),
        Some(content_id.as_str())
    );
    let _ = std::fs::remove_file(&log);
    p.cleanup().await;
}
