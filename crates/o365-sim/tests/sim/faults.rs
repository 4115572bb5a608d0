//! Faults the tests inject into content requests: queued, random, sticky, and their JSON form.

use crate::support::*;
use o365_sim::{Fault, Faults};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_faults_answer_content_requests_in_order_and_are_not_refusals() {
    let (sim, token) = sim_with_token().await;
    let blob = publish_one(&sim, "Audit.SharePoint", None).await;
    sim.set_faults(Faults {
        retry_after: true,
        ..Faults::default()
    });
    sim.push_fault(Fault::Throttle429);
    sim.push_fault(Fault::Throttle403);
    sim.push_fault(Fault::ServerError);
    sim.push_fault(Fault::Unauthorized);
    sim.push_fault(Fault::Expired);
    sim.push_fault(Fault::Slow(Duration::from_millis(300)));
    let h = assert_af(&blob.content_uri, &token, 429, "AF429").await;
    assert_eq!(h["retry-after"], "1");
    assert_af(&blob.content_uri, &token, 403, "AF429").await;
    assert_af(&blob.content_uri, &token, 500, "AF50000").await;
    assert_eq!(mgmt_get(&blob.content_uri, &token).await.0, 401);
    assert_af(&blob.content_uri, &token, 400, "AF20051").await;
    let t0 = std::time::Instant::now();
    mgmt_ok(&blob.content_uri, &token).await;
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Truncated: 200, then the body breaks.
    sim.push_fault(Fault::Truncate);
    assert_truncated(&blob.content_uri, &token).await;
    // Random faults (probability 1).
    sim.set_faults(Faults {
        throttle_429: 1.0,
        ..Faults::default()
    });
    let (s, h, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 429);
    assert!(h.get("retry-after").is_none());
    sim.set_faults(Faults::default());
    mgmt_ok(&blob.content_uri, &token).await;
    assert_eq!(sim.content_gets(), 9);
    // Faults did not count as refusals.
    assert_nothing_refused(&sim);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_fault_sends_the_absurd_header_it_was_given() {
    let (sim, token) = sim_with_token().await;
    let blob = publish_one(&sim, "Audit.Exchange", Some(2)).await;
    sim.push_fault(Fault::RetryAfter {
        status: 429,
        secs: 100_000_000,
    });
    sim.push_fault(Fault::RetryAfter {
        status: 403,
        secs: 0,
    });
    let h = assert_af(&blob.content_uri, &token, 429, "AF429").await;
    assert_eq!(h["retry-after"], "100000000");
    let h = assert_af(&blob.content_uri, &token, 403, "AF429").await;
    assert_eq!(h["retry-after"], "0");
    mgmt_ok(&blob.content_uri, &token).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_error_message_is_served_as_valid_json() {
    let (sim, token) = sim_with_token().await;
    let blob = publish_one(&sim, "Audit.SharePoint", Some(2)).await;
    sim.push_fault(Fault::HugeError {
        status: 500,
        code: "AF50000".into(),
        message_bytes: 65_536,
    });
    // A code that needs escaping still yields valid JSON.
    sim.push_fault(Fault::HugeError {
        status: 400,
        code: "AF\"20050\n".into(),
        message_bytes: 0,
    });
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 500);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"]["code"], "AF50000");
    let message = v["error"]["message"].as_str().unwrap();
    assert_eq!(message.len(), 65_536);
    assert!(message.starts_with("An internal error occurred."));
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 400);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"], json!({"code": "AF\"20050\n", "message": ""}));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_fault_hits_only_its_content_id_until_it_is_cleared() {
    let (sim, token) = sim_with_token().await;
    let blobs = sim.publish(TENANT_A, "Audit.Exchange", 2, Some(2)).await;
    let (bad, good) = (&blobs[0], &blobs[1]);
    sim.fault_for(&bad.content_id, Fault::ServerError);
    sim.push_fault(Fault::Throttle429);
    // The sticky id answers its fault every time and leaves the pushed one alone...
    for _ in 0..3 {
        assert_af(&bad.content_uri, &token, 500, "AF50000").await;
    }
    // ...which the next GET of another blob takes; after it that blob is fine.
    assert_af(&good.content_uri, &token, 429, "AF429").await;
    mgmt_ok(&good.content_uri, &token).await;
    // Random faults do not reach a sticky id either.
    sim.set_faults(Faults {
        throttle_403: 1.0,
        ..Faults::default()
    });
    sim.fault_for(&bad.content_id, Fault::Expired);
    assert_af(&bad.content_uri, &token, 400, "AF20051").await;
    sim.set_faults(Faults::default());
    // The old variants work sticky too: a body that always breaks halfway.
    sim.fault_for(&bad.content_id, Fault::Truncate);
    for _ in 0..2 {
        assert_truncated(&bad.content_uri, &token).await;
    }
    // The new ones too.
    sim.fault_for(
        &bad.content_id,
        Fault::RetryAfter {
            status: 429,
            secs: 7,
        },
    );
    let (s, h, _) = mgmt_get(&bad.content_uri, &token).await;
    assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "7"));
    assert!(sim.clear_fault_for(&bad.content_id));
    assert!(!sim.clear_fault_for(&bad.content_id));
    let b = mgmt_ok(&bad.content_uri, &token).await;
    assert!(b.contains(&bad.records[0]));
    assert_eq!(sim.content_gets_for(&bad.content_id), 8);
    assert_nothing_refused(&sim);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_have_a_json_shape_and_nonsense_is_refused() {
    let cases = [
        (Fault::Throttle429, json!({"kind": "throttle429"})),
        (Fault::ServerError, json!({"kind": "server_error"})),
        (
            Fault::Slow(Duration::from_millis(300)),
            json!({"kind": "slow", "ms": 300}),
        ),
        (
            Fault::DripFeed {
                chunk: 64,
                interval: Duration::from_millis(50),
            },
            json!({"kind": "drip_feed", "chunk": 64, "interval_ms": 50}),
        ),
        (
            Fault::RetryAfter {
                status: 429,
                secs: 100_000_000,
            },
            json!({"kind": "retry_after", "status": 429, "secs": 100_000_000}),
        ),
        (
            Fault::HugeError {
                status: 500,
                code: "AF50000".into(),
                message_bytes: 65_536,
            },
            json!({"kind": "huge_error", "status": 500, "code": "AF50000", "message_bytes": 65_536}),
        ),
    ];
    for (fault, wire) in cases {
        assert_eq!(serde_json::to_value(&fault).unwrap(), wire);
        assert_eq!(serde_json::from_value::<Fault>(wire).unwrap(), fault);
    }
    for nonsense in [
        json!({"kind": "drip_feed", "chunk": 0, "interval_ms": 50}),
        json!({"kind": "retry_after", "status": 42, "secs": 1}),
        json!({"kind": "retry_after", "status": 204, "secs": 1}),
        json!({"kind": "huge_error", "status": 500, "code": "X", "message_bytes": 1u64 << 40}),
        json!({"kind": "slow", "ms": 1, "extra": true}),
        json!({"kind": "meteor_strike"}),
        json!({"ms": 1}),
    ] {
        assert!(
            serde_json::from_value::<Fault>(nonsense.clone()).is_err(),
            "{nonsense}"
        );
    }
}
