//! The simulator's own control endpoints (`/sim/...`), used by the demo, the benchmark and tests.

use crate::support::*;
use base64::Engine as _;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_publishes_sets_faults_and_reports_what_happened() {
    let sim = sim_with(config(None)).await;
    let r = http()
        .post(format!("{}/sim/publish", sim.url()))
        .json(
            &json!({"tenant": TENANT_A, "contentType": "Audit.Exchange", "blobs": 2, "records": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let blobs: Vec<o365_sim::SimBlob> = r.json().await.unwrap();
    assert_eq!(blobs.len(), 2);
    let r = http()
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"throttle_429": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    bearer(&sim, TENANT_A).await;
    let stats: Value = http()
        .get(format!("{}/sim/stats", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["records_published"], 10);
    assert_eq!(stats["token_requests"][TENANT_A], 1);
    let subs: Value = http()
        .get(format!("{}/sim/subscriptions/{TENANT_A}", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(subs, json!([]));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_publishes_raw_bodies_and_sets_sticky_and_pushed_faults() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let control = |path: &str| format!("{}/sim/{path}", sim.url());
    let body = vec![b'[', 0xFF, b']'];
    let id = long_content_id(300);
    let r = http()
        .post(control("publish-body"))
        .json(&json!({
            "tenant": TENANT_A,
            "contentType": "Audit.SharePoint",
            "contentId": id,
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&body),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let blob: o365_sim::SimBlob = r.json().await.unwrap();
    assert_eq!(blob.content_id, id);
    let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    // A multi-MiB body fits the route's own limit (above the control API's 1 MiB).
    let big = vec![b' '; 3 * 1024 * 1024];
    let r = http()
        .post(control("publish-body"))
        .json(&json!({
            "contentType": "Audit.SharePoint",
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&big),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Where a body goes is checked even though the body is not.
    for bad in [
        json!({"contentType": "Audit.Nope", "bodyBase64": ""}),
        json!({"tenant": "00000000-0000-0000-0000-000000000000", "contentType": "Audit.SharePoint", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint", "bodyBase64": "not base64!"}),
        json!({"contentType": "Audit.SharePoint", "contentId": "", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint"}),
    ] {
        let r = http()
            .post(control("publish-body"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    // Sticky over HTTP, then cleared.
    let r = http()
        .post(control("fault-for"))
        .json(&json!({"contentId": id, "fault": {"kind": "huge_error", "status": 503, "code": "AF50005", "message_bytes": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (503, "AF50005"));
    let r = http()
        .delete(control(&format!("fault-for/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http()
        .delete(control(&format!("fault-for/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Pushed over HTTP.
    let r = http()
        .post(control("push-fault"))
        .json(&json!({"fault": {"kind": "retry_after", "status": 403, "secs": 100000000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, h, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (403, "AF429"));
    assert_eq!(h["retry-after"], "100000000");
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    // A nonsensical fault is refused, not stored.
    let r = http()
        .post(control("push-fault"))
        .json(&json!({"fault": {"kind": "drip_feed", "chunk": 0, "interval_ms": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    sim.stop().await;
}
