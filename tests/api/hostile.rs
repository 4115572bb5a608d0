//! A hostile upstream: for each kind of bad input from "Microsoft" (the simulator), good blobs
//! of another tenant keep flowing on the same replica, the bad blob ends relayed or
//! dead-lettered with a reason, RabbitMQ closes no connection, no work item is duplicated, and
//! readiness tells the truth.

use crate::helpers::*;
use o365_sim::{hostile, Fault, SimBlob};
use std::collections::HashSet;
use std::time::Duration;

/// Tenant B's ordinary blobs, notified beside the bad one.
async fn good_blobs(env: &TestEnv) -> Vec<SimBlob> {
    let blobs = env
        .sim
        .publish(TENANT_B, "Audit.Exchange", 3, Some(10))
        .await;
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    blobs
}

fn ids_of(blobs: &[SimBlob]) -> HashSet<String> {
    blobs
        .iter()
        .flat_map(|b| b.record_ids.iter().cloned())
        .collect()
}

/// Takes records from the sink until `n` arrived (or 20 s passed), lingering a little for
/// duplicates.
async fn records_until(env: &TestEnv, n: usize) -> Vec<lapin::message::Delivery> {
    env.drain(
        &env.sink.clone(),
        n,
        Duration::from_secs(20),
        Duration::from_millis(500),
    )
    .await
}

fn message_id(d: &lapin::message::Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// What every case must leave behind: all good records of tenant B arrived exactly once, the
/// one RabbitMQ connection is still the first, the replica is alive and ready, and the work and
/// retry queues hold nothing but what the case parked (`parked`).
async fn assert_replica_unharmed(
    env: &TestEnv,
    good: &[SimBlob],
    got: &[lapin::message::Delivery],
    parked: usize,
) {
    let good_ids = ids_of(good);
    let from_b: Vec<String> = got
        .iter()
        .filter(|d| header(d, "o365-tenant-id").as_deref() == Some(TENANT_B))
        .map(message_id)
        .collect();
    let distinct: HashSet<String> = from_b.iter().cloned().collect();
    assert_eq!(distinct, good_ids, "every good record of tenant B arrived");
    assert_eq!(from_b.len(), good_ids.len(), "and each once");
    let m = env.metrics().await;
    assert!(
        m.contains("o365_amqp_connections_total 1\n"),
        "RabbitMQ closed no connection:\n{}",
        m.lines()
            .filter(|l| l.contains("amqp_connections"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for path in ["/healthz", "/readyz"] {
        let r = env
            .http
            .get(format!("{}{path}", env.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let mut waiting = env.depth(&env.work_queue.clone()).await;
    for q in o365_relay::pipeline::work_queue::retry_queue_names(&env.work_queue) {
        waiting += env.depth(&q).await;
    }
    assert_eq!(waiting as usize, parked, "no work item was duplicated");
}

fn dead_queue(env: &TestEnv) -> String {
    format!("{}.dead", env.work_queue)
}

async fn notify_one(env: &TestEnv, blob: &SimBlob) {
    let r = env
        .notify(&env.notification(std::slice::from_ref(blob)))
        .await;
    assert_eq!(r.status(), 200);
}

/// The dead-letter queue's one message (waiting up to `wait`), and nothing more after it.
async fn one_dead_letter(env: &TestEnv, wait: Duration) -> Vec<lapin::message::Delivery> {
    let dead = env
        .drain(&dead_queue(env), 1, wait, Duration::from_millis(300))
        .await;
    assert_eq!(dead.len(), 1, "dead-lettered exactly once");
    dead
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_id_over_255_bytes_is_relayed_under_a_derived_message_id() {
    let env = TestEnv::start(Options::default()).await;
    let good = good_blobs(&env).await;
    let long = hostile::record_with_long_id(TENANT_A, 300);
    let normal = hostile::record_with_huge_field(TENANT_A, "Workload", 10);
    let bad = env
        .sim
        .publish_raw(TENANT_A, "Audit.General", vec![long.clone(), normal])
        .await;
    notify_one(&env, &bad).await;
    let got = records_until(&env, ids_of(&good).len() + 2).await;
    let long_id = serde_json::from_str::<serde_json::Value>(&long).unwrap()["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let derived = o365_relay::broker::sha256_id(long_id.as_bytes());
    let relayed = got
        .iter()
        .find(|d| message_id(d) == derived)
        .expect("the long-id record arrived under sha256:<hex of its Id>");
    assert_eq!(relayed.data, long.as_bytes(), "byte-exact");
    assert_eq!(
        got.iter()
            .filter(|d| header(d, "o365-tenant-id").as_deref() == Some(TENANT_A))
            .count(),
        2,
        "both records of the blob"
    );
    assert_eq!(env.depth(&dead_queue(&env)).await, 0);
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_record_field_is_relayed_whole_with_its_header_capped() {
    let env = TestEnv::start(Options::default()).await;
    let good = good_blobs(&env).await;
    let huge = hostile::record_with_huge_field(TENANT_A, "Operation", 140_000);
    let bad = env
        .sim
        .publish_raw(TENANT_A, "Audit.General", vec![huge.clone()])
        .await;
    notify_one(&env, &bad).await;
    let got = records_until(&env, ids_of(&good).len() + 1).await;
    let relayed = got
        .iter()
        .find(|d| message_id(d) == bad.record_ids[0])
        .expect("the record with a 140 KB Operation arrived");
    assert_eq!(relayed.data, huge.as_bytes(), "the body is never cut");
    let op = header(relayed, "o365-operation").unwrap();
    assert!(
        op.len() <= o365_relay::pipeline::sink::RECORD_HEADER_CAP,
        "{}",
        op.len()
    );
    assert!(op.ends_with(o365_relay::domain::text::TRUNCATION_MARKER));
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_that_is_not_utf8_is_dead_lettered_by_name_and_its_neighbours_are_relayed() {
    let env = TestEnv::start(Options::default()).await;
    let good = good_blobs(&env).await;
    let before = hostile::record_with_huge_field(TENANT_A, "Workload", 10);
    let after = hostile::record_with_huge_field(TENANT_A, "Workload", 12);
    let body = hostile::blob_body(&[
        before.clone().into_bytes(),
        hostile::record_with_invalid_utf8(TENANT_A),
        after.clone().into_bytes(),
    ]);
    let bad = env
        .sim
        .publish_body(TENANT_A, "Audit.General", body, None)
        .await;
    notify_one(&env, &bad).await;
    let got = records_until(&env, ids_of(&good).len() + 2).await;
    let from_a: Vec<&[u8]> = got
        .iter()
        .filter(|d| header(d, "o365-tenant-id").as_deref() == Some(TENANT_A))
        .map(|d| d.data.as_slice())
        .collect();
    assert_eq!(from_a, vec![before.as_bytes(), after.as_bytes()]);
    let dead = one_dead_letter(&env, Duration::from_secs(10)).await;
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("malformed_record")
    );
    let reason = header(&dead[0], "o365-dead-reason").unwrap();
    assert!(
        reason.contains("record 1") && reason.contains("UTF-8"),
        "{reason}"
    );
    assert_eq!(
        env.sim.content_gets_for(&bad.content_id),
        1,
        "not retried: it cannot get better"
    );
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_sharing_one_id_in_a_blob_are_relayed_once() {
    let env = TestEnv::start(Options::default()).await;
    let good = good_blobs(&env).await;
    let same = hostile::duplicate_id_records(TENANT_A, 5);
    let bad = env.sim.publish_raw(TENANT_A, "Audit.General", same).await;
    notify_one(&env, &bad).await;
    let got = records_until(&env, ids_of(&good).len() + 5).await;
    let copies = got
        .iter()
        .filter(|d| message_id(d) == bad.record_ids[0])
        .count();
    assert_eq!(copies, 1);
    assert_eq!(env.depth(&dead_queue(&env)).await, 0);
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drip_fed_blob_is_cut_at_the_fetch_deadline_retried_then_dead_lettered() {
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_FETCH_TIMEOUT".into(), "1s".into())],
        ..Default::default()
    })
    .await;
    let bad = env
        .sim
        .publish(TENANT_A, "Audit.General", 1, Some(20))
        .await
        .remove(0);
    env.sim.fault_for(
        &bad.content_id,
        Fault::DripFeed {
            chunk: 16,
            interval: Duration::from_millis(100),
        },
    );
    notify_one(&env, &bad).await;
    let good = good_blobs(&env).await;
    let dead = one_dead_letter(&env, Duration::from_secs(30)).await;
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("deadline")
    );
    assert_eq!(
        env.sim.content_gets_for(&bad.content_id),
        4,
        "O365_MAX_ATTEMPTS fetches, each cut at the deadline"
    );
    let got = records_until(&env, ids_of(&good).len()).await;
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_absurd_retry_after_parks_a_blob_for_an_hour_at_most_and_never_past_its_expiry() {
    let env = TestEnv::start(Options::default()).await;
    let good = good_blobs(&env).await;
    let blobs = env.sim.publish(TENANT_A, "Audit.General", 2, Some(3)).await;
    for (b, status) in blobs.iter().zip([429u16, 403]) {
        env.sim.fault_for(
            &b.content_id,
            Fault::RetryAfter {
                status,
                secs: 100_000_000,
            },
        );
    }
    // The second blob expires at Microsoft in five minutes.
    let mut note = env.notification(&blobs);
    let soon = chrono::Utc::now() + chrono::Duration::minutes(5);
    note[1]["contentExpiration"] = soon
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    assert_eq!(env.notify(&note).await.status(), 200);
    let got = records_until(&env, ids_of(&good).len()).await;
    let hour = env
        .drain(
            &format!("{}.retry.1h", env.work_queue),
            1,
            Duration::from_secs(10),
            Duration::from_millis(200),
        )
        .await;
    let ten_minutes = env
        .drain(
            &format!("{}.retry.10m", env.work_queue),
            1,
            Duration::from_secs(10),
            Duration::from_millis(200),
        )
        .await;
    let ttl = |d: &lapin::message::Delivery| -> u64 {
        d.properties
            .expiration()
            .as_ref()
            .unwrap()
            .as_str()
            .parse()
            .unwrap()
    };
    assert_eq!(hour.len(), 1, "Retry-After capped at an hour");
    assert_eq!(
        message_id(&hour[0]),
        blobs[0].content_id,
        "the blob that expires in 7 days"
    );
    assert!(ttl(&hour[0]) <= 3_600_000);
    assert_eq!(ten_minutes.len(), 1, "the blob that expires in 5 minutes");
    assert!(
        ttl(&ten_minutes[0]) <= 4 * 60_000,
        "retried before it expires: {}",
        ttl(&ten_minutes[0])
    );
    assert_eq!(env.depth(&format!("{}.retry.6h", env.work_queue)).await, 0);
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_64_kib_error_message_is_cut_in_logs_and_headers_and_closes_no_connection() {
    let env = TestEnv::start(Options::default()).await;
    let bad = env
        .sim
        .publish(TENANT_A, "Audit.General", 1, Some(3))
        .await
        .remove(0);
    env.sim.fault_for(
        &bad.content_id,
        Fault::HugeError {
            status: 500,
            code: "AF50000".into(),
            message_bytes: 65_536,
        },
    );
    notify_one(&env, &bad).await;
    let good = good_blobs(&env).await;
    let dead = one_dead_letter(&env, Duration::from_secs(20)).await;
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("AF50000")
    );
    let reason = header(&dead[0], "o365-dead-reason").unwrap();
    assert!(reason.len() <= o365_relay::pipeline::work_queue::REASON_CAP);
    assert!(reason.ends_with(o365_relay::domain::text::TRUNCATION_MARKER));
    assert!(reason.starts_with("gave up after 4 attempts"), "{reason}");
    assert_eq!(env.sim.content_gets_for(&bad.content_id), 4);
    let got = records_until(&env, ids_of(&good).len()).await;
    assert_replica_unharmed(&env, &good, &got, 0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_over_long_content_id_is_refused_at_the_webhook_and_skipped_by_reconciliation() {
    let env = TestEnv::start(Options {
        static_tenants: vec![TENANT_A.into()],
        extra_env: vec![("O365_CONTENT_TYPES".into(), "Audit.General".into())],
        ..Default::default()
    })
    .await;
    let tenant = o365_relay::domain::TenantId::parse(TENANT_A).unwrap();
    let ct = o365_relay::domain::ContentType::General;
    env.relay
        .management
        .start_subscription(&tenant, ct, None)
        .await
        .unwrap();
    let long_id = "a1$".repeat(100);
    let records = vec![hostile::record_with_huge_field(TENANT_A, "Workload", 10)];
    let bad = env
        .sim
        .publish_raw_with_id(TENANT_A, "Audit.General", long_id.clone(), records)
        .await;
    let ok = env
        .sim
        .publish(TENANT_A, "Audit.General", 1, Some(4))
        .await
        .remove(0);
    let r = env
        .notify(&env.notification(&[ok.clone(), bad.clone()]))
        .await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.starts_with("blob 1: contentId is 300 bytes long"),
        "{error}"
    );
    assert_eq!(env.depth(&env.work_queue.clone()).await, 0);

    // Listing windows end on a whole second: let the blobs' second pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = env.relay.reconciler().pass().await;
    assert_eq!(stats.errors, 1, "{stats:?}");
    assert_eq!(stats.enqueued, 1, "the good blob of the same listing");
    let m = env.metrics().await;
    assert!(
        m.contains(r#"o365_listing_rejected_total{reason="content_id"} 1"#),
        "{m}"
    );
    let got = records_until(&env, ok.record_ids.len()).await;
    assert_eq!(got.len(), ok.record_ids.len());
    assert_eq!(env.sim.content_gets_for(&long_id), 0, "never fetched");
    assert_replica_unharmed(&env, &[], &got, 0).await;
    env.cleanup().await;
}
