//! Hostile text on the pages the relay serves (issue 20, part 1): Microsoft's status strings
//! and error text, a consenting admin's name, a parked tenant's reason, a replica's host name —
//! each stays text. The status page is rendered with a hostile value in every field and
//! compared, tag by tag, with the same page of plain values; the consent error page is reached
//! through the real flow; and a signed-in Chromium is shown the status page with hostile
//! values from Redis, and neither follows nor runs anything.

use crate::helpers::*;
use crate::webdriver::{Browser, Driver};
use actix_web::http::StatusCode;
use chrono::Utc;
use o365_relay::domain::{ContentType, TenantId};
use o365_relay::http::html::{page, Forms};
use o365_relay::http::status::{
    ContentTypeStatus, DeadLetterSeen, Deployment, Downstream, Offboarded, Queues, Status,
    TenantStatus, Verdict,
};
use o365_relay::store::activity::Counts;
use o365_relay::store::replicas::ReplicaInfo;
use o365_relay::tenancy::tenants::{AddedBy, NewTenant, TenantState};
use test_support::markup::{assert_same_outline, HOSTILE};

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

/// The status of a deployment with `text` in every field that can hold text.
fn status_with(text: &str) -> Status {
    let now = Utc::now();
    let chip = ContentTypeStatus {
        content_type: ContentType::Exchange,
        subscription: Some(text.into()),
        webhook: Some(text.into()),
        checked_at: Some(text.into()),
        last_notification: Some(text.into()),
        last_relayed: Some(text.into()),
    };
    let tenant = |id: &str, verdict: Verdict, state: TenantState| TenantStatus {
        tenant_id: tid(id),
        verdict,
        why: text.into(),
        state,
        added_by: AddedBy::Consent,
        added_at: text.into(),
        consented_by: Some(text.into()),
        content_types: vec![chip.clone(), chip.clone()],
        last_hour: Counts::default(),
        last_day: Counts::default(),
        last_dead: Some(DeadLetterSeen {
            at: Some(text.into()),
            code: Some(text.into()),
            reason: Some(text.into()),
        }),
        token_expires_at: Some(now),
        quota_used: 3,
    };
    let replica = ReplicaInfo {
        id: text.into(),
        host: text.into(),
        version: text.into(),
        started_at: text.into(),
        beat_at_ms: 0,
        downstream: None,
    };
    Status {
        generated_at: now,
        deployment: Deployment {
            certificate_expires_at: Some(now),
            queues: Queues::default(),
            replicas: vec![replica.clone(), replica],
            downstream: Some(Downstream {
                exchange: text.into(),
                since: now,
                routing_keys: 2,
                example_key: text.into(),
                waiting_blobs: 4,
                replicas: 1,
            }),
            reconciler_lease: Some(text.into()),
            keeper_lease: Some(text.into()),
            quota_per_minute: 2000,
            content_types: ContentType::ALL.to_vec(),
            problems: vec![text.into(), text.into()],
        },
        tenants: vec![
            tenant(
                TENANT_A,
                Verdict::Down,
                TenantState::Parked {
                    code: text.into(),
                    reason: text.into(),
                    since: now,
                },
            ),
            tenant(TENANT_B, Verdict::Attention, TenantState::Healthy),
        ],
        offboarded: vec![Offboarded {
            tenant_id: tid(TENANT_STATIC),
            since: Some(now),
        }],
    }
}

async fn served(status: &Status) -> String {
    let response = page(
        StatusCode::OK,
        Forms::SameOrigin,
        o365_relay::http::status::html::render(status, true),
    );
    let bytes = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn every_field_of_the_status_page_stays_text() {
    let plain = served(&status_with("plain text")).await;
    let hostile = served(&status_with(HOSTILE)).await;
    assert_same_outline(&plain, &hostile);
    assert!(hostile.contains("&lt;meta http-equiv=&quot;refresh&quot;"));
    assert!(
        hostile.contains(r"\u{1b}]0;pwned\u{7}\u{0}\u{202e}"),
        "{hostile}"
    );
}

/// The name of the consent cookie in a `Set-Cookie` value, and the `name=value` pair.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Entra's error text reaches the consent error page through the real flow (start, then a
/// callback carrying `error_description`) and stays text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entras_error_text_stays_text_on_the_consent_page() {
    let env = TestEnv::start(Options::default()).await;
    let mut pages = Vec::new();
    for text in ["plain text", HOSTILE] {
        let start = env
            .http
            .get(format!("{}/consent/start", env.public_url))
            .send()
            .await
            .unwrap();
        assert_eq!(start.status(), 302);
        let location = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
        let state = query_param(&location, "state").expect("a state");
        let cookie = cookie_pair(start.headers()["set-cookie"].to_str().unwrap());
        let mut callback =
            url::Url::parse(&format!("{}/consent/callback", env.public_url)).unwrap();
        callback
            .query_pairs_mut()
            .append_pair("state", &state)
            .append_pair("error", "server_error")
            .append_pair("error_description", text);
        let response = env
            .http
            .get(callback)
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error() || response.status().is_server_error());
        pages.push(response.text().await.unwrap());
    }
    assert!(pages[1].contains("server_error"), "{}", pages[1]);
    assert_same_outline(&pages[0], &pages[1]);
    env.cleanup().await;
}

/// A signed-in operator's Chromium shows the status page with hostile values in Redis — a
/// consenting admin's name, a parked tenant's reason, Microsoft's subscription and webhook
/// status strings, a dead letter's reason — and the only refresh on it is the page's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_in_browser_does_not_obey_hostile_values_on_the_status_page() {
    const TOKEN: &str = "status-page-admin-token-0123456789";
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_ADMIN_TOKEN".into(), TOKEN.into())],
        ..Options::default()
    })
    .await;
    let (a, b) = (tid(TENANT_A), tid(TENANT_B));
    let tenants = &env.relay.tenants;
    tenants
        .add(
            &a,
            AddedBy::Consent,
            Some(HOSTILE.into()),
            NewTenant::Healthy,
        )
        .await
        .unwrap();
    tenants
        .add(
            &b,
            AddedBy::Consent,
            Some(HOSTILE.into()),
            NewTenant::Healthy,
        )
        .await
        .unwrap();
    assert!(tenants.park(&a, "AF20010", HOSTILE).await.unwrap());
    let activity = env.relay.store.activity();
    let seen = serde_json::json!({"status": HOSTILE, "webhook": HOSTILE, "checked_at": HOSTILE});
    activity
        .subscription_seen(&b, ContentType::Exchange, &seen.to_string())
        .await
        .unwrap();
    activity.dead(&b, HOSTILE, HOSTILE).await.unwrap();

    let driver = Driver::start().await;
    let browser = Browser::open(&driver).await;
    browser.goto(&format!("{}/admin/", env.admin_url)).await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("button[type=submit]").await;
    let signed_in = eventually(std::time::Duration::from_secs(20), || async {
        let rows = "return document.querySelectorAll('tr.tenant[data-tenant]').length";
        browser.eval(rows).await.as_u64() >= Some(2)
    })
    .await;
    assert!(signed_in, "{}", browser.source().await);
    assert_eq!(browser.title().await, "o365-relay status");
    let refreshes = browser
        .eval(
            "return Array.from(document.querySelectorAll('meta[http-equiv]'))\
             .map(m => m.getAttribute('content'))",
        )
        .await;
    assert_eq!(refreshes, serde_json::json!(["30"]), "injected refresh");
    for injected in ["script", "b[x]", "textarea", "meta[content^='0;']"] {
        let found = browser
            .eval(&format!(
                "return document.querySelectorAll(\"{injected}\").length"
            ))
            .await;
        assert_eq!(found, 0, "an injected {injected} became an element");
    }
    let text = browser.eval("return document.body.innerText").await;
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.contains("<meta http-equiv=\"refresh\""),
        "shown as text: {text}"
    );
    assert!(text.contains(r"\u{1b}]0;pwned"), "{text}");
    assert!(browser.current_url().await.starts_with(&env.admin_url));
    browser.close().await;
    env.cleanup().await;
}
