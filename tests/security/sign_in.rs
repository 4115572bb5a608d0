//! Signing in to the admin listener (issue 20, part 4), tried as an attacker would: guessing
//! the admin token at the sign-in form and as a bearer token, reusing a session cookie after
//! logout or a token change, logging someone out from another site. Each relay is built in
//! process against the real Redis; clients are told apart by their real source addresses
//! (Linux answers on all of 127.0.0.0/8, so a client can connect from 127.0.0.2), or by the
//! `X-Forwarded-For` of a trusted proxy.

use crate::helpers::*;
use redis::AsyncCommands;
use std::net::IpAddr;
use std::time::Duration;

const TOKEN: &str = "sign-in-test-admin-token-0123456789";
const COOKIE: &str = "o365_admin";

fn with_token(extra: &[(&str, &str)]) -> Options {
    let mut extra_env = vec![("O365_ADMIN_TOKEN".to_string(), TOKEN.to_string())];
    extra_env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Options {
        extra_env,
        ..Options::default()
    }
}

/// An HTTP client connecting from `source` (an address of the loopback network).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn post_login(http: &reqwest::Client, env: &TestEnv, token: &str) -> reqwest::Response {
    post_login_at(http, &env.admin_url, token, &[]).await
}

async fn post_login_at(
    http: &reqwest::Client,
    admin_url: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = http
        .post(format!("{admin_url}/admin/login"))
        .form(&[("token", token)]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The `Set-Cookie` of a response, whole.
fn set_cookie(r: &reqwest::Response) -> String {
    r.headers()
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no Set-Cookie in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_string()
}

/// Signs in with the right token: `o365_admin=…`, as a browser sends it back.
async fn sign_in(http: &reqwest::Client, admin_url: &str) -> String {
    let r = post_login_at(http, admin_url, TOKEN, &[]).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/");
    let cookie = set_cookie(&r);
    cookie.split(';').next().unwrap().to_string()
}

/// The status (and body) of `GET path` with `cookie`.
async fn read_with(admin_url: &str, path: &str, cookie: &str) -> (u16, String) {
    let r = client()
        .get(format!("{admin_url}{path}"))
        .header("Cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

const LOGIN_FAILURES: &str = r#"o365_admin_auth_failures_total{route="login"}"#;
const API_FAILURES: &str = r#"o365_admin_auth_failures_total{route="api"}"#;
const THROTTLED: &str = "o365_admin_auth_throttled_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_at_the_sign_in_form_is_throttled_per_client_and_the_operator_still_signs_in() {
    let env = TestEnv::start(with_token(&[])).await;
    let attacker = client_from("127.0.0.2");
    // The budget: five wrong tokens, each compared and refused.
    for i in 0..5 {
        let r = post_login(&attacker, &env, &format!("guess-{i}")).await;
        assert_eq!(r.status(), 401, "guess {i}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    // Then 429 with Retry-After, whatever is sent — the right token included, which is not
    // even compared (so a right guess looks like a wrong one).
    for token in ["guess-5", "guess-6", TOKEN] {
        let r = post_login(&attacker, &env, token).await;
        assert_eq!(r.status(), 429, "{token}");
        let wait = retry_after(&r);
        assert!((1..=12).contains(&wait), "Retry-After {wait}");
        assert!(r.headers().get("set-cookie").is_none(), "{token}");
        assert!(r.text().await.unwrap().contains(r#"action="/admin/login""#));
    }
    // The operator, on another address, signs in during the flood.
    let operator = client_from("127.0.0.3");
    let cookie = sign_in(&operator, &env.admin_url).await;
    assert_eq!(read_with(&env.admin_url, "/admin/", &cookie).await.0, 200);
    // The attacker's flood goes on, refused; the operator's session is not affected.
    for i in 7..20 {
        let r = post_login(&attacker, &env, &format!("guess-{i}")).await;
        assert_eq!(r.status(), 429);
    }
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &cookie).await.0,
        200
    );
    assert_eq!(env.metric(LOGIN_FAILURES).await, 5.0);
    assert_eq!(env.metric(THROTTLED).await, 16.0);
    assert_eq!(env.metric(API_FAILURES).await, 0.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guessing_the_bearer_token_on_the_admin_api_is_throttled_the_same_way() {
    let env = TestEnv::start(with_token(&[])).await;
    let attacker = client_from("127.0.0.2");
    let tenants = format!("{}/admin/tenants", env.admin_url);
    // Missing and wrong bearer tokens spend the same budget.
    for bearer in [
        None,
        Some("guess-1"),
        Some(""),
        Some("guess-3"),
        Some("guess-4"),
    ] {
        let mut req = attacker.get(&tenants);
        if let Some(b) = bearer {
            req = req.header("Authorization", format!("Bearer {b}"));
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{bearer:?}");
    }
    for bearer in ["guess-5", TOKEN] {
        let r = attacker
            .get(&tenants)
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "{bearer}");
        assert!((1..=12).contains(&retry_after(&r)));
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("too many"),
            "{body}"
        );
    }
    // A state change from the attacker is refused before it is looked at, too.
    let r = attacker
        .post(format!(
            "{}/admin/tenants/{TENANT_B}?start=false",
            env.admin_url
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(!env.tenant_ids().await.iter().any(|t| t == TENANT_B));
    // The sign-in form shares the client's budget.
    assert_eq!(post_login(&attacker, &env, TOKEN).await.status(), 429);
    // Another client's scripts go on, as many calls as they like: successes spend nothing.
    let operator = client_from("127.0.0.3");
    for _ in 0..20 {
        let r = operator
            .get(&tenants)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(env.metric(API_FAILURES).await, 5.0);
    assert_eq!(env.metric(LOGIN_FAILURES).await, 0.0);
    assert_eq!(env.metric(THROTTLED).await, 4.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled_and_a_forged_header_buys_nothing()
{
    // 127.0.0.1 is the ingress; 127.0.0.2 connects directly and is nobody's proxy.
    let env = TestEnv::start(with_token(&[("O365_TRUSTED_PROXIES", "127.0.0.1")])).await;
    let via_proxy = client_from("127.0.0.1");
    let attacker = [("X-Forwarded-For", "203.0.113.7")];
    for i in 0..5 {
        let r = post_login_at(&via_proxy, &env.admin_url, &format!("g{i}"), &attacker).await;
        assert_eq!(r.status(), 401);
    }
    let r = post_login_at(&via_proxy, &env.admin_url, TOKEN, &attacker).await;
    assert_eq!(r.status(), 429);
    // Another client behind the same proxy is not affected.
    let operator = [("X-Forwarded-For", "1.1.1.1, 198.51.100.9")];
    let r = post_login_at(&via_proxy, &env.admin_url, TOKEN, &operator).await;
    assert_eq!(r.status(), 303);
    // A client that is not a trusted proxy cannot pick a new address for each guess.
    let direct = client_from("127.0.0.2");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let forged = format!("198.51.100.{}", 100 + i);
        let r = post_login_at(
            &direct,
            &env.admin_url,
            &format!("g{i}"),
            &[("X-Forwarded-For", &forged)],
        )
        .await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_sign_in_gets_a_random_session_id_that_carries_nothing_of_the_token() {
    let env = TestEnv::start(with_token(&[])).await;
    let http = client();
    let r = post_login(&http, &env, TOKEN).await;
    assert_eq!(r.status(), 303);
    let header = set_cookie(&r);
    for attribute in [
        "Path=/admin",
        "Max-Age=43200",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(header.contains(attribute), "{attribute} in {header}");
    }
    assert!(!header.contains("Secure"), "plain http: {header}");
    let first = header.split(';').next().unwrap().to_string();
    let second = sign_in(&http, &env.admin_url).await;
    assert_ne!(first, second, "each sign-in its own session");
    let old =
        o365_relay::broker::sha256_id(format!("o365-relay admin session v1\n{TOKEN}").as_bytes());
    for cookie in [&first, &second] {
        let value = cookie.strip_prefix(&format!("{COOKIE}=")).unwrap();
        // 32 random bytes, base64url: nothing the token could be tested against.
        assert_eq!(value.len(), 43, "{value}");
        assert!(value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert!(!value.contains(TOKEN) && !old.contains(value));
        assert!(!o365_relay::broker::sha256_id(TOKEN.as_bytes()).contains(value));
        assert_eq!(read_with(&env.admin_url, "/admin/", cookie).await.0, 200);
    }
    // Over https (an ingress in front says so), the cookie is also Secure.
    let r = post_login_at(
        &http,
        &env.admin_url,
        TOKEN,
        &[("X-Forwarded-Proto", "https")],
    )
    .await;
    assert!(set_cookie(&r).ends_with("; Secure"), "{}", set_cookie(&r));
    // A made-up id of the right shape opens nothing.
    let forged = format!("{COOKIE}={}", "A".repeat(43));
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &forged).await.0,
        401
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_ends_the_session_on_the_server_and_a_replayed_cookie_opens_nothing() {
    let env = TestEnv::start(with_token(&[])).await;
    let http = client();
    let mine = sign_in(&http, &env.admin_url).await;
    let other_browser = sign_in(&http, &env.admin_url).await;
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &mine).await.0,
        200
    );
    let r = http
        .post(format!("{}/admin/logout", env.admin_url))
        .header("Cookie", &mine)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/admin/");
    let cleared = set_cookie(&r);
    assert!(
        cleared.starts_with(&format!("{COOKIE}=;")) && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(cleared.contains("Path=/admin") && cleared.contains("HttpOnly"));
    // The browser would forget the cookie; a copy kept elsewhere opens nothing either.
    for path in ["/admin/status", "/admin/"] {
        let (status, body) = read_with(&env.admin_url, path, &mine).await;
        assert_eq!(status, 401, "{path}");
        if path == "/admin/" {
            assert!(body.contains(r#"action="/admin/login""#));
        }
    }
    // Logging out again, or without a cookie, is harmless.
    for cookie in [mine.as_str(), ""] {
        let r = http
            .post(format!("{}/admin/logout", env.admin_url))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
    }
    // Only that browser's session ended.
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &other_browser)
            .await
            .0,
        200
    );
    // Replaying an ended session is no guess at the token: it does not spend the budget.
    for _ in 0..10 {
        assert_eq!(
            read_with(&env.admin_url, "/admin/status", &mine).await.0,
            401
        );
    }
    assert_eq!(env.metric(API_FAILURES).await, 0.0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_admin_token_revokes_every_session_and_replicas_share_the_others() {
    let mut env = TestEnv::start(with_token(&[])).await;
    let cookie = sign_in(&client(), &env.admin_url).await;
    // A replica with the same token (same Redis prefix) honours the session…
    let same = env.add_replica(&[], bind()).await;
    let same_url = env.others[same].admin_url.clone();
    assert_eq!(read_with(&same_url, "/admin/status", &cookie).await.0, 200);
    // …a relay started with a new O365_ADMIN_TOKEN does not.
    const NEW: &str = "rotated-admin-token-9876543210";
    let rotated = env.add_replica(&[("O365_ADMIN_TOKEN", NEW)], bind()).await;
    let rotated_url = env.others[rotated].admin_url.clone();
    for path in ["/admin/status", "/admin/"] {
        assert_eq!(
            read_with(&rotated_url, path, &cookie).await.0,
            401,
            "{path}"
        );
    }
    // The old token does not sign in there; the new one does, and its session is refused by
    // the relays still on the old token.
    assert_eq!(
        post_login_at(&client(), &rotated_url, TOKEN, &[])
            .await
            .status(),
        401
    );
    let r = post_login_at(&client(), &rotated_url, NEW, &[]).await;
    assert_eq!(r.status(), 303);
    let new_cookie = set_cookie(&r).split(';').next().unwrap().to_string();
    assert_eq!(
        read_with(&rotated_url, "/admin/status", &new_cookie)
            .await
            .0,
        200
    );
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &new_cookie)
            .await
            .0,
        401
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_on_another_site_cannot_log_the_operator_out() {
    let env = TestEnv::start(with_token(&[])).await;
    let cookie = sign_in(&client(), &env.admin_url).await;
    let port = env.admin_url.rsplit(':').next().unwrap().to_string();
    let host = format!("localhost:{port}");
    let logout = |headers: Vec<(&'static str, String)>| {
        let mut req = client()
            .post(format!("{}/admin/logout", env.admin_url))
            .header("Host", &host)
            .header("Cookie", &cookie);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send()
    };
    for attack in [
        vec![
            ("Origin", "http://evil.example".to_string()),
            ("Sec-Fetch-Site", "cross-site".to_string()),
        ],
        vec![("Origin", "null".to_string())],
        vec![("Sec-Fetch-Site", "same-site".to_string())],
    ] {
        let r = logout(attack.clone()).await.unwrap();
        assert_eq!(r.status(), 403, "{attack:?}");
        assert!(r.headers().get("set-cookie").is_none());
    }
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &cookie).await.0,
        200
    );
    // From the status page itself (its own origin), logging out works.
    let r = logout(vec![
        ("Origin", format!("http://{host}")),
        ("Sec-Fetch-Site", "same-origin".to_string()),
    ])
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &cookie).await.0,
        401
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_expires_on_the_server_within_twelve_hours_and_redis_keeps_no_secret() {
    let env = TestEnv::start(with_token(&[])).await;
    let cookie = sign_in(&client(), &env.admin_url).await;
    let id = cookie.strip_prefix(&format!("{COOKIE}=")).unwrap();
    let mut redis = redis().await;
    let keys: Vec<String> = redis.keys(env.redis_key("admin-session:*")).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    let ttl: i64 = redis.pttl(key).await.unwrap();
    let twelve_hours = 12 * 3600 * 1000;
    assert!(
        ttl > twelve_hours - 60_000 && ttl <= twelve_hours,
        "the session's key expires with it: {ttl} ms"
    );
    // Neither the id nor the token is in Redis: reading it does not sign anyone in.
    let value: String = redis.get(key).await.unwrap();
    for secret in [id, TOKEN] {
        assert!(!key.contains(secret) && !value.contains(secret));
    }
    // The server's expiry is what counts: once the key is gone, the cookie (whose Max-Age
    // the browser may not honour) opens nothing.
    let _: () = redis.pexpire(key, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        read_with(&env.admin_url, "/admin/status", &cookie).await.0,
        401
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_wrong_admin_tokens_writes_a_few_warnings_and_never_a_token() {
    // The real binary, its log as an operator reads it, on ports of its own.
    let env = TestEnv::start(Options::default()).await;
    let (mut relay, _, admin_url) = env
        .serve_binary(&[("O365_ADMIN_TOKEN", TOKEN)], "sign-in-flood.log")
        .await;
    let attacker = client_from("127.0.0.2");
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..100 {
        let r = post_login_at(&attacker, &admin_url, &format!("secret-guess-{i}"), &[]).await;
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        let r = attacker
            .get(format!("{admin_url}/admin/tenants"))
            .bearer_auth(format!("bearer-guess-{i}"))
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(401, 5), (429, 195)].into_iter().collect());
    relay.stop(Duration::from_secs(10)).await;
    let log = relay.logs();
    let lines = |needle: &str| {
        log.lines()
            .filter(|l| l.contains("WARN") && l.contains(needle))
            .count()
    };
    let failed = lines("Admin sign-in failed");
    let refused = lines("Admin sign-in refused");
    assert!((1..=3).contains(&failed), "{failed} failure lines:\n{log}");
    assert!(
        (1..=3).contains(&refused),
        "{refused} refusal lines:\n{log}"
    );
    assert!(log.contains("127.0.0.2"), "the client is named:\n{log}");
    for secret in ["guess-", TOKEN] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_nobody_is_signed_in() {
    let mut env = TestEnv::start(with_token(&[])).await;
    let cookie = sign_in(&client(), &env.admin_url).await;
    // A replica whose Redis does not answer (nothing listens on port 1).
    let cut = env
        .add_replica(&[("O365_REDIS_URL", "redis://127.0.0.1:1")], bind())
        .await;
    let cut_url = env.others[cut].admin_url.clone();
    let (status, body) = read_with(&cut_url, "/admin/", &cookie).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#"action="/admin/login""#) && body.contains("Redis"));
    assert_eq!(read_with(&cut_url, "/admin/status", &cookie).await.0, 503);
    // Signing in cannot open a session there either.
    let r = post_login_at(&client(), &cut_url, TOKEN, &[]).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("set-cookie").is_none());
    // The bearer token still reads (it needs no session).
    let r = client()
        .get(format!("{cut_url}/admin/tenants"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 401);
    env.cleanup().await;
}
