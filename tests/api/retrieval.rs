//! Workers: blobs fetched with the tenant's token, records relayed byte-exact with the properties
//! README.md's "What consumers receive" lists, duplicates suppressed, failures retried or
//! dead-lettered.

use crate::helpers::*;
use o365_sim::Fault;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_for_two_tenants_relay_exactly_their_records_byte_identical() {
    let env = TestEnv::start(Options::default()).await;
    let mut blobs = Vec::new();
    blobs.extend(
        env.sim
            .publish(TENANT_A, "Audit.Exchange", 2, Some(15))
            .await,
    );
    blobs.extend(
        env.sim
            .publish(TENANT_B, "Audit.SharePoint", 2, Some(15))
            .await,
    );
    blobs.extend(env.sim.publish(TENANT_B, "DLP.All", 1, Some(10)).await);
    let r = env.notify(&env.notification(&blobs)).await;
    assert_eq!(r.status(), 200);

    // Expected: each distinct record once (the simulator repeats some records across blobs).
    let mut expected: HashMap<String, (String, String, String)> = HashMap::new();
    for b in &blobs {
        for (raw, id) in b.records.iter().zip(&b.record_ids) {
            expected.entry(id.clone()).or_insert((
                raw.clone(),
                format!("{}.{}", b.content_type, b.tenant_id),
                b.tenant_id.clone(),
            ));
        }
    }
    // A record Microsoft put in two blobs may be published twice when both blobs are fetched
    // at the same moment (at-least-once; consumers de-duplicate on message_id) — never a
    // record that occurs once.
    let in_blobs: HashMap<&String, usize> = blobs
        .iter()
        .flat_map(|b| b.record_ids.iter().collect::<HashSet<_>>())
        .fold(HashMap::new(), |mut m, id| {
            *m.entry(id).or_default() += 1;
            m
        });
    let got = env.records(expected.len()).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in &got {
        let id = d
            .properties
            .message_id()
            .as_ref()
            .expect("message_id")
            .as_str()
            .to_string();
        *seen.entry(id.clone()).or_default() += 1;
        assert!(
            seen[&id] <= in_blobs[&id],
            "record {id} published more often than it occurs in blobs"
        );
        let (raw, rk, tenant) = expected
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected record {id}"));
        assert_eq!(
            std::str::from_utf8(&d.data).unwrap(),
            raw,
            "bytes preserved"
        );
        assert_eq!(d.routing_key.as_str(), rk);
        assert_eq!(
            d.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(d.properties.delivery_mode(), &Some(2));
        assert_eq!(
            d.properties.app_id().as_ref().unwrap().as_str(),
            "o365-relay"
        );
        assert!(d.properties.timestamp().is_some());
        assert_eq!(
            header(d, "o365-tenant-id").as_deref(),
            Some(tenant.as_str())
        );
        let record: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        assert_eq!(
            header(d, "o365-content-type").unwrap(),
            rk.rsplit_once('.').unwrap().0
        );
        assert!(
            header(d, "o365-content-id").is_some_and(|c| blobs.iter().any(|b| b.content_id == c))
        );
        assert_eq!(
            header(d, "o365-operation").as_deref(),
            record["Operation"].as_str()
        );
        assert_eq!(
            header(d, "o365-workload").as_deref(),
            record["Workload"].as_str()
        );
        assert_eq!(
            header(d, "o365-creation-time").as_deref(),
            record["CreationTime"].as_str()
        );
        let rt = match &record["RecordType"] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        assert_eq!(header(d, "o365-record-type").unwrap(), rt);
    }
    assert_eq!(seen.len(), expected.len(), "every distinct record arrived");
    // Each blob fetched once, with one token per tenant.
    for b in &blobs {
        assert_eq!(env.sim.content_gets_for(&b.content_id), 1);
    }
    assert_eq!(env.sim.token_requests(TENANT_A), 1);
    assert_eq!(env.sim.token_requests(TENANT_B), 1);
    assert!(
        env.sim.rejected_requests().is_empty(),
        "{:?}",
        env.sim.rejected_requests()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_numbers_and_escapes_survive_byte_for_byte() {
    let env = TestEnv::start(Options::default()).await;
    let records = vec![
        r#"{"Id":"11111111-1111-1111-1111-111111111111","RecordType":261,"Workload":"MicrosoftTeams","Operation":"X","CreationTime":"2026-11-26T04:12:00","Big":9223372036854775807,"Huge":18446744073709551615,"Tiny":1.0e-7,"Name":"Ren\u00e9e \ud83d\ude00","Raw":"日本","ClientIP":null}"#.to_string(),
        r#"{ "Workload" : "Exchange", "Id" : "22222222-2222-2222-2222-222222222222", "Nested" : [ [ 1 , { "a" : [ ] } ] ], "UserType":"0" }"#.to_string(),
    ];
    let blob = env
        .sim
        .publish_raw(TENANT_A, "Audit.General", records.clone())
        .await;
    assert_eq!(env.notify(&env.notification(&[blob])).await.status(), 200);
    let got = env.records(2).await;
    let bodies: HashSet<String> = got
        .iter()
        .map(|d| String::from_utf8(d.data.clone()).unwrap())
        .collect();
    assert_eq!(bodies, records.into_iter().collect::<HashSet<_>>());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_notification_relays_its_records_once() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.AzureActiveDirectory", 1, Some(12))
        .await;
    let unique: HashSet<&String> = blobs[0].record_ids.iter().collect();
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let first = env.records(unique.len()).await;
    assert_eq!(first.len(), unique.len());
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    env.sim.renotify(&blobs[0]).await;
    let again = env
        .drain(
            &env.sink.clone(),
            1,
            Duration::from_secs(2),
            Duration::from_millis(300),
        )
        .await;
    assert!(again.is_empty(), "records relayed twice: {}", again.len());
    assert_eq!(
        env.sim.content_gets_for(&blobs[0].content_id),
        1,
        "an already relayed blob is not fetched again"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_repeated_across_blobs_are_published_once() {
    let env = TestEnv::start(Options::default()).await;
    let shared = r#"{"Id":"33333333-3333-3333-3333-333333333333","Operation":"Shared","Workload":"Exchange","RecordType":2}"#.to_string();
    let b1 = env
        .sim
        .publish_raw(
            TENANT_A,
            "Audit.Exchange",
            vec![shared.clone(), r#"{"Id":"a1","RecordType":2}"#.into()],
        )
        .await;
    assert_eq!(env.notify(&env.notification(&[b1])).await.status(), 200);
    assert_eq!(env.records(2).await.len(), 2);
    let b2 = env
        .sim
        .publish_raw(
            TENANT_A,
            "Audit.Exchange",
            vec![r#"{"Id":"b1","RecordType":2}"#.into(), shared],
        )
        .await;
    assert_eq!(env.notify(&env.notification(&[b2])).await.status(), 200);
    let got = env.records(1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].properties.message_id().as_ref().unwrap().as_str(),
        "b1"
    );
    assert!(env
        .metrics()
        .await
        .contains("o365_records_duplicate_total 1"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_blobs_for_one_tenant_need_one_token() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.SharePoint", 200, Some(1))
        .await;
    for chunk in blobs.chunks(50) {
        assert_eq!(env.notify(&env.notification(chunk)).await.status(), 200);
    }
    let ok = eventually(Duration::from_secs(30), || async {
        env.metrics()
            .await
            .contains(r#"o365_blobs_total{result="relayed"} 200"#)
    })
    .await;
    assert!(ok, "200 blobs relayed");
    assert_eq!(env.sim.token_requests(TENANT_A), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_401_drops_the_token_and_retries_once_with_a_new_one() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(5))
        .await;
    env.sim.push_fault(Fault::Unauthorized);
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let unique: HashSet<&String> = blobs[0].record_ids.iter().collect();
    assert_eq!(env.records(unique.len()).await.len(), unique.len());
    assert_eq!(
        env.sim.token_requests(TENANT_A),
        2,
        "the refused token was replaced"
    );
    assert_eq!(env.sim.content_gets_for(&blobs[0].content_id), 2);
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throttling_as_429_and_403_then_server_errors_are_retried_until_success() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(8))
        .await;
    env.sim.push_fault(Fault::Throttle429);
    env.sim.push_fault(Fault::Throttle403);
    env.sim.push_fault(Fault::ServerError);
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let unique: HashSet<&String> = blobs[0].record_ids.iter().collect();
    let got = env.records(unique.len()).await;
    assert_eq!(got.len(), unique.len());
    assert_eq!(
        env.sim.content_gets_for(&blobs[0].content_id),
        4,
        "three failures, then success"
    );
    let m = env.metrics().await;
    assert!(m.contains("o365_throttled_total 2"), "{m}");
    assert!(m.contains(r#"o365_blobs_total{result="retried"} 3"#), "{m}");
    assert_eq!(env.depth(&format!("{}.dead", env.work_queue)).await, 0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_truncated_body_is_retried_and_no_record_is_lost_or_doubled() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.SharePoint", 1, Some(40))
        .await;
    env.sim.push_fault(Fault::Truncate);
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let unique: HashSet<&String> = blobs[0].record_ids.iter().collect();
    let got = env.records(unique.len()).await;
    let ids: HashSet<String> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), unique.len(), "every record arrived");
    assert_eq!(
        got.len(),
        unique.len(),
        "records from the truncated attempt are not published twice"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_content_goes_to_the_dead_letter_queue_with_the_reason() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await;
    env.sim.expire(&blobs[0].content_id);
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let dead = env
        .drain(
            &format!("{}.dead", env.work_queue),
            1,
            Duration::from_secs(15),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("AF20051")
    );
    assert!(header(&dead[0], "o365-dead-reason")
        .unwrap()
        .contains("AF20051"));
    let item: serde_json::Value = serde_json::from_slice(&dead[0].data).unwrap();
    assert_eq!(item["contentId"], blobs[0].content_id.as_str());
    assert_eq!(
        env.sim.content_gets_for(&blobs[0].content_id),
        1,
        "a permanent error is not retried"
    );
    assert!(env.records(1).await.is_empty());
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_that_keeps_failing_is_dead_lettered_after_bounded_retries() {
    let env = TestEnv::start(Options::default()).await;
    let blobs = env
        .sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await;
    for _ in 0..10 {
        env.sim.push_fault(Fault::ServerError);
    }
    assert_eq!(env.notify(&env.notification(&blobs)).await.status(), 200);
    let dead = env
        .drain(
            &format!("{}.dead", env.work_queue),
            1,
            Duration::from_secs(20),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(dead.len(), 1);
    assert!(header(&dead[0], "o365-dead-reason")
        .unwrap()
        .contains("gave up after 4 attempts"));
    assert_eq!(
        env.sim.content_gets_for(&blobs[0].content_id),
        4,
        "O365_MAX_ATTEMPTS bounds the tries"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_work_item_pointing_outside_the_management_api_is_dead_lettered_and_gets_no_token() {
    let env = TestEnv::start(Options::default()).await;
    let (foreign, hits) = crate::webhook::counting_listener().await;
    // Defence in depth: the webhook never enqueues such an item, but the worker must refuse it
    // too (a queue shared with another producer, a tampered message).
    let item = serde_json::json!({
        "tenantId": TENANT_A, "contentType": "Audit.Exchange", "contentId": "abc$1",
        "contentUri": format!("{foreign}/api/v1.0/{TENANT_A}/activity/feed/audit/abc$1"),
        "source": "webhook",
    });
    let confirm = env
        .channel()
        .basic_publish(
            "".into(),
            env.work_queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            &serde_json::to_vec(&item).unwrap(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    let _ = confirm.await;
    let dead = env
        .drain(
            &format!("{}.dead", env.work_queue),
            1,
            Duration::from_secs(15),
            Duration::from_millis(100),
        )
        .await;
    assert_eq!(dead.len(), 1);
    // Refused when read back from the queue, by the same checks as at the webhook.
    assert_eq!(
        header(&dead[0], "o365-error-code").as_deref(),
        Some("malformed_work_item")
    );
    assert!(header(&dead[0], "o365-dead-reason")
        .unwrap_or_default()
        .contains("contentUri does not point at the Management API"));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the foreign server was never contacted"
    );
    env.cleanup().await;
}
