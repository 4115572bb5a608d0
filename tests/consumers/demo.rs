//! The example consumers against `o365-relay demo` — the binary, as a newcomer runs it — on an
//! exchange and a work queue of the test's own (`--exchange`, `--work-queue`), the demo telling
//! what reached the exchange (`--summary-json`). The scenario both examples pass
//! (tests/consumers/python.rs, tests/consumers/rust.rs); what a consumer must print is
//! `test_support::consumer`'s.

use crate::helpers::*;
use lapin::options::BasicPublishOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;
use test_support::consumer::{ConsumerArgs, ConsumerProcess};
use test_support::sink::{depth, message_id};

const WAIT: Duration = Duration::from_secs(60);

/// What the demo reported (`--summary-json`): message id → routing key of every record that
/// reached the exchange.
struct Reported {
    records: BTreeMap<String, String>,
}

impl Reported {
    fn all(&self) -> BTreeSet<String> {
        self.records.keys().cloned().collect()
    }

    fn with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        self.records
            .iter()
            .filter(|(_, rk)| rk.starts_with(prefix))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Runs `o365-relay demo` on `exchange` and `work_queue` to its end; what it reported.
async fn run_demo(exchange: &str, work_queue: &str) -> Reported {
    let summary = std::env::temp_dir().join(format!("o365-relay-{exchange}.summary.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_o365-relay"));
    cmd.args(["demo", "--exchange", exchange, "--work-queue", work_queue])
        .args(["--tenants", "2", "--blobs", "1", "--records", "8"])
        .args(["--timeout", "60s", "--summary-json"])
        .arg(&summary)
        .env("O365_AMQP_URL", AMQP)
        .env("O365_REDIS_URL", REDIS)
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("the demo's thread")
        .expect("o365-relay demo runs");
    let log = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the demo succeeds:\n{log}");
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&summary).unwrap_or_else(|e| panic!("--summary-json written ({e}):\n{log}")),
    )
    .expect("the summary is JSON");
    let _ = std::fs::remove_file(&summary);
    assert_eq!(json["complete"], true, "{json:#}");
    assert_eq!(json["exchange"], exchange);
    assert_eq!(json["missing"], serde_json::json!([]), "{json:#}");
    let records: BTreeMap<String, String> = json["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            (
                r["message_id"].as_str().expect("message_id").to_string(),
                r["routing_key"].as_str().expect("routing_key").to_string(),
            )
        })
        .collect();
    assert_eq!(
        json["received"].as_u64(),
        Some(records.len() as u64),
        "{json:#}"
    );
    assert_eq!(json["expected"], json["received"], "{json:#}");
    // 2 tenants × 5 content types × 1 blob × 8 records, less the repeats across blobs.
    assert!(records.len() >= 40, "{} records", records.len());
    Reported { records }
}

/// Starts `consumer` with `args`; waits until it is bound and consuming.
async fn start(consumer: &impl Fn(Vec<String>) -> Command, args: &ConsumerArgs) -> ConsumerProcess {
    let mut c = ConsumerProcess::spawn(consumer(args.to_args()));
    c.wait_ready(WAIT).await;
    c
}

/// Waits until `c` processed `want` and skipped at least `copies` duplicates, stops it, and
/// checks it processed exactly `want`, each once, and skipped only records of `want`.
async fn finish(
    name: &str,
    c: &mut ConsumerProcess,
    want: &BTreeSet<String>,
    copies: &BTreeSet<String>,
) {
    let arrived = c
        .wait_until(WAIT, |c| {
            c.processed().len() >= want.len() && c.duplicates().len() >= copies.len()
        })
        .await;
    assert!(
        arrived,
        "consumer {name}: {} of {} records processed, {} of {} copies skipped:\n{}",
        c.processed().len(),
        want.len(),
        c.duplicates().len(),
        copies.len(),
        c.log()
    );
    let status = c.stop().await;
    assert!(
        status.success(),
        "consumer {name} stopped by SIGTERM: {status}\n{}",
        c.log()
    );
    let processed = c.processed();
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "consumer {name} processed more than once: {twice:?}"
    );
    let ids: BTreeSet<String> = processed.into_keys().collect();
    let missing: Vec<_> = want.difference(&ids).collect();
    let extra: Vec<_> = ids.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "consumer {name}: exactly the records the demo reported; missing {missing:?}, extra {extra:?}"
    );
    // The copies were skipped by the de-duplication — and nothing that was not processed.
    let skipped: BTreeSet<String> = c.duplicates().into_iter().collect();
    assert!(
        copies.is_subset(&skipped) && skipped.is_subset(want),
        "consumer {name}: skipped {skipped:?}, copies {copies:?}"
    );
    let last = format!("stopped: {} records, ", want.len());
    assert!(
        c.stderr_lines().iter().any(|l| l.starts_with(&last)),
        "consumer {name}: a last line {last:?}…:\n{}",
        c.log()
    );
}

/// Three consumers bind their queues to a fresh exchange before the demo publishes on it: a
/// quorum queue bound `#`, a classic one bound `Audit.Exchange.*`, a stream bound `#`. The demo
/// runs to its end; then copies of three Exchange records are published again, as the relay
/// does when a publisher confirm was lost. Each consumer processes exactly the records the demo
/// reported for its binding, each once, skips the copies, and acknowledges everything (its
/// queue is empty after it stopped); a consumer started later on the stream from `first` reads
/// the whole history again.
pub async fn every_record_of_the_demo_arrives_once(consumer: impl Fn(Vec<String>) -> Command) {
    let id = unique();
    let exchange = format!("cons.{id}.audit");
    let work_queue = format!("cons.{id}.content");
    let queue = |name: &str| format!("cons.{id}.{name}");
    let relay_queues = o365_relay::pipeline::work_queue::QueueNames::new(&work_queue);
    let mut guard = ResourceGuard::new()
        .exchange(&exchange)
        .queues([queue("all"), queue("exchange"), queue("stream")])
        .queues([work_queue.clone(), relay_queues.dead, relay_queues.parked])
        .queues(relay_queues.retry);

    let args = |name: &str, queue_type: &str, bind: &str| ConsumerArgs {
        amqp_url: AMQP.into(),
        exchange: exchange.clone(),
        queue: queue(name),
        bind: vec![bind.into()],
        queue_type: queue_type.into(),
        stream_offset: (queue_type == "stream").then(|| "first".into()),
    };
    let stream = args("stream", "stream", "#");
    let mut all = start(&consumer, &args("all", "quorum", "#")).await;
    let mut exchange_only =
        start(&consumer, &args("exchange", "classic", "Audit.Exchange.*")).await;
    let mut first = start(&consumer, &stream).await;
    // The test's own queue, to take copies of delivered messages from.
    let tap = Sink::bind(AMQP, &exchange, &queue("tap"), SinkQueue::Temporary)
        .await
        .expect("the tap queue");

    let reported = run_demo(&exchange, &work_queue).await;
    let want = reported.all();
    let want_exchange = reported.with_prefix("Audit.Exchange.");
    assert!(!want_exchange.is_empty() && want_exchange.len() < want.len());

    // Copies of three Exchange records, exactly as they were delivered.
    let delivered = tap
        .drain(want.len(), WAIT, Duration::from_millis(300))
        .await;
    let tapped: BTreeSet<String> = delivered.iter().map(message_id).collect();
    assert_eq!(tapped, want, "the tap got what the demo reported");
    let copies: Vec<_> = delivered
        .iter()
        .filter(|d| d.routing_key.as_str().starts_with("Audit.Exchange."))
        .take(3)
        .collect();
    assert_eq!(copies.len(), 3);
    for d in &copies {
        tap.channel()
            .basic_publish(
                exchange.as_str().into(),
                d.routing_key.clone(),
                BasicPublishOptions::default(),
                &d.data,
                d.properties.clone(),
            )
            .await
            .expect("publish a copy")
            .await
            .expect("the copy is published");
    }
    let copied: BTreeSet<String> = copies.iter().map(|d| message_id(d)).collect();

    finish("all", &mut all, &want, &copied).await;
    finish("exchange", &mut exchange_only, &want_exchange, &copied).await;
    finish("stream", &mut first, &want, &copied).await;
    for q in [queue("all"), queue("exchange")] {
        assert_eq!(
            depth(tap.connection(), &q).await,
            Some(0),
            "{q}: every message was acknowledged (an unacknowledged one returns to the queue)"
        );
    }
    // Later, a new consumer reads the stream's history from its start: every record again.
    let mut again = start(&consumer, &stream).await;
    finish("again", &mut again, &want, &copied).await;

    tap.close().await;
    guard.release().await;
}
