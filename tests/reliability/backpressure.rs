//! A consumer's length-limited queue (`x-max-length`, `x-overflow: reject-publish` or
//! `reject-publish-dlx`) bound `#` beside the test's healthy sink, left unconsumed for longer
//! than all of a blob's retry attempts while blobs arrive, then drained: the relay pauses and
//! probes instead of dead-lettering (issue 19), every record reaches the full queue once it has
//! room, without an operator, and the healthy queue beside it receives a bounded number of extra
//! copies.

use crate::harness::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use test_support::sink::{Sink, SinkQueue};

/// Messages the consumer's queue holds.
const MAX_LENGTH: i64 = 200;
/// How long the queue stays full and unconsumed: well past 4 attempts with 200 ms–2 s backoff.
const FULL_FOR: Duration = Duration::from_secs(20);
const BLOBS: usize = 20;
const RECORDS: usize = 50;

async fn full_queue_pauses_then_drains(overflow: &'static str, with_dlx: bool) {
    let mut setup = Setup::new("backpressure");
    setup.extra_env = vec![
        // Retries compressed so that the queue stays full for longer than all of them.
        ("O365_MAX_ATTEMPTS", "4".to_string()),
        ("O365_BACKPRESSURE_PROBE_MAX", "2s".to_string()),
    ];
    let mut h = Harness::start(setup).await;
    let limited_name = format!("{}.limited", h.sink);
    let dlq: Option<&'static str> =
        with_dlx.then(|| &*Box::leak(format!("{}.limited.rejected", h.sink).into_boxed_str()));
    let limited = Sink::bind(
        AMQP,
        &h.exchange,
        &limited_name,
        SinkQueue::Limited {
            max_length: MAX_LENGTH,
            overflow,
            dead_letter_queue: dlq,
        },
    )
    .await
    .expect("declare the consumer's limited queue");
    let _cleanup = ResourceGuard::new().queues(
        [Some(limited_name.clone()), dlq.map(str::to_string)]
            .into_iter()
            .flatten(),
    );
    let _relay = h.relay_up().await;
    let load = h.load(BLOBS, RECORDS, 2, Duration::from_millis(300));

    // The queue fills; the relay pauses (not fails) and says so.
    let t0 = Instant::now();
    loop {
        let paused = h
            .metric("o365_downstream_paused_routing_keys")
            .await
            .unwrap_or(0.0);
        if paused > 0.0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the relay never paused; logs in {}",
            h.dir.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let paused_at = Instant::now();
    assert_eq!(
        h.depth(&limited_name).await,
        Some(MAX_LENGTH as u32),
        "the consumer's queue is full"
    );
    // `o365-relay status` names the pause (the heartbeat carries it within 5 s).
    let mut line = String::new();
    for _ in 0..40 {
        let out = RelayCommand::new(env!("CARGO_BIN_EXE_o365-relay"), &["status"])
            .inherit("PATH")
            .envs(h.env.iter().cloned())
            .output();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(l) = text.lines().find(|l| l.starts_with("paused: ")) {
            line = l.to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        line.contains("a consumer queue is full")
            && line.contains(&format!("exchange '{}'", h.exchange))
            && line.contains("waiting"),
        "status line: {line:?}"
    );

    // Full for longer than every retry attempt; nothing is dead-lettered meanwhile.
    load.await.expect("load");
    tokio::time::sleep(FULL_FOR.saturating_sub(paused_at.elapsed())).await;
    let dead = format!("{}.dead", h.work_queue);
    assert_eq!(h.depth(&dead).await, Some(0), "dead-lettered while paused");
    let refusals = h
        .metric("o365_downstream_refusals_total")
        .await
        .unwrap_or(0.0) as u64;
    assert!(refusals > 0, "a refusal was counted");

    // The consumer comes back: every record reaches its queue, with no operator.
    let drained_at = Instant::now();
    let tally = limited.tally().await.expect("consume the limited queue");
    let sent = h.sim.unique_record_ids();
    let deadline = Instant::now() + Duration::from_secs(120);
    let complete = loop {
        let got: HashSet<String> = tally
            .received
            .lock()
            .unwrap()
            .per_id
            .keys()
            .cloned()
            .collect();
        if sent.iter().all(|id| got.contains(id)) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let resumed_after = drained_at.elapsed();
    let row = h
        .settle(
            "",
            drained_at,
            Duration::from_secs(30),
            Duration::from_secs(2),
            String::new(),
        )
        .await;
    h.assert_none_lost(&row);
    let in_limited = {
        let r = tally.received.lock().unwrap();
        sent.iter().filter(|id| r.per_id.contains_key(*id)).count()
    };
    assert!(
        complete,
        "{in_limited} of {} records reached the drained queue; logs in {}",
        sent.len(),
        h.dir.display()
    );
    assert_eq!(h.depth(&dead).await, Some(0), "nothing dead-lettered");
    // Probes accepted and refused (the metric's two labels together).
    let probes = h
        .metric("o365_downstream_probes_total")
        .await
        .unwrap_or(0.0) as u64;
    // The stated bound (src/pipeline/backpressure.rs): one extra copy of the batches refused (a batch
    // here is one blob, at most RECORDS records) and one record per refused probe.
    let bound = refusals * RECORDS as u64 + probes;
    assert!(
        row.duplicates <= bound,
        "{} duplicates on the healthy queue, above the bound {bound} ({refusals} refusals, {probes} probes)",
        row.duplicates
    );
    assert!(
        row.duplicates < sent.len() as u64,
        "the healthy queue received less than one extra copy of the records"
    );
    // Flowing again: nothing paused.
    assert_eq!(
        h.metric("o365_downstream_paused_routing_keys").await,
        Some(0.0)
    );
    let rejected = match dlq {
        Some(q) => format!(
            "; {} refused copies in the consumer's DLX queue",
            h.depth(q).await.unwrap_or(0)
        ),
        None => String::new(),
    };
    Row {
        fault: format!(
            "consumer queue full (x-max-length {MAX_LENGTH}, {overflow}) for {} s, then drained; 4 attempts",
            FULL_FOR.as_secs()
        ),
        note: format!(
            "0 dead-lettered; {refusals} batches refused, {probes} probes; all records in the drained queue {:.1} s after its consumer came back; duplicates counted on the healthy queue beside it{rejected}",
            resumed_after.as_secs_f64()
        ),
        recovery: resumed_after,
        ..row
    }
    .print();
    drop(tally);
    limited.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_consumer_queue_rejecting_publishes_pauses_the_relay_and_nothing_is_lost() {
    full_queue_pauses_then_drains("reject-publish", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_consumer_queue_with_reject_publish_dlx_pauses_the_relay_too() {
    full_queue_pauses_then_drains("reject-publish-dlx", true).await;
}
