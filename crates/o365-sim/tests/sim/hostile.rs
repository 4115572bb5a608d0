//! A hostile upstream: bodies and ids Microsoft could send that a careful client must survive.

use crate::support::*;
use o365_sim::Fault;
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drip_fed_content_arrives_slowly_but_whole() {
    let (sim, token) = sim_with_token().await;
    let body = o365_sim::hostile::blob_body(&[o365_sim::hostile::record_with_huge_field(
        TENANT_A,
        "Operation",
        500,
    )
    .into_bytes()]);
    let blob = sim
        .publish_body(TENANT_A, "Audit.General", body.clone(), None)
        .await;
    let interval = Duration::from_millis(30);
    let chunks_expected = body.len().div_ceil(256);
    assert!(chunks_expected >= 4, "body of {} bytes", body.len());
    sim.push_fault(Fault::DripFeed {
        chunk: 256,
        interval,
    });
    let t0 = std::time::Instant::now();
    let mut r = mgmt_send(&blob.content_uri, &token).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.content_length(), Some(body.len() as u64));
    let mut got = Vec::new();
    let mut reads = 0;
    let mut longest_gap = Duration::ZERO;
    let mut last = std::time::Instant::now();
    while let Some(c) = r.chunk().await.unwrap() {
        longest_gap = longest_gap.max(last.elapsed());
        last = std::time::Instant::now();
        reads += 1;
        got.extend_from_slice(&c);
    }
    assert_eq!(got, body, "the drip-fed body is the whole body");
    assert!(
        t0.elapsed() >= interval * (chunks_expected as u32 - 1),
        "{:?} for {chunks_expected} chunks",
        t0.elapsed()
    );
    assert!(reads >= 2, "arrived in pieces ({reads} reads)");
    // Each piece comes well before any sensible per-read timeout.
    assert!(longest_gap < Duration::from_secs(1), "{longest_gap:?}");
    // The fault was consumed: the next GET is whole and quick.
    let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_content_id_is_listed_notified_and_served_as_given() {
    let (sim, token) = sim_with_token().await;
    let (_, got) = subscribed_receiver(&sim, &token, "Audit.General").await;
    let id = long_content_id(300);
    assert_eq!(id.len(), 300);
    let records = o365_sim::hostile::duplicate_id_records(TENANT_A, 2);
    let blob = sim
        .publish_raw_with_id(TENANT_A, "Audit.General", id.clone(), records.clone())
        .await;
    assert_eq!(blob.content_id, id);
    assert_eq!(
        blob.content_uri,
        feed(&sim, TENANT_A, &format!("audit/{id}"))
    );
    // Notified as given.
    assert!(wait_for(|| sim.notifications_delivered() == 1).await);
    let n: Vec<Value> = serde_json::from_str(&got.lock().unwrap()[1].body).unwrap();
    assert_eq!(n[0]["contentId"], id.as_str());
    assert_eq!(n[0]["contentUri"], blob.content_uri.as_str());
    // Listed as given.
    let b = mgmt_ok(
        &feed(
            &sim,
            TENANT_A,
            "subscriptions/content?contentType=Audit.General",
        ),
        &token,
    )
    .await;
    let listed: Vec<Value> = serde_json::from_str(&b).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["contentId"], id.as_str());
    assert_eq!(listed[0]["contentUri"], blob.content_uri.as_str());
    // Served.
    let b = mgmt_ok(&blob.content_uri, &token).await;
    assert!(b.contains(&records[0]) && b.contains(&records[1]));
    // Beyond the simulator's own bound: listed, but its GET is refused like a bad id.
    let too_long = long_content_id(1025);
    let blob = sim
        .publish_raw_with_id(TENANT_A, "Audit.General", too_long, records)
        .await;
    assert_af(&blob.content_uri, &token, 400, "AF20052").await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_body_is_served_byte_exact_even_when_it_is_not_utf8() {
    use o365_sim::hostile;
    let (sim, token) = sim_with_token().await;
    let good = hostile::record_with_long_id(TENANT_A, 36);
    let bad = hostile::record_with_invalid_utf8(TENANT_A);
    let body = hostile::blob_body(&[good.clone().into_bytes(), bad.clone()]);
    assert!(std::str::from_utf8(&body).is_err());
    let blob = sim
        .publish_body(TENANT_A, "Audit.Exchange", body.clone(), None)
        .await;
    let (s, h, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    assert_eq!(b.as_ref(), body.as_slice());
    // Best-effort records: both Ids are known, the bad record only lossily.
    assert_eq!(blob.records.len(), 2);
    assert_eq!(blob.records[0], good);
    let good_id = serde_json::from_str::<Value>(&good).unwrap()["Id"].clone();
    assert_eq!(blob.record_ids[0], good_id.as_str().unwrap());
    assert_eq!(blob.record_ids[1].len(), 36);
    // Not an array, not JSON, empty: served as given, under the id asked for.
    for (i, body) in [
        b"{\"value\":[]}".to_vec(),
        vec![0xFF, 0xFE, 0x00, b'[', 0x80],
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("{i}$hostile$body");
        let blob = sim
            .publish_body(TENANT_A, "Audit.Exchange", body.clone(), Some(id.clone()))
            .await;
        assert_eq!(blob.content_id, id);
        assert!(blob.records.is_empty() && blob.record_ids.is_empty());
        let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
        assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_record_makers_build_what_they_promise() {
    use o365_sim::hostile;
    let common = [
        "CreationTime",
        "Id",
        "Operation",
        "OrganizationId",
        "RecordType",
        "UserKey",
        "UserType",
        "Workload",
        "UserId",
    ];
    let is_guid = |v: &Value| uuid::Uuid::try_parse(v.as_str().unwrap()).is_ok();

    for len in [0, 36, 300, 5000] {
        let r: Value = serde_json::from_str(&hostile::record_with_long_id(TENANT_A, len)).unwrap();
        assert_eq!(r["Id"].as_str().unwrap().len(), len);
        for k in common {
            assert!(r.get(k).is_some(), "{k} missing");
        }
        assert_eq!(r["OrganizationId"], TENANT_A);
    }

    for field in ["Operation", "Workload", "BrandNewField"] {
        let text = hostile::record_with_huge_field(TENANT_A, field, 100_000);
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(r[field].as_str().unwrap().len(), 100_000, "{field}");
        assert!(is_guid(&r["Id"]));
        for k in common {
            assert!(r.get(k).is_some(), "{k} missing");
        }
        // The field is replaced, not repeated.
        assert_eq!(text.matches(&format!("\"{field}\":")).count(), 1);
    }

    let bad = hostile::record_with_invalid_utf8(TENANT_A);
    assert!(std::str::from_utf8(&bad).is_err());
    assert!(serde_json::from_slice::<Value>(&bad).is_err());
    let lossy: Value = serde_json::from_str(&String::from_utf8_lossy(&bad)).unwrap();
    assert!(is_guid(&lossy["Id"]));
    assert!(lossy["UserId"].as_str().unwrap().contains('\u{FFFD}'));

    let dups = hostile::duplicate_id_records(TENANT_A, 5);
    assert_eq!(dups.len(), 5);
    let ids: HashSet<String> = dups
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r).unwrap()["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        dups.iter().collect::<HashSet<_>>().len(),
        5,
        "otherwise different"
    );

    let body = hostile::blob_body(&[b"{\"a\":1}".to_vec(), b"{}".to_vec()]);
    assert_eq!(body, b"[{\"a\":1},{}]");
    assert_eq!(hostile::blob_body(&[]), b"[]");
}
