//! Who may onboard (`O365_CONSENT_MODE`), end to end over HTTP: the allowlist (configured and
//! through the admin API), approval (admin API and CLI), and the tenant states an operator
//! sees on the way. The simulator's consent page lets each flow sign in to a chosen tenant.

use crate::consent::{assert_nothing_registered, consent_as, finish};
use crate::helpers::*;
use o365_relay::domain::TenantId;
use reqwest::Method;
use serde_json::Value;

fn mode(vars: &[(&str, &str)]) -> Options {
    let mut extra_env: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    extra_env.push(("O365_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()));
    Options {
        extra_env,
        ..Options::default()
    }
}

async fn admin(env: &TestEnv, method: Method, path: &str) -> (u16, Value) {
    let r = env
        .http
        .request(method, format!("{}{path}", env.admin_url))
        .header("Authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

fn tid(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

/// The state name `GET /admin/tenants` shows for `tenant` (`None`: not listed).
async fn listed_state(env: &TestEnv, tenant: &str) -> Option<String> {
    let (status, list) = admin(env, Method::GET, "/admin/tenants").await;
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant_id"] == tenant)
        .map(|t| t["state"]["state"].as_str().unwrap().to_string())
}

fn run_cli(env: &TestEnv, args: &[&str]) -> std::process::Output {
    relay_command(args)
        .envs(env.vars.iter().cloned())
        .env("RUST_LOG", "warn")
        .output()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowlist_mode_serves_listed_tenants_and_shows_others_a_clear_page() {
    let env = TestEnv::start(mode(&[
        ("O365_CONSENT_MODE", "allowlist"),
        ("O365_CONSENT_ALLOWED_TENANTS", TENANT_A),
    ]))
    .await;
    let page = env.http.get(format!("{}/consent", env.public_url)).send();
    let html = page.await.unwrap().text().await.unwrap();
    assert!(html.contains("agreed to serve"), "the page says so: {html}");

    // A tenant not listed completes Microsoft's consent: told so, nothing registered.
    let flow = consent_as(&env, "accept", Some(TENANT_B)).await;
    let (status, html) = finish(&env, &flow).await;
    assert_eq!(status, 403, "{html}");
    assert!(
        html.contains("does not serve your tenant") && html.contains(TENANT_B),
        "{html}"
    );
    assert!(
        html.contains("contact the organisation that operates it"),
        "{html}"
    );
    assert_nothing_registered(&env).await;
    assert_eq!(env.notify_for(TENANT_B).await.status(), 400);

    // The configured tenant is served as in open mode.
    let flow = consent_as(&env, "accept", Some(TENANT_A)).await;
    let (status, html) = finish(&env, &flow).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(&format!("<code id=\"tenant\">{TENANT_A}</code>")));
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);
    assert_eq!(
        listed_state(&env, TENANT_A).await.as_deref(),
        Some("healthy")
    );

    // The operator allows B through the admin API; its admin consents again, and it is served.
    let (status, body) = admin(
        &env,
        Method::PUT,
        &format!("/admin/consent/allowed/{TENANT_B}"),
    )
    .await;
    assert_eq!(
        (status, body["added"].as_bool()),
        (201, Some(true)),
        "{body}"
    );
    let (status, _) = admin(
        &env,
        Method::PUT,
        &format!("/admin/consent/allowed/{TENANT_B}"),
    )
    .await;
    assert_eq!(status, 200, "already allowed");
    let (status, list) = admin(&env, Method::GET, "/admin/consent/allowed").await;
    assert_eq!(status, 200);
    assert_eq!(
        list,
        serde_json::json!({"mode": "allowlist", "configured": [TENANT_A], "added": [TENANT_B]})
    );
    let flow = consent_as(&env, "accept", Some(TENANT_B)).await;
    assert_eq!(finish(&env, &flow).await.0, 200);
    assert_subscribed(&env.sim, TENANT_B, &env.public_url, &env.auth_id);
    assert_eq!(env.notify_for(TENANT_B).await.status(), 200);

    // Taking B off the list stops new consents, not the tenant already served.
    let (status, _) = admin(
        &env,
        Method::DELETE,
        &format!("/admin/consent/allowed/{TENANT_B}"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = admin(
        &env,
        Method::DELETE,
        &format!("/admin/consent/allowed/{TENANT_B}"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, body) = admin(
        &env,
        Method::DELETE,
        &format!("/admin/consent/allowed/{TENANT_A}"),
    )
    .await;
    assert_eq!(status, 409, "configured: remove it there");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("O365_CONSENT_ALLOWED_TENANTS"),
        "{body}"
    );
    let (status, _) = admin(&env, Method::PUT, "/admin/consent/allowed/not-a-tenant").await;
    assert_eq!(status, 400);
    assert!(env.relay.tenants.is_served(&tid(TENANT_B)).await);
    let flow = consent_as(&env, "accept", Some(TENANT_B)).await;
    assert_eq!(finish(&env, &flow).await.0, 403);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approval_mode_registers_a_consenting_tenant_pending_until_an_operator_approves_it() {
    let env = TestEnv::start(mode(&[("O365_CONSENT_MODE", "approval")])).await;
    let flow = consent_as(&env, "accept", Some(TENANT_A)).await;
    let (status, html) = finish(&env, &flow).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains("awaits approval") && html.contains("id=\"pending\""),
        "{html}"
    );
    assert!(html.contains(&format!("<code id=\"tenant\">{TENANT_A}</code>")));

    // Pending: listed as such, served nothing, nothing started.
    assert_eq!(
        listed_state(&env, TENANT_A).await.as_deref(),
        Some("pending")
    );
    let o = run_cli(&env, &["tenants", "list"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.lines()
            .any(|l| l.starts_with(TENANT_A) && l.contains("pending") && l.contains("consent")),
        "{out}"
    );
    assert!(!env.relay.tenants.is_served(&tid(TENANT_A)).await);
    assert_eq!(env.notify_for(TENANT_A).await.status(), 400);
    assert_eq!(start_calls(&env.sim, TENANT_A), 0);

    // Approved: healthy, subscriptions started, served.
    let (status, body) = admin(
        &env,
        Method::POST,
        &format!("/admin/tenants/{TENANT_A}/approve"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tenant"]["state"]["state"], "healthy");
    assert_eq!(body["subscriptions"].as_array().unwrap().len(), 5, "{body}");
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);
    assert_eq!(
        listed_state(&env, TENANT_A).await.as_deref(),
        Some("healthy")
    );
    assert_eq!(env.notify_for(TENANT_A).await.status(), 200);
    // Its admin consenting again changes nothing: approved stays approved.
    let flow = consent_as(&env, "accept", Some(TENANT_A)).await;
    let (_, html) = finish(&env, &flow).await;
    assert!(html.contains("is connected"), "{html}");

    // Not registered: 404; not pending (parked): 409; bad id: 400.
    let (status, _) = admin(
        &env,
        Method::POST,
        &format!("/admin/tenants/{TENANT_B}/approve"),
    )
    .await;
    assert_eq!(status, 404);
    env.relay
        .tenants
        .park(&tid(TENANT_A), "token", "test")
        .await
        .unwrap();
    let (status, body) = admin(
        &env,
        Method::POST,
        &format!("/admin/tenants/{TENANT_A}/approve"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("parked"), "{body}");
    let (status, _) = admin(&env, Method::POST, "/admin/tenants/nope/approve").await;
    assert_eq!(status, 400);
    // A parked tenant's admin consenting again un-parks it, with no new approval.
    let flow = consent_as(&env, "accept", Some(TENANT_A)).await;
    assert_eq!(finish(&env, &flow).await.0, 200);
    assert_eq!(
        listed_state(&env, TENANT_A).await.as_deref(),
        Some("healthy")
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenants_approve_on_the_command_line_approves_and_exits_as_the_other_commands() {
    let env = TestEnv::start(mode(&[("O365_CONSENT_MODE", "approval")])).await;
    let flow = consent_as(&env, "accept", Some(TENANT_B)).await;
    assert_eq!(finish(&env, &flow).await.0, 200);
    assert_eq!(
        listed_state(&env, TENANT_B).await.as_deref(),
        Some("pending")
    );

    let o = run_cli(&env, &["tenants", "approve", TENANT_B]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains(&format!("approved {TENANT_B}")), "{out}");
    assert_eq!(out.matches("started ").count(), 5, "{out}");
    assert_subscribed(&env.sim, TENANT_B, &env.public_url, &env.auth_id);
    // The running relay (another process approved it) serves it within its cache's seconds.
    assert!(
        eventually(std::time::Duration::from_secs(10), || async {
            env.relay.tenants.is_served(&tid(TENANT_B)).await
        })
        .await
    );

    // Not registered: failed (1); not pending: failed (1); not a tenant id: bad input (2).
    let o = run_cli(&env, &["tenants", "approve", TENANT_A]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not registered"));
    env.relay
        .tenants
        .park(&tid(TENANT_B), "token", "test")
        .await
        .unwrap();
    let o = run_cli(&env, &["tenants", "approve", TENANT_B]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not pending approval"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run_cli(&env, &["tenants", "approve", "not-a-tenant"]);
    assert_eq!(o.status.code(), Some(2));
    env.cleanup().await;
}
