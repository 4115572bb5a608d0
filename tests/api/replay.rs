//! `o365-relay replay`: what Microsoft still holds is published again — ignoring the
//! de-duplication markers, marked `o365-replay: true`, under a routing-key prefix when asked —
//! and nothing else moves.

use crate::helpers::*;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::collections::BTreeSet;
use std::time::Duration;

fn ids(deliveries: &[lapin::message::Delivery]) -> BTreeSet<String> {
    deliveries
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_republishes_history_marked_and_under_its_prefix_ignoring_dedup() {
    let env = TestEnv::start(Options::default()).await;
    // Subscribed (Microsoft lists content only then); the simulator notifies our webhook.
    for t in [TENANT_A, TENANT_B] {
        let tenant = o365_relay::domain::TenantId::parse(t).unwrap();
        let started = env
            .relay
            .subscriptions
            .start_all(&tenant, None, false)
            .await;
        assert!(started.iter().all(|o| o.ok), "{started:?}");
    }
    let a = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 2, Some(3))
        .await;
    let a_general = env.sim.publish(TENANT_A, "Audit.General", 1, Some(2)).await;
    let b = env
        .sim
        .publish(TENANT_B, "Audit.Exchange", 1, Some(4))
        .await;
    let live = env.records(12).await;
    assert_eq!(live.len(), 12, "relayed live first");
    assert!(live.iter().all(|d| header(d, "o365-replay").is_none()));

    // A new consumer takes tenant A's history under its own prefix.
    let prefix = format!("replay-{}", env.id);
    let history = format!("{}.history", env.sink);
    let ch = env.channel();
    ch.queue_declare(
        history.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        history.as_str().into(),
        env.exchange.as_str().into(),
        format!("{prefix}.#").as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let out = relay_command(&[
        "replay",
        "--tenant",
        TENANT_A,
        "--since",
        "1h",
        "--routing-prefix",
        &prefix,
    ])
    .envs(env.vars.clone())
    .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replayed 3 of 3 blobs (8 records)"),
        "{stdout}"
    );
    let replayed = env
        .drain(
            &history,
            8,
            Duration::from_secs(20),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(
        replayed.len(),
        8,
        "tenant A's 8 records, once each, and nothing of B"
    );
    let of_a: BTreeSet<String> = a
        .iter()
        .chain(&a_general)
        .flat_map(|b| b.record_ids.clone())
        .collect();
    assert_eq!(ids(&replayed), of_a);
    for d in &replayed {
        assert_eq!(header(d, "o365-replay").as_deref(), Some("true"));
        assert_eq!(header(d, "o365-tenant-id").as_deref(), Some(TENANT_A));
        assert!(
            d.routing_key
                .as_str()
                .starts_with(&format!("{prefix}.Audit.")),
            "{}",
            d.routing_key
        );
        assert!(d.routing_key.as_str().ends_with(TENANT_A));
    }

    // Without a prefix, one content type: the live routing key, still marked.
    let out = relay_command(&[
        "replay",
        "--tenant",
        TENANT_B,
        "--since",
        "2h",
        "--until",
        "0s",
        "--content-type",
        "Audit.Exchange",
    ])
    .envs(env.vars.clone())
    .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replayed 1 of 1 blobs (4 records)"),
        "{stdout}"
    );
    // The default sink (bound to #) saw A's prefixed replay and now B's.
    let sink = env.records(12).await;
    let b_again: Vec<_> = sink
        .iter()
        .filter(|d| d.routing_key.as_str() == format!("Audit.Exchange.{TENANT_B}"))
        .collect();
    assert_eq!(b_again.len(), 4);
    let b_ids: BTreeSet<String> = b_again
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(b_ids, b[0].record_ids.iter().cloned().collect());
    assert!(b_again
        .iter()
        .all(|d| header(d, "o365-replay").as_deref() == Some("true")));
    assert_eq!(
        env.depth(&env.work_queue).await,
        0,
        "a replay does not go through the work queue"
    );
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);

    // Wrong input is a usage error.
    for args in [
        vec!["replay", "--tenant", TENANT_A, "--since", "yesterday"],
        vec!["replay", "--tenant", "nope", "--since", "1d"],
        vec![
            "replay", "--tenant", TENANT_A, "--since", "1d", "--until", "2d",
        ],
        vec![
            "replay",
            "--tenant",
            TENANT_A,
            "--since",
            "1d",
            "--routing-prefix",
            "a.b",
        ],
    ] {
        let out = relay_command(&args).envs(env.vars.clone()).output();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    env.cleanup().await;
}
