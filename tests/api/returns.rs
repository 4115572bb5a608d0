//! Records published mandatory to a topic exchange come back when no queue is bound for their
//! routing key. Each return must fail the publish that caused it — never another task's webhook
//! enqueue, retry or record batch — and a returned record must never count as published.

use crate::helpers::*;
use futures_util::StreamExt;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::HashSet;
use std::time::Duration;

const TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

fn published(metrics: &str, ct: &str) -> u64 {
    let prefix = format!("o365_records_published_total{{content_type=\"{ct}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unroutable_records_are_retried_uncounted_and_arrive_once_a_queue_binds() {
    let env = TestEnv::start(Options {
        extra_env: vec![
            ("O365_MAX_ATTEMPTS".into(), "100".into()),
            ("O365_RETRY_MAX".into(), "1s".into()),
        ],
        ..Default::default()
    })
    .await;
    // A consumer that takes only Exchange records.
    let ch = env.channel();
    ch.queue_unbind(
        env.sink.as_str().into(),
        env.exchange.as_str().into(),
        "#".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        env.sink.as_str().into(),
        env.exchange.as_str().into(),
        "Audit.Exchange.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // All five content types flow under webhook load: one request per blob, 16 at a time.
    let mut blobs = Vec::new();
    for ct in TYPES {
        blobs.extend(env.sim.publish(TENANT_A, ct, 8, Some(10)).await);
    }
    let statuses: Vec<u16> = futures_util::stream::iter(blobs.iter())
        .map(|b| async {
            env.notify(&env.notification(std::slice::from_ref(b)))
                .await
                .status()
                .as_u16()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every valid notification answered 200: {statuses:?}"
    );
    let ids = |pred: &dyn Fn(&str) -> bool| -> HashSet<String> {
        blobs
            .iter()
            .filter(|b| pred(&b.content_type))
            .flat_map(|b| b.record_ids.iter().cloned())
            .collect()
    };
    let exchange_ids = ids(&|ct| ct == "Audit.Exchange");
    let other_ids = ids(&|ct| ct != "Audit.Exchange");
    let got = env.records(exchange_ids.len()).await;
    let got_ids: Vec<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(
        got_ids.len(),
        exchange_ids.len(),
        "each Exchange record once"
    );
    assert_eq!(got_ids.into_iter().collect::<HashSet<_>>(), exchange_ids);

    // Every other blob has bounced (been put back for a retry) at least once.
    let other_blobs = blobs.len()
        - blobs
            .iter()
            .filter(|b| b.content_type == "Audit.Exchange")
            .count();
    let bounced = eventually(Duration::from_secs(30), || async {
        let m = env.metrics().await;
        let retried = m
            .lines()
            .find_map(|l| l.strip_prefix(r#"o365_blobs_total{result="retried"} "#))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        retried >= other_blobs
    })
    .await;
    assert!(bounced, "the unroutable blobs were put back for a retry");
    let m = env.metrics().await;
    for ct in TYPES.iter().filter(|ct| **ct != "Audit.Exchange") {
        assert_eq!(
            published(&m, ct),
            0,
            "{ct}: a returned record is not published"
        );
    }
    assert!(
        !m.contains(r#"reason="unavailable""#),
        "no webhook request was refused for an unroutable work item"
    );
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);

    // A consumer of everything binds: every record that bounced arrives, once.
    let all = format!("test.{}.all", env.id);
    o365_relay::broker::bind_all_records(
        ch,
        &env.exchange,
        &all,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let late = env
        .drain(
            &all,
            other_ids.len(),
            Duration::from_secs(30),
            Duration::from_millis(500),
        )
        .await;
    let late_ids: Vec<String> = late
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    // A blob whose batch straddles the binding arrives partly twice (its first attempt was
    // refused whole): at-least-once. None may be missing.
    assert!(late_ids.len() >= other_ids.len());
    assert_eq!(late_ids.into_iter().collect::<HashSet<_>>(), other_ids);
    let m = env.metrics().await;
    let counted: u64 = TYPES
        .iter()
        .filter(|ct| **ct != "Audit.Exchange")
        .map(|ct| published(&m, ct))
        .sum();
    assert_eq!(
        counted,
        other_ids.len() as u64,
        "counted when confirmed, not before"
    );
    env.cleanup().await;
}
