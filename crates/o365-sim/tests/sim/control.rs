//! The simulator's own control endpoints (`/sim/...`), used by the demo, the benchmark and tests.

use crate::support::*;
use base64::Engine as _;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_publishes_sets_faults_and_reports_what_happened() {
    let sim = sim_with(config(None)).await;
    let r = control_post(
        &sim,
        "publish",
        &json!({"tenant": TENANT_A, "contentType": "Audit.Exchange", "blobs": 2, "records": 5}),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let blobs: Vec<o365_sim::SimBlob> = r.json().await.unwrap();
    assert_eq!(blobs.len(), 2);
    let r = control_post(&sim, "faults", &json!({"throttle_429": 0.5})).await;
    assert_eq!(r.status().as_u16(), 200);
    bearer(&sim, TENANT_A).await;
    let stats = control_get(&sim, "stats").await;
    assert_eq!(stats["records_published"], 10);
    assert_eq!(stats["token_requests"][TENANT_A], 1);
    let subs = control_get(&sim, &format!("subscriptions/{TENANT_A}")).await;
    assert_eq!(subs, json!([]));
    sim.stop().await;
}

/// POSTs `body` to the control endpoint `/sim/{path}`; returns the status.
async fn control_post_status(sim: &o365_sim::Simulator, path: &str, body: &Value) -> u16 {
    control_post(sim, path, body).await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_publishes_raw_bodies_and_sets_sticky_and_pushed_faults() {
    let (sim, token) = sim_with_token().await;
    let body = vec![b'[', 0xFF, b']'];
    let id = long_content_id(300);
    let r = control_post(
        &sim,
        "publish-body",
        &json!({
            "tenant": TENANT_A,
            "contentType": "Audit.SharePoint",
            "contentId": id,
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&body),
        }),
    )
    .await;
    assert_eq!(r.status().as_u16(), 200);
    let blob: o365_sim::SimBlob = r.json().await.unwrap();
    assert_eq!(blob.content_id, id);
    let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    // A multi-MiB body fits the route's own limit (above the control API's 1 MiB).
    let big = vec![b' '; 3 * 1024 * 1024];
    let status = control_post_status(
        &sim,
        "publish-body",
        &json!({
            "contentType": "Audit.SharePoint",
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&big),
        }),
    )
    .await;
    assert_eq!(status, 200);
    // Where a body goes is checked even though the body is not.
    for bad in [
        json!({"contentType": "Audit.Nope", "bodyBase64": ""}),
        json!({"tenant": "00000000-0000-0000-0000-000000000000", "contentType": "Audit.SharePoint", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint", "bodyBase64": "not base64!"}),
        json!({"contentType": "Audit.SharePoint", "contentId": "", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint"}),
    ] {
        let status = control_post_status(&sim, "publish-body", &bad).await;
        assert_eq!(status, 400, "{bad}");
    }
    // Sticky over HTTP, then cleared.
    let status = control_post_status(
        &sim,
        "fault-for",
        &json!({"contentId": id, "fault": {"kind": "huge_error", "status": 503, "code": "AF50005", "message_bytes": 10}}),
    )
    .await;
    assert_eq!(status, 204);
    assert_af(&blob.content_uri, &token, 503, "AF50005").await;
    assert_eq!(control_delete(&sim, &format!("fault-for/{id}")).await, 204);
    assert_eq!(control_delete(&sim, &format!("fault-for/{id}")).await, 404);
    // Pushed over HTTP.
    let status = control_post_status(
        &sim,
        "push-fault",
        &json!({"fault": {"kind": "retry_after", "status": 403, "secs": 100000000}}),
    )
    .await;
    assert_eq!(status, 204);
    let h = assert_af(&blob.content_uri, &token, 403, "AF429").await;
    assert_eq!(h["retry-after"], "100000000");
    mgmt_ok(&blob.content_uri, &token).await;
    // A nonsensical fault is refused, not stored.
    let status = control_post_status(
        &sim,
        "push-fault",
        &json!({"fault": {"kind": "drip_feed", "chunk": 0, "interval_ms": 1}}),
    )
    .await;
    assert_eq!(status, 400);
    mgmt_ok(&blob.content_uri, &token).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_tenants_exist_already_subscribed_and_calls_are_counted_per_tenant_and_route() {
    let sim = sim_with(o365_sim::SimConfig {
        generated_tenants: 1_000,
        subscribed_webhook: Some(o365_sim::PresetWebhook {
            address: "https://relay.example/webhook".into(),
            auth_id: "preset-auth-id-0123456789".into(),
        }),
        ..config(None)
    })
    .await;
    let tenants = sim.tenants();
    assert_eq!(
        tenants.len(),
        1_002,
        "the two configured and 1,000 generated"
    );
    let last = o365_sim::generated_tenant(999);
    assert_eq!(tenants.last(), Some(&last));
    assert!(uuid::Uuid::try_parse(&last).is_ok(), "{last} is a GUID");
    // Onboarded already: five enabled subscriptions with the preset webhook, listable at once.
    let subs = sim.subscriptions(&last);
    assert_eq!(subs.len(), 5);
    assert!(subs.iter().all(|s| s.status == "enabled"
        && s.webhook
            .as_ref()
            .is_some_and(|w| w.address == "https://relay.example/webhook")));
    let token = bearer(&sim, &last).await;
    mgmt_ok(&feed(&sim, &last, "subscriptions/list"), &token).await;
    for _ in 0..2 {
        mgmt_ok(
            &feed(&sim, &last, "subscriptions/content?contentType=DLP.All"),
            &token,
        )
        .await;
    }
    use o365_sim::Route;
    assert_eq!(sim.route_calls(&last, Route::ListSubscriptions), 1);
    assert_eq!(sim.route_calls(&last, Route::ListContent), 2);
    assert_eq!(sim.route_calls(&last, Route::Start), 0);
    assert_eq!(sim.route_calls(TENANT_A, Route::ListContent), 0);
    assert_eq!(sim.route_calls_total(Route::ListContent), 2);
    let calls = control_get(&sim, &format!("calls/{last}")).await;
    assert_eq!(calls["list_content"], 2);
    assert_eq!(calls["list_subscriptions"], 1);
    assert_eq!(calls["get_content"], 0);
    let stats = control_get(&sim, "stats").await;
    assert_eq!(stats["calls_by_route"]["list_content"], 2);
    sim.stop().await;
}
