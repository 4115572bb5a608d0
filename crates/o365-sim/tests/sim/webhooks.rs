//! Webhook delivery: the validation handshake, notifications, re-deliveries and disabling.

use crate::support::*;
use o365_sim::Faults;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_start_validates_the_webhook_and_then_notifies_it() {
    let (sim, token) = sim_with_token().await;
    let (hook, got) = webhook_receiver(200).await;
    let body =
        json!({"webhook": {"address": hook, "authId": "auth-id-0123456789", "expiration": ""}});
    let (status, resp) =
        start_sub(&sim, TENANT_A, &token, "Audit.General", Some(body.clone())).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["status"], "enabled");
    assert_eq!(resp["webhook"]["status"], "enabled");
    assert_eq!(resp["webhook"]["authId"], "auth-id-0123456789");
    {
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1, "one validation request");
        let v = &got[0];
        assert_eq!(v.headers["content-type"], "application/json; charset=utf-8");
        assert_eq!(v.headers["webhook-authid"], "auth-id-0123456789");
        let code = &v.headers["webhook-validationcode"];
        let b: Value = serde_json::from_str(&v.body).unwrap();
        assert_eq!(&b["validationCode"], code.as_str());
    }
    // Same webhook again -> AF20024, no new validation.
    let again = start_sub(&sim, TENANT_A, &token, "Audit.General", Some(body)).await;
    assert_start_refused(&again, 400, "AF20024");
    assert_eq!(got.lock().unwrap().len(), 1);
    // Publish -> one notification POST with both blobs.
    let blobs = sim.publish(TENANT_A, "Audit.General", 2, Some(1)).await;
    assert!(wait_for(|| sim.notifications_delivered() == 1).await);
    let n = got.lock().unwrap()[1].clone();
    assert_eq!(n.headers["content-type"], "application/json; utf-8");
    assert_eq!(n.headers["webhook-authid"], "auth-id-0123456789");
    let arr: Vec<Value> = serde_json::from_str(&n.body).unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["tenantId"], TENANT_A);
    assert_eq!(arr[0]["clientId"], CLIENT_ID);
    assert_eq!(arr[0]["contentId"], blobs[0].content_id.as_str());
    assert_eq!(arr[1]["contentUri"], blobs[1].content_uri.as_str());
    // Renotify -> a duplicate notification.
    sim.renotify(&blobs[0]).await;
    assert!(wait_for(|| sim.notifications_delivered() == 2).await);
    // Dropped notifications are counted, not sent.
    sim.set_faults(Faults {
        drop_notification: 1.0,
        ..Faults::default()
    });
    sim.publish(TENANT_A, "Audit.General", 3, Some(1)).await;
    assert_eq!(sim.notifications_dropped(), 3);
    // Stop -> disabled, no notifications.
    sim.set_faults(Faults::default());
    let r = http()
        .post(feed(&sim, TENANT_A, "subscriptions/stop"))
        .bearer_auth(&token)
        .query(&[
            ("contentType", "Audit.General"),
            ("PublisherIdentifier", TENANT_A),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(sim.subscriptions(TENANT_A)[0].status, "disabled");
    sim.publish(TENANT_A, "Audit.General", 1, Some(1)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.notifications_delivered(), 2);
    // The list endpoint.
    let body = mgmt_ok(&feed(&sim, TENANT_A, "subscriptions/list"), &token).await;
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["contentType"], "Audit.General");
    assert_eq!(list[0]["status"], "disabled");
    assert_eq!(list[0]["webhook"]["address"], hook.as_str());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_fails_validation_is_refused_and_a_restart_validates_again() {
    let (sim, token) = sim_with_token().await;
    // Validation answered 500 -> AF20021, subscription unchanged.
    let (bad, _) = webhook_receiver(500).await;
    let refused = start_webhook_sub(&sim, &token, "DLP.All", &bad).await;
    assert_start_refused(&refused, 400, "AF20021");
    assert!(sim.subscriptions(TENANT_A).is_empty());
    // A webhook that validates, then fails notifications: disabled after the retries.
    let (_, got) = subscribed_receiver(&sim, &token, "Audit.Exchange").await;
    assert_eq!(got.lock().unwrap().len(), 1);
    sim.disable_webhook(TENANT_A, "Audit.Exchange");
    let w = sim.subscriptions(TENANT_A)[0].webhook.clone().unwrap();
    assert_eq!(w.status, "disabled");
    // Re-start re-enables (validation again).
    let (status, _) = start_webhook_sub(&sim, &token, "Audit.Exchange", &bad).await;
    assert_eq!(status, 400);
    let (dead, _) = subscribed_receiver(&sim, &token, "Audit.Exchange").await;
    let w = sim.subscriptions(TENANT_A)[0].webhook.clone().unwrap();
    assert_eq!(
        (w.status.as_str(), w.address.as_str()),
        ("enabled", dead.as_str())
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_keeps_failing_deliveries_is_disabled_after_the_retries() {
    let (sim, token) = sim_with_token().await;
    // A receiver that accepts the validation (first request) and fails everything after.
    let (hook, got) = switching_receiver().await;
    let (status, _) = start_webhook_sub(&sim, &token, "Audit.SharePoint", &hook).await;
    assert_eq!(status, 200);
    sim.publish(TENANT_A, "Audit.SharePoint", 1, Some(1)).await;
    assert!(
        wait_for(|| sim.subscriptions(TENANT_A)[0]
            .webhook
            .as_ref()
            .is_some_and(|w| w.status == "disabled"))
        .await
    );
    // 1 validation + 1 attempt + 2 retries.
    assert_eq!(*got.lock().unwrap(), 4);
    assert_eq!(sim.notifications_delivered(), 0);
    sim.stop().await;
}
