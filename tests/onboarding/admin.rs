//! The tenant registry through the admin API (`O365_ADMIN_LISTEN`), protected by
//! `O365_ADMIN_TOKEN`.

use crate::helpers::*;
use redis::AsyncCommands;
use serde_json::Value;

fn with_admin_token() -> Options {
    Options {
        extra_env: vec![("O365_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())],
        ..Options::default()
    }
}

async fn call(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
) -> (u16, Value) {
    let mut req = env.http.request(method, format!("{}{path}", env.admin_url));
    if let Some(b) = bearer {
        req = req.header("Authorization", format!("Bearer {b}"));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn admin(env: &TestEnv, method: reqwest::Method, path: &str) -> (u16, Value) {
    call(env, method, path, Some(ADMIN_TOKEN)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_without_or_with_a_wrong_bearer_token_is_401_and_changes_nothing() {
    // 45 failures from one client: a budget that large, so each is answered 401 rather than
    // throttled (429; tests/security/sign_in.rs tries the budget itself).
    let mut options = with_admin_token();
    options
        .extra_env
        .push(("O365_ADMIN_LOGIN_FAILURES_PER_MINUTE".into(), "1000".into()));
    let env = TestEnv::start(options).await;
    use reqwest::Method;
    let endpoints = [
        (Method::GET, "/admin/tenants".to_string()),
        (Method::POST, format!("/admin/tenants/{TENANT_B}")),
        (Method::DELETE, format!("/admin/tenants/{TENANT_STATIC}")),
        (
            Method::GET,
            format!("/admin/tenants/{TENANT_B}/subscriptions"),
        ),
        (
            Method::POST,
            format!("/admin/tenants/{TENANT_B}/subscriptions/start"),
        ),
        (Method::POST, format!("/admin/tenants/{TENANT_B}/approve")),
        (Method::GET, "/admin/consent/allowed".to_string()),
        (Method::PUT, format!("/admin/consent/allowed/{TENANT_B}")),
        (Method::DELETE, format!("/admin/consent/allowed/{TENANT_B}")),
    ];
    for (method, path) in &endpoints {
        for bearer in [
            None,
            Some("wrong-admin-token-0000000000000"),
            Some(""),
            Some(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
        ] {
            let (status, body) = call(&env, method.clone(), path, bearer).await;
            assert_eq!(status, 401, "{method} {path} with {bearer:?}");
            assert!(body["error"].is_string(), "{body}");
        }
        // Not a bearer scheme at all.
        let r = env
            .http
            .request(method.clone(), format!("{}{path}", env.admin_url))
            .header("Authorization", format!("Basic {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path} with Basic");
    }
    assert_eq!(env.tenant_ids().await, vec![TENANT_STATIC.to_string()]);
    assert_eq!(start_calls(&env.sim, TENANT_B), 0);
    assert!(env
        .relay
        .store
        .consent_allowlist()
        .all()
        .await
        .unwrap()
        .is_empty());
    // Health stays open for the orchestrator.
    let r = env
        .http
        .get(format!("{}/healthz", env.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_adds_lists_and_removes_a_tenant_and_a_removed_tenant_is_no_longer_served() {
    let env = TestEnv::start(with_admin_token()).await;
    use reqwest::Method;
    // Not served yet.
    assert_eq!(env.notify_for(TENANT_B).await.status(), 400);

    let (status, body) = admin(&env, Method::POST, &format!("/admin/tenants/{TENANT_B}")).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tenant"]["tenant_id"], TENANT_B);
    assert_eq!(body["tenant"]["added_by"], "admin");
    let outcomes = body["subscriptions"].as_array().unwrap();
    assert_eq!(outcomes.len(), 5, "{body}");
    assert!(outcomes.iter().all(|o| o["ok"] == true), "{body}");
    assert_subscribed(&env.sim, TENANT_B, &env.public_url, &env.auth_id);

    let (status, body) = admin(&env, Method::GET, "/admin/tenants").await;
    assert_eq!(status, 200);
    let listed: Vec<(&str, &str)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["tenant_id"].as_str().unwrap(),
                t["added_by"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![(TENANT_STATIC, "static"), (TENANT_B, "admin")],
        "{body}"
    );

    // Served: its notification is accepted, and a token was fetched and cached for it.
    assert_eq!(env.notify_for(TENANT_B).await.status(), 200);
    let mut r = redis().await;
    let token_key = env.redis_key(&format!("token:{TENANT_B}"));
    let cached: bool = r.exists(&token_key).await.unwrap();
    assert!(cached, "a token was cached for the tenant");

    let (status, body) = admin(&env, Method::DELETE, &format!("/admin/tenants/{TENANT_B}")).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = admin(&env, Method::GET, "/admin/tenants").await;
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    let resp = env.notify_for(TENANT_B).await;
    assert_eq!(resp.status(), 400, "notifications for a removed tenant");
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("not served"),
        "{err}"
    );
    let cached: bool = r.exists(&token_key).await.unwrap();
    assert!(!cached, "the removed tenant's token is dropped");
    // Removing it again is a 404.
    let (status, _) = admin(&env, Method::DELETE, &format!("/admin/tenants/{TENANT_B}")).await;
    assert_eq!(status, 404);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_with_stop_subscriptions_stops_them_at_microsoft() {
    let env = TestEnv::start(with_admin_token()).await;
    use reqwest::Method;
    let (status, _) = admin(&env, Method::POST, &format!("/admin/tenants/{TENANT_B}")).await;
    assert_eq!(status, 201);
    let (status, body) = admin(
        &env,
        Method::DELETE,
        &format!("/admin/tenants/{TENANT_B}?stop_subscriptions=true"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let subs = env.sim.subscriptions(TENANT_B);
    assert_eq!(subs.len(), 5);
    assert!(subs.iter().all(|s| s.status == "disabled"), "{subs:?}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_tenant_from_o365_tenants_is_a_409_and_it_stays_served() {
    let env = TestEnv::start(with_admin_token()).await;
    let (status, body) = admin(
        &env,
        reqwest::Method::DELETE,
        &format!("/admin/tenants/{TENANT_STATIC}"),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("O365_TENANTS"),
        "{body}"
    );
    assert!(env.tenant_ids().await.contains(&TENANT_STATIC.to_string()));
    assert_eq!(env.notify_for(TENANT_STATIC).await.status(), 200);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_lists_and_starts_subscriptions_respecting_the_fifteen_minute_rule() {
    let env = TestEnv::start(with_admin_token()).await;
    use reqwest::Method;
    let subs_path = format!("/admin/tenants/{TENANT_B}/subscriptions");
    let (status, body) = admin(&env, Method::GET, &subs_path).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::json!([]), "nothing started yet");

    // One content type.
    let (status, body) = admin(
        &env,
        Method::POST,
        &format!("{subs_path}/start?contentType=Audit.Exchange"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["content_type"], "Audit.Exchange");
    assert_eq!(env.sim.start_calls(TENANT_B, "Audit.Exchange"), 1);

    // All five: four start, Audit.Exchange is refused by the 15-minute rule without a call.
    let (status, body) = admin(&env, Method::POST, &format!("{subs_path}/start")).await;
    assert_eq!(status, 502, "{body}");
    let refused: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["ok"] == false)
        .map(|o| o["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(refused, vec!["Audit.Exchange"], "{body}");
    assert_eq!(env.sim.start_calls(TENANT_B, "Audit.Exchange"), 1);
    assert_subscribed(&env.sim, TENANT_B, &env.public_url, &env.auth_id);

    // force=true: Microsoft answers AF20024 (no change), which counts as success.
    let (status, body) = admin(&env, Method::POST, &format!("{subs_path}/start?force=true")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(env.sim.start_calls(TENANT_B, "Audit.Exchange"), 2);

    let (status, body) = admin(&env, Method::GET, &subs_path).await;
    assert_eq!(status, 200);
    let listed = body.as_array().unwrap();
    assert_eq!(listed.len(), 5, "{body}");
    for s in listed {
        assert_eq!(s["status"], "enabled", "{body}");
    }
    // Bad input.
    let (status, _) = admin(&env, Method::GET, "/admin/tenants/not-a-guid/subscriptions").await;
    assert_eq!(status, 400);
    let (status, _) = admin(
        &env,
        Method::POST,
        &format!("{subs_path}/start?contentType=Audit.Nope"),
    )
    .await;
    assert_eq!(status, 400);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_errors_name_the_failure_without_echoing_what_microsoft_said() {
    let env = TestEnv::start(with_admin_token()).await;
    // A tenant Microsoft does not know: Entra ID refuses the token with its own text
    // (AADSTS90002 "Tenant … not found"). The client learns there is no token, not Entra's words.
    let unknown = "9f1e2d3c-4b5a-4c6d-8e7f-0a1b2c3d4e5f";
    let (status, body) = admin(
        &env,
        reqwest::Method::GET,
        &format!("/admin/tenants/{unknown}/subscriptions"),
    )
    .await;
    assert_eq!(status, 424, "{body}");
    assert_eq!(body["code"], "token", "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    assert!(!body.to_string().contains("AADSTS"), "{body}");
    // Bad input stays 400 with our own words.
    let (status, body) = admin(
        &env,
        reqwest::Method::POST,
        &format!("/admin/tenants/{TENANT_B}/subscriptions/start?contentType=Audit.Nope"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    env.cleanup().await;
}
