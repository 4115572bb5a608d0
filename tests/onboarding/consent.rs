//! Admin consent over HTTP, every hop asserted (no redirects followed automatically):
//! `/consent` → `/consent/start` → the simulator's authorize page → its decision form →
//! our `/consent/callback`.

use crate::helpers::*;
use redis::AsyncCommands;

/// Where a consent round trip stands just before our callback is called.
pub struct Flow {
    pub state: String,
    /// `{public}/consent/callback?code=…&state=…` (or `error=…&state=…`).
    pub callback: url::Url,
}

/// `/consent/start` → the authorize URL with a fresh state; asserts its shape.
pub async fn begin(env: &TestEnv) -> (url::Url, String) {
    let r = env
        .http
        .get(format!("{}/consent/start", env.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "/consent/start redirects to Entra");
    let location = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        location.origin().ascii_serialization(),
        env.sim.url(),
        "the authorize URL is on O365_LOGIN_URL"
    );
    assert_eq!(location.path(), "/common/oauth2/authorize");
    assert_eq!(
        query_param(&location, "response_type").as_deref(),
        Some("code")
    );
    assert_eq!(
        query_param(&location, "resource").as_deref(),
        Some(env.sim.url().as_str())
    );
    assert_eq!(
        query_param(&location, "client_id").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(
        query_param(&location, "redirect_uri"),
        Some(format!("{}/consent/callback", env.public_url))
    );
    let state = query_param(&location, "state").expect("a state");
    assert!(state.len() >= 32, "state is long and random: {state}");
    (location, state)
}

/// The whole browser-side dance without a browser: start, load the simulator's consent page,
/// submit its form with `decision` (`accept`/`cancel`), and return where Entra sends us back.
pub async fn consent_until_callback(env: &TestEnv, decision: &str) -> Flow {
    let (authorize, state) = begin(env).await;
    let page = env.http.get(authorize.clone()).send().await.unwrap();
    assert_eq!(page.status(), 200, "the simulator shows its consent page");
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"accept\"") && html.contains("id=\"cancel\""));
    let mut form = hidden_inputs(&html);
    assert!(
        form.iter().any(|(k, v)| k == "state" && v == &state),
        "the sim's form carries our state: {form:?}"
    );
    form.push(("decision".into(), decision.into()));
    let r = env
        .http
        .post(format!(
            "{}/common/oauth2/authorize/decision",
            env.sim.url()
        ))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the decision redirects back to us");
    let callback = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert_eq!(
        format!(
            "{}{}",
            callback.origin().ascii_serialization(),
            callback.path()
        ),
        format!("{}/consent/callback", env.public_url)
    );
    assert_eq!(query_param(&callback, "state").as_deref(), Some(&*state));
    Flow { state, callback }
}

async fn get(env: &TestEnv, url: &str) -> (u16, String) {
    let r = env.http.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Asserts the relay registered nothing and started nothing.
async fn assert_nothing_registered(env: &TestEnv) {
    assert_eq!(
        env.tenant_ids().await,
        vec![TENANT_STATIC.to_string()],
        "only the static tenant is served"
    );
    assert!(
        !env.relay
            .tenants
            .is_served(&o365_relay::domain::TenantId::parse(TENANT_A).unwrap())
            .await
    );
    assert_eq!(
        start_calls(&env.sim, TENANT_A),
        0,
        "no subscription started"
    );
    assert!(env.sim.subscriptions(TENANT_A).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_page_offers_the_connect_button_and_names_the_permissions() {
    let env = TestEnv::start(Options::default()).await;
    let r = env
        .http
        .get(format!("{}/consent", env.public_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"connect\""), "{html}");
    assert!(html.contains("Connect your Microsoft 365 tenant"));
    for p in [
        "ActivityFeed.Read",
        "ActivityFeed.ReadDlp",
        "ServiceHealth.Read",
    ] {
        assert!(html.contains(p), "names {p}");
    }
    for ct in ALL_TYPES {
        assert!(html.contains(ct), "lists {ct}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "self-contained: no external assets"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consent_start_keeps_a_single_use_state_in_redis_for_ten_minutes() {
    let env = TestEnv::start(Options::default()).await;
    let (_, s1) = begin(&env).await;
    let (_, s2) = begin(&env).await;
    assert_ne!(s1, s2, "every start issues a new state");
    let mut r = redis().await;
    let ttl: i64 = r
        .pttl(env.redis_key(&format!("consent-state:{s1}")))
        .await
        .unwrap();
    assert!(
        (590_000..=600_000).contains(&ttl),
        "state lives 10 minutes, PTTL {ttl}"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_consent_registers_the_tenant_from_the_token_and_starts_its_subscriptions() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "accept").await;
    assert!(query_param(&flow.callback, "code").is_some());
    let (status, html) = get(&env, flow.callback.as_str()).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(&format!("<code id=\"tenant\">{TENANT_A}</code>")),
        "success page names the tenant: {html}"
    );
    assert!(html.contains(CONSENT_UPN), "names who consented");
    for ct in ALL_TYPES {
        assert!(html.contains(ct), "lists {ct}");
    }
    let record = env
        .relay
        .tenants
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.tenant_id.as_str() == TENANT_A)
        .expect("tenant registered");
    assert_eq!(record.added_by, o365_relay::tenants::AddedBy::Consent);
    assert_eq!(record.consented_by.as_deref(), Some(CONSENT_UPN));
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);
    // Served from now on: its notifications are accepted.
    assert_eq!(env.notify_for(TENANT_A).await.status(), 200);
    // The state was consumed.
    let mut r = redis().await;
    let left: bool = r
        .exists(env.redis_key(&format!("consent-state:{}", flow.state)))
        .await
        .unwrap();
    assert!(!left, "state consumed");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reused_state_is_refused_with_400_and_changes_nothing() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "accept").await;
    assert_eq!(get(&env, flow.callback.as_str()).await.0, 200);
    let before = env.relay.tenants.list().await.unwrap();
    let calls = start_calls(&env.sim, TENANT_A);

    // The same callback again (a replayed link).
    let (status, html) = get(&env, flow.callback.as_str()).await;
    assert_eq!(status, 400);
    assert!(html.contains("id=\"error\""), "{html}");
    // A fresh, valid code paired with the used state.
    let flow2 = consent_until_callback(&env, "accept").await;
    let mut replay = flow2.callback.clone();
    replay
        .query_pairs_mut()
        .clear()
        .append_pair("code", &query_param(&flow2.callback, "code").unwrap())
        .append_pair("state", &flow.state);
    assert_eq!(get(&env, replay.as_str()).await.0, 400);

    assert_eq!(env.relay.tenants.list().await.unwrap(), before, "no change");
    assert_eq!(start_calls(&env.sim, TENANT_A), calls, "nothing started");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_or_missing_state_is_refused_before_the_code_is_redeemed() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "accept").await;
    let code = query_param(&flow.callback, "code").unwrap();
    let base = format!("{}/consent/callback", env.public_url);
    for url in [
        format!("{base}?code={code}&state=forged-state-never-issued-0000000000"),
        format!("{base}?code={code}&state="),
        format!("{base}?code={code}"),
    ] {
        let (status, html) = get(&env, &url).await;
        assert_eq!(status, 400, "{url}");
        assert!(
            html.contains("invalid, expired or was already used"),
            "{html}"
        );
    }
    assert_nothing_registered(&env).await;
    // The code was never sent to Entra: it still works with its own state.
    assert_eq!(get(&env, flow.callback.as_str()).await.0, 200);
    assert!(env.tenant_ids().await.contains(&TENANT_A.to_string()));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_state_is_refused_with_400_and_nothing_registered() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "accept").await;
    // Ten minutes pass: Redis expires the state.
    let mut r = redis().await;
    let n: i64 = r
        .del(env.redis_key(&format!("consent-state:{}", flow.state)))
        .await
        .unwrap();
    assert_eq!(n, 1, "the state was stored under the relay's prefix");
    let (status, html) = get(&env, flow.callback.as_str()).await;
    assert_eq!(status, 400);
    assert!(html.contains("Start again"), "{html}");
    assert_nothing_registered(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_consent_shows_an_error_page_and_registers_nothing() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "cancel").await;
    assert_eq!(
        query_param(&flow.callback, "error").as_deref(),
        Some("access_denied")
    );
    assert!(query_param(&flow.callback, "code").is_none());
    let (status, html) = get(&env, flow.callback.as_str()).await;
    assert_eq!(status, 400);
    assert!(html.contains("Consent was declined"), "{html}");
    assert_nothing_registered(&env).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_code_exchange_shows_an_error_page_and_registers_nothing() {
    let env = TestEnv::start(Options::default()).await;
    let (_, state) = begin(&env).await;
    let (status, html) = get(
        &env,
        &format!(
            "{}/consent/callback?code=bogus-code-{}&state={state}",
            env.public_url,
            unique()
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        html.contains("did not accept the authorization code"),
        "{html}"
    );
    assert_nothing_registered(&env).await;
    assert!(
        env.sim
            .rejected_requests()
            .iter()
            .any(|l| l.contains("AADSTS70008")),
        "the exchange really reached Entra and was refused: {:?}",
        env.sim.rejected_requests()
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_id_in_the_query_string_is_never_trusted() {
    let env = TestEnv::start(Options::default()).await;
    let flow = consent_until_callback(&env, "accept").await;
    let mut url = flow.callback.clone();
    url.query_pairs_mut()
        .append_pair("tenant", TENANT_B)
        .append_pair("tid", TENANT_B)
        .append_pair("tenantId", TENANT_B)
        .append_pair("tenant_id", TENANT_B);
    let (status, html) = get(&env, url.as_str()).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        html.contains(TENANT_A) && !html.contains(TENANT_B),
        "{html}"
    );
    let ids = env.tenant_ids().await;
    assert!(ids.contains(&TENANT_A.to_string()), "{ids:?}");
    assert!(!ids.contains(&TENANT_B.to_string()), "{ids:?}");
    assert!(env.sim.subscriptions(TENANT_B).is_empty());
    assert_eq!(env.notify_for(TENANT_B).await.status(), 400);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parked_tenant_whose_admin_consents_again_is_unparked_at_once() {
    let env = TestEnv::start(Options::default()).await;
    let tenant = o365_relay::domain::TenantId::parse(TENANT_A).unwrap();
    let flow = consent_until_callback(&env, "accept").await;
    assert_eq!(get(&env, flow.callback.as_str()).await.0, 200);
    // The admin withdraws consent; the relay finds out and parks the tenant.
    env.sim.withdraw_consent(TENANT_A);
    let failure = o365_relay::health::TenantFailure {
        code: "token".into(),
        reason: "AADSTS7000229: missing service principal".into(),
    };
    env.relay.parking.park(&tenant, &failure).await;
    assert_eq!(
        env.relay.tenants.state_now(&tenant).await.map(|s| s.name()),
        Some("parked")
    );
    // The admin goes through the consent flow again: served and healthy on the spot, without
    // waiting for the probe, and Entra issues the tenant's tokens again.
    let flow = consent_until_callback(&env, "accept").await;
    let (status, html) = get(&env, flow.callback.as_str()).await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(
        env.relay.tenants.state_now(&tenant).await,
        Some(o365_relay::tenants::TenantState::Healthy)
    );
    env.relay.tokens.forget(&tenant).await;
    assert!(env.relay.tokens.get(&tenant).await.is_ok());
    let metrics = env
        .http
        .get(format!("{}/metrics", env.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("o365_tenants{state=\"parked\"} 0"),
        "{metrics}"
    );
    env.cleanup().await;
}
