//! Webhook traffic: the validation request sent by `subscriptions/start` and the notifications
//! sent when content is published (Office 365 Management Activity API reference, "Webhook
//! validation", "Receiving notifications" and "Notification failure and retry").
//!
//! - Validation: `Content-Type: application/json; charset=utf-8`, `Webhook-ValidationCode`,
//!   `Webhook-AuthID` (when configured), body `{"validationCode": ...}`; only HTTP 200 passes.
//! - Notification: a JSON array of content blobs, `Content-Type: application/json; utf-8`
//!   (Microsoft's odd spelling), `Webhook-AuthID`. Anything but 200 is retried after the
//!   configured delays; when they are exhausted the webhook is disabled, as Microsoft does.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Inner, SimBlob, WebhookState};

/// Most blobs per notification POST (keeps each POST well under 1 MiB).
pub const MAX_BLOBS_PER_POST: usize = 100;
/// Validation request timeout.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Send the validation request; `Err(reason)` unless the webhook answers 200.
pub(crate) async fn validate(inner: &Inner, address: &str, auth_id: &str) -> Result<(), String> {
    let code = super::entra::random_token(24);
    let mut req = inner
        .http
        .post(address)
        .timeout(VALIDATION_TIMEOUT)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Webhook-ValidationCode", &code)
        .body(json!({ "validationCode": code }).to_string());
    if !auth_id.is_empty() {
        req = req.header("Webhook-AuthID", auth_id);
    }
    match req.send().await {
        Ok(r) if r.status().as_u16() == 200 => Ok(()),
        Ok(r) => Err(format!("the webhook answered HTTP {}", r.status().as_u16())),
        Err(e) => Err(format!("the webhook could not be reached: {e}")),
    }
}

/// Deliver notifications for `blobs` when the subscription and its webhook are enabled.
/// `apply_drop`: subject blobs to the `drop_notification` fault (not for explicit renotify).
pub(crate) fn notify(
    inner: &Arc<Inner>,
    tenant: &str,
    content_type: &str,
    blobs: Vec<SimBlob>,
    apply_drop: bool,
) {
    let (webhook, faults) = {
        let st = inner.state();
        let webhook = st
            .subscriptions
            .get(tenant)
            .and_then(|m| m.get(content_type))
            .filter(|s| s.enabled)
            .and_then(|s| s.webhook.clone())
            .filter(|w| w.status == "enabled");
        (webhook, st.faults.clone())
    };
    // No enabled subscription + webhook: content is only listed, nobody is told.
    let Some(webhook) = webhook else { return };
    let mut kept = Vec::with_capacity(blobs.len());
    let mut dropped = 0;
    for b in blobs {
        if apply_drop
            && faults.drop_notification > 0.0
            && rand::random::<f64>() < faults.drop_notification
        {
            dropped += 1;
        } else {
            kept.push(b);
        }
    }
    if dropped > 0 {
        inner.state().notifications_dropped += dropped;
    }
    if kept.is_empty() {
        return;
    }
    let inner = inner.clone();
    let tenant = tenant.to_string();
    let content_type = content_type.to_string();
    let delay = Duration::from_millis(faults.notification_delay_ms);
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        for chunk in kept.chunks(MAX_BLOBS_PER_POST) {
            let body = notification_body(&inner.config.client_id, chunk);
            if !deliver(&inner, &webhook, body).await {
                disable(&inner, &tenant, &content_type, &webhook);
                return;
            }
        }
    });
}

/// The body of one notification POST announcing `blobs` ("Receiving notifications": a JSON
/// array of content blobs); at most [`MAX_BLOBS_PER_POST`] of them per POST.
pub fn notification_body(client_id: &str, blobs: &[SimBlob]) -> String {
    json!(blobs
        .iter()
        .map(|b| json!({
            "tenantId": b.tenant_id,
            "clientId": client_id,
            "contentType": b.content_type,
            "contentId": b.content_id,
            "contentUri": b.content_uri,
            "contentCreated": b.content_created,
            "contentExpiration": b.content_expiration,
        }))
        .collect::<Vec<_>>())
    .to_string()
}

/// POST one notification with retries; `true` when answered 200.
async fn deliver(inner: &Inner, webhook: &WebhookState, body: String) -> bool {
    let mut delays = inner.config.notification_retry_delays.iter();
    loop {
        if inner.stopped.load(Ordering::SeqCst) {
            return true; // shutting down: neither delivered nor a webhook failure
        }
        let mut req = inner
            .http
            .post(&webhook.address)
            .header("Content-Type", "application/json; utf-8")
            .body(body.clone());
        if !webhook.auth_id.is_empty() {
            req = req.header("Webhook-AuthID", &webhook.auth_id);
        }
        match req.send().await {
            Ok(r) if r.status().as_u16() == 200 => {
                inner.state().notifications_delivered += 1;
                return true;
            }
            Ok(r) => {
                tracing::debug!(target: "o365_sim", "notification to {} answered {}", webhook.address, r.status())
            }
            Err(e) => {
                tracing::debug!(target: "o365_sim", "notification to {} failed: {e}", webhook.address)
            }
        }
        match delays.next() {
            Some(d) => tokio::time::sleep(*d).await,
            None => return false,
        }
    }
}

/// Retries exhausted: Microsoft disables the webhook (until the next `/start`).
fn disable(inner: &Inner, tenant: &str, content_type: &str, webhook: &WebhookState) {
    let mut st = inner.state();
    if let Some(w) = st
        .subscriptions
        .get_mut(tenant)
        .and_then(|m| m.get_mut(content_type))
        .and_then(|s| s.webhook.as_mut())
        .filter(|w| w.address == webhook.address && w.auth_id == webhook.auth_id)
    {
        tracing::info!(target: "o365_sim", "webhook {} disabled after failed deliveries", w.address);
        w.status = "disabled".into();
    }
}
