//! This binary's defaults for the one in-process environment (`tests/common/relay_env.rs`):
//! a static tenant and two that can consent, no workers, no sink; and what the onboarding tests
//! share (subscriptions as the simulator shows them, the simulator's consent form).

#![allow(dead_code)]

#[path = "../common/relay_env.rs"]
mod relay_env;
pub use relay_env::*;

use o365_sim::Simulator;
use std::time::Duration;

/// A tenant configured in `O365_TENANTS` (served without consent).
pub const TENANT_STATIC: &str = "0b6a3c1d-2e4f-4a5b-9c8d-7e6f5a4b3c2d";
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const ALL_TYPES: [&str; 5] = o365_sim::CONTENT_TYPES;

impl Default for Options {
    fn default() -> Self {
        Options {
            sim_tenants: vec![TENANT_A.into(), TENANT_B.into(), TENANT_STATIC.into()],
            static_tenants: vec![TENANT_STATIC.into()],
            notification_retries: vec![Duration::from_millis(200)],
            workers: false,
            base_env: vec![
                ("O365_SHUTDOWN_TIMEOUT".into(), "3s".into()),
                ("O365_HTTP_TIMEOUT".into(), "10s".into()),
            ],
            ..Options::base()
        }
    }
}

impl TestEnv {
    /// A `Relay` (no listeners, no loops) sharing this environment's settings: a second
    /// replica for store-level checks, or what the CLI builds.
    pub fn second_relay(&self) -> std::sync::Arc<RelayParts> {
        self.relay_with(&[])
    }

    /// POSTs a notification for one freshly published blob of `tenant` to `/webhook`.
    pub async fn notify_for(&self, tenant: &str) -> reqwest::Response {
        let blob = self
            .sim
            .publish_raw(
                tenant,
                "Audit.Exchange",
                vec![format!(
                    r#"{{"Id":"{}","RecordType":2,"CreationTime":"2026-01-01T00:00:00","Operation":"Send","OrganizationId":"{tenant}","UserType":0,"Workload":"Exchange"}}"#,
                    uuid::Uuid::new_v4()
                )],
            )
            .await;
        let body = serde_json::json!([{
            "tenantId": blob.tenant_id, "clientId": CLIENT_ID, "contentType": blob.content_type,
            "contentId": blob.content_id, "contentUri": blob.content_uri,
            "contentCreated": blob.content_created, "contentExpiration": blob.content_expiration,
        }]);
        self.http
            .post(format!("{}/webhook", self.public_url))
            .header("Webhook-AuthID", &self.auth_id)
            .header("Content-Type", "application/json; utf-8")
            .body(serde_json::to_vec(&body).unwrap())
            .send()
            .await
            .unwrap()
    }
}

/// Asserts the sim shows all five subscriptions of `tenant` enabled with our webhook.
pub fn assert_subscribed(sim: &Simulator, tenant: &str, public_url: &str, auth_id: &str) {
    let subs = sim.subscriptions(tenant);
    assert_eq!(
        subs.len(),
        5,
        "expected five subscriptions for {tenant}: {subs:?}"
    );
    for s in subs {
        assert_eq!(s.status, "enabled", "{s:?}");
        let hook = s.webhook.expect("webhook registered");
        assert_eq!(hook.address, format!("{public_url}/webhook"));
        assert_eq!(hook.status, "enabled");
        assert_eq!(hook.auth_id, auth_id);
    }
}

/// Total `/start` calls the simulator received for `tenant`.
pub fn start_calls(sim: &Simulator, tenant: &str) -> u64 {
    ALL_TYPES.iter().map(|ct| sim.start_calls(tenant, ct)).sum()
}

/// `(name, value)` of every `<input type="hidden">` of an HTML page (the simulator's form).
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        let end = tag[start..].find('"')? + start;
        Some(unescape(&tag[start..end]))
    };
    html.split("<input")
        .skip(1)
        .filter_map(|rest| {
            let tag = &rest[..rest.find('>')?];
            if attr(tag, "type").as_deref() != Some("hidden") {
                return None;
            }
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A query parameter of a URL.
pub fn query_param(url: &url::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
