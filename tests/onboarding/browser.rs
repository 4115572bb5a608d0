//! A real browser (Debian's chromium, headless) driven over WebDriver by chromedriver: the tenant
//! admin's consent journey in each consent mode — open (Cancel, Accept, and a callback opened in
//! another browser), allowlist (a tenant not listed, then a listed one) and approval. WebDriver
//! is JSON over HTTP, so reqwest is the whole client. Screenshots of the final pages go to
//! `test-artifacts/`.
//!
//! The relay is reached as `localhost` and the simulator (Entra) as `127.0.0.1`: two different
//! sites, as in production, so the browser treats the return from Entra as a cross-site
//! navigation and the tests prove the consent cookie (SameSite=Lax) survives it.
//!
//! CI installs chromium and chromium-driver with `.ci/browser-setup`; without them this test
//! fails (it must not pass silently).

use crate::helpers::*;
use crate::webdriver::*;

/// The relay on another site than the simulator (see the module doc), with `vars`.
fn cross_site(vars: &[(&str, &str)]) -> Options {
    Options {
        public_host: Some("localhost".into()),
        extra_env: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    }
}

fn tid(s: &str) -> o365_relay::domain::TenantId {
    o365_relay::domain::TenantId::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_admin_connects_their_tenant_in_a_real_browser_and_cancel_connects_nothing() {
    let driver = Driver::start().await;
    let env = TestEnv::start(cross_site(&[])).await;
    assert!(env.public_url.starts_with("http://localhost:"));
    let browser = Browser::open(&driver).await;

    // Cancel: our error page, nothing registered.
    browser.goto(&format!("{}/consent", env.public_url)).await;
    assert_eq!(browser.title().await, "Connect your Microsoft 365 tenant");
    let permissions = browser.text("#permissions").await;
    assert!(
        permissions.contains("ActivityFeed.Read") && !permissions.contains("ServiceHealth"),
        "{permissions}"
    );
    browser.screenshot("consent-page").await;
    browser.click("#connect").await;
    browser.find("#accept").await;
    assert!(
        browser
            .current_url()
            .await
            .starts_with(&format!("{}/common/oauth2/authorize?", env.sim.url())),
        "the button leads to Entra's authorize page"
    );
    browser.screenshot("consent-sim-page").await;
    browser.click("#cancel").await;
    let message = browser.text("#error").await;
    assert!(message.contains("Consent was declined"), "{message}");
    assert!(browser
        .current_url()
        .await
        .starts_with(&format!("{}/consent/callback?", env.public_url)));
    assert_eq!(browser.title().await, "Tenant not connected");
    browser.screenshot("consent-cancelled").await;
    assert_eq!(env.tenant_ids().await, vec![TENANT_STATIC.to_string()]);
    assert_eq!(start_calls(&env.sim, TENANT_A), 0);

    // The admin's browser reaches Microsoft; the same sign-in link is opened in another
    // browser (a planted link, RFC 6749 §10.12), which accepts: refused, nothing registered.
    browser.goto(&format!("{}/consent", env.public_url)).await;
    browser.click("#connect").await;
    browser.find("#accept").await;
    let authorize = browser.current_url().await;
    let other = Browser::open(&driver).await;
    other.goto(&authorize).await;
    other.click("#accept").await;
    let message = other.text("#error").await;
    assert!(message.contains("started in another browser"), "{message}");
    other.screenshot("consent-other-browser").await;
    other.close().await;
    assert_eq!(env.tenant_ids().await, vec![TENANT_STATIC.to_string()]);
    assert_eq!(start_calls(&env.sim, TENANT_A), 0);

    // Accept in the admin's own browser: its cookie came back across sites; the success page
    // names the tenant.
    browser.click("#accept").await;
    let callback = format!("{}/consent/callback", env.public_url);
    browser.wait_for_url(&callback).await;
    let tenant = browser.text("#tenant").await;
    assert_eq!(tenant, TENANT_A);
    assert_eq!(browser.title().await, "Tenant connected");
    let subscribed = browser.text("#subscriptions").await;
    for ct in ALL_TYPES {
        assert!(
            subscribed.contains(&format!("{ct}: enabled")),
            "{subscribed}"
        );
    }
    let shot = browser.screenshot("consent-success").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 1_000);

    // The tenant is served and its subscriptions are enabled with our webhook.
    assert!(env.relay.tenants.is_served(&tid(TENANT_A)).await);
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);
    assert_eq!(env.notify_for(TENANT_A).await.status(), 200);

    browser.close().await;
    env.cleanup().await;
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_allowlist_mode_a_tenant_not_listed_is_told_so_in_the_browser_and_a_listed_one_connects()
{
    let driver = Driver::start().await;
    let env = TestEnv::start(cross_site(&[
        ("O365_CONSENT_MODE", "allowlist"),
        ("O365_CONSENT_ALLOWED_TENANTS", TENANT_A),
    ]))
    .await;
    let browser = Browser::open(&driver).await;

    browser.goto(&format!("{}/consent", env.public_url)).await;
    browser.click("#connect").await;
    browser.select("#tenant", TENANT_B).await;
    browser.click("#accept").await;
    let message = browser.text("#not-served").await;
    assert!(message.contains(TENANT_B), "{message}");
    assert_eq!(browser.title().await, "Tenant not served");
    let page = browser.source().await;
    assert!(
        page.contains("This service does not serve your tenant"),
        "{page}"
    );
    browser.screenshot("consent-allowlist-not-served").await;
    assert_eq!(env.tenant_ids().await, vec![TENANT_STATIC.to_string()]);
    assert_eq!(start_calls(&env.sim, TENANT_B), 0);
    assert!(env.sim.subscriptions(TENANT_B).is_empty());

    browser.goto(&format!("{}/consent", env.public_url)).await;
    browser.click("#connect").await;
    browser.select("#tenant", TENANT_A).await;
    browser.click("#accept").await;
    let callback = format!("{}/consent/callback", env.public_url);
    browser.wait_for_url(&callback).await;
    assert_eq!(browser.text("#tenant").await, TENANT_A);
    assert_eq!(browser.title().await, "Tenant connected");
    browser.screenshot("consent-allowlist-connected").await;
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);
    assert!(!env.relay.tenants.is_served(&tid(TENANT_B)).await);

    browser.close().await;
    env.cleanup().await;
    drop(driver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_approval_mode_the_browser_says_the_tenant_awaits_approval_and_approval_serves_it() {
    let driver = Driver::start().await;
    let env = TestEnv::start(cross_site(&[("O365_CONSENT_MODE", "approval")])).await;
    let browser = Browser::open(&driver).await;

    browser.goto(&format!("{}/consent", env.public_url)).await;
    let page = browser.source().await;
    assert!(page.contains("approves your tenant"), "{page}");
    browser.click("#connect").await;
    browser.click("#accept").await;
    let pending = browser.text("#pending").await;
    assert!(pending.contains("approves each new tenant"), "{pending}");
    assert_eq!(browser.text("#tenant").await, TENANT_A);
    assert_eq!(browser.title().await, "Tenant awaiting approval");
    browser.screenshot("consent-approval-pending").await;

    let record = env
        .relay
        .tenants
        .get(&tid(TENANT_A))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.state.name(), "pending");
    assert!(!env.relay.tenants.is_served(&tid(TENANT_A)).await);
    assert_eq!(start_calls(&env.sim, TENANT_A), 0);

    // The operator approves it: served, subscriptions started.
    let r = env
        .http
        .post(format!(
            "{}/admin/tenants/{TENANT_A}/approve",
            env.admin_url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(env.relay.tenants.is_served(&tid(TENANT_A)).await);
    assert_subscribed(&env.sim, TENANT_A, &env.public_url, &env.auth_id);

    browser.close().await;
    env.cleanup().await;
    drop(driver);
}

/// The operator's status page in a real browser: signing in with the admin token, every tenant
/// at a glance with its verdict and why, readable on a phone (rows become cards). Screenshots:
/// `test-artifacts/status-page.png` and `status-page-phone.png` (docs/status-page.png is one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_every_tenant_at_a_glance_in_a_real_browser() {
    const TOKEN: &str = "browser-status-admin-token-0123456789";
    let driver = Driver::start().await;
    let env = TestEnv::start(Options {
        extra_env: vec![("O365_ADMIN_TOKEN".into(), TOKEN.into())],
        ..Options::default()
    })
    .await;
    // A healthy tenant with traffic (what workers and the webhook record), and a parked one.
    let a = tid(TENANT_A);
    let b = tid(TENANT_B);
    let parts = &env.relay;
    for t in [&a, &b] {
        parts
            .tenants
            .add(
                t,
                o365_relay::tenancy::tenants::AddedBy::Consent,
                Some("admin@contoso.example".into()),
                o365_relay::tenancy::tenants::NewTenant::Healthy,
            )
            .await
            .unwrap();
    }
    let ct = o365_relay::domain::ContentType::Exchange;
    parts.store.activity().notified(&a, ct, 12).await.unwrap();
    for _ in 0..12 {
        parts
            .store
            .activity()
            .relayed(&a, ct, 250, false)
            .await
            .unwrap();
    }
    parts
        .store
        .activity()
        .relayed(&a, ct, 40, true)
        .await
        .unwrap();
    parts
        .tenants
        .park(
            &b,
            "token",
            "Entra refused a fresh token: consent withdrawn (AADSTS65001) <script>",
        )
        .await
        .unwrap();

    let browser = Browser::open(&driver).await;
    browser.resize(1400, 760).await;
    browser.goto(&format!("{}/admin/", env.admin_url)).await;
    browser.type_into("input[name=token]", TOKEN).await;
    browser.click("button[type=submit]").await;
    let row_a = browser
        .text(&format!("tr[data-tenant=\"{TENANT_A}\"]"))
        .await;
    assert!(row_a.contains("ok") && row_a.contains("3040"), "{row_a}");
    let row_b = browser
        .text(&format!("tr[data-tenant=\"{TENANT_B}\"]"))
        .await;
    assert!(
        row_b.contains("down") && row_b.contains("consent withdrawn"),
        "{row_b}"
    );
    assert!(
        row_b.contains("<script>"),
        "a reason is shown as text, not run: {row_b}"
    );
    assert_eq!(browser.text("#tenants-down b").await, "1");
    assert!(browser.text("#replicas").await.contains('1'));
    // Parked tenants come first: the operator sees what is wrong without scrolling.
    let first = browser
        .eval("return document.querySelector('tr.tenant').dataset.tenant")
        .await;
    assert_eq!(first, TENANT_B);
    browser.screenshot("status-page").await;

    browser.resize(390, 844).await;
    browser.goto(&format!("{}/admin/", env.admin_url)).await;
    let display = browser
        .eval("return getComputedStyle(document.querySelector('tr.tenant')).display")
        .await;
    assert_eq!(display, "block", "on a phone each tenant is a card");
    let overflow = browser
        .eval("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(overflow, true, "no sideways scrolling on a phone");
    browser.screenshot("status-page-phone").await;

    browser.close().await;
    env.cleanup().await;
    drop(driver);
}
