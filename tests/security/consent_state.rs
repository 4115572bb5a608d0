//! The consent `state` attacked (issue 20, part 3: "a consent start costs the server
//! nothing"): a flood of starts from many addresses, a planted nonce cookie, forged, expired,
//! replayed and cross-browser states. docs/ONBOARDING.md, "Abuse limits"; `src/http/consent/`.
//!
//! "The code was never redeemed" is proven twice: the simulator's token endpoint refused
//! nothing (every redemption attempt it sees, valid or not, is either a token or a refusal it
//! records), and the same code still completes the consent afterwards (its codes are
//! single-use: a redemption attempt consumes one).

use crate::helpers::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::StreamExt;
use o365_relay::http::consent::state::{nonce_hash, sign, Claims, StateKey, ENCODED_LEN};
use redis::AsyncCommands;

/// The relay's `O365_CONSENT_STATE_KEY` where a test configures one.
const KEY: &str = "security-test-consent-state-key-0123456789";

fn options(vars: &[(&str, &str)]) -> Options {
    Options {
        extra_env: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    }
}

/// A browser's `/consent/start`: its cookie (if any) and its address (`X-Forwarded-For`).
struct Started {
    authorize: url::Url,
    state: String,
    /// `name=nonce`, as the browser sends it back.
    cookie: String,
    /// The whole `Set-Cookie`.
    set_cookie: String,
}

async fn start(env: &TestEnv, cookie: Option<&str>, client: Option<&str>) -> Started {
    let mut req = env.http.get(format!("{}/consent/start", env.public_url));
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    if let Some(a) = client {
        req = req.header("X-Forwarded-For", a);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 302);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let authorize = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let state = query_param(&authorize, "state").unwrap();
    Started {
        authorize,
        state,
        cookie: set_cookie.split_once("; ").unwrap().0.to_string(),
        set_cookie,
    }
}

/// The admin accepts on the simulator's consent page → where Entra sends the browser back.
async fn accept(env: &TestEnv, authorize: &url::Url) -> url::Url {
    let html = env
        .http
        .get(authorize.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut form = hidden_inputs(&html);
    form.push(("decision".into(), "accept".into()));
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
    assert_eq!(r.status(), 302);
    url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap()
}

/// GET `url` on the relay's own listener (whatever host `O365_PUBLIC_URL` names) as a browser
/// holding `cookie`.
async fn callback(env: &TestEnv, url: &url::Url, cookie: Option<&str>) -> (u16, String) {
    let target = format!(
        "{}{}?{}",
        env.public_url,
        url.path(),
        url.query().unwrap_or("")
    );
    let mut req = env.http.get(target);
    if let Some(c) = cookie {
        req = req.header("Cookie", c);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn with_state(callback: &url::Url, state: &str) -> url::Url {
    let pairs: Vec<(String, String)> = callback
        .query_pairs()
        .filter(|(k, _)| k != "state")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut url = callback.clone();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("state", state);
    url
}

fn now() -> u64 {
    o365_relay::http::consent::state::now()
}

fn nonce_of(cookie: &str) -> &str {
    cookie.split_once('=').unwrap().1
}

/// A state with these claims under `key`.
fn forge(key: &str, id: [u8; 16], expires: u64, nonce: &str) -> String {
    let claims = Claims {
        id,
        expires,
        nonce_hash: nonce_hash(nonce),
    };
    sign(&StateKey::new(key.as_bytes()).unwrap(), &claims).unwrap()
}

/// Every key under the test's prefix, prefix removed, sorted.
async fn keys(env: &TestEnv) -> Vec<String> {
    let mut r = redis().await;
    let mut keys: Vec<String> = r.keys(env.redis_key("*")).await.unwrap();
    for k in keys.iter_mut() {
        *k = k[env.prefix.len()..].to_string();
    }
    keys.sort();
    keys
}

/// The consent keys among them: the signing key (when the relay made one) and used markers.
async fn consent_keys(env: &TestEnv) -> Vec<String> {
    keys(env)
        .await
        .into_iter()
        .filter(|k| k.starts_with("consent-"))
        .collect()
}

async fn used_markers(env: &TestEnv) -> usize {
    consent_keys(env)
        .await
        .iter()
        .filter(|k| k.starts_with("consent-used"))
        .count()
}

/// The simulator's token endpoint refused nothing: no code reached it in vain.
fn no_refused_redemption(env: &TestEnv) {
    let refused: Vec<String> = env
        .sim
        .rejected_requests()
        .into_iter()
        .filter(|l| l.starts_with("token endpoint"))
        .collect();
    assert!(refused.is_empty(), "a code reached Entra: {refused:?}");
}

async fn served(env: &TestEnv) -> bool {
    env.tenant_ids().await.contains(&TENANT_A.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_starts_from_a_thousand_addresses_leaves_an_admins_consent_working_and_redis_unchanged(
) {
    let env = TestEnv::start(options(&[("O365_TRUSTED_PROXIES", "127.0.0.1")])).await;
    // A tenant admin starts (the deployment's first start: its signing key is made now) and
    // is at Microsoft's consent page when the flood begins.
    let admin = start(&env, None, Some("198.51.100.10")).await;
    let before = keys(&env).await;
    assert_eq!(
        consent_keys(&env).await,
        vec!["consent-state-key".to_string()]
    );
    // Strangers from 1,000 addresses start consents they never finish, 32 at a time.
    let statuses: Vec<(u16, bool)> = futures_util::stream::iter(0..1_000u32)
        .map(|i| {
            let http = env.http.clone();
            let url = format!("{}/consent/start", env.public_url);
            async move {
                let r = http
                    .get(url)
                    .header("X-Forwarded-For", format!("10.77.{}.{}", i >> 8, i & 255))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.headers().contains_key("set-cookie"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == (302, true)),
        "no start is refused: {:?}",
        statuses
            .iter()
            .filter(|s| s.0 != 302)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert_eq!(keys(&env).await, before, "Redis unchanged by 1,000 starts");
    // The admin accepts and comes back: connected.
    let back = accept(&env, &admin.authorize).await;
    let (status, html) = callback(&env, &back, Some(&admin.cookie)).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains(TENANT_A), "{html}");
    // And an admin arriving after the flood starts at once.
    let late = start(&env, None, Some("198.51.100.11")).await;
    assert_eq!(late.state.len(), ENCODED_LEN);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nonce_cookie_the_client_sends_is_never_echoed_back() {
    for public in [None, Some("https://relay.example.test")] {
        let vars: Vec<(&str, &str)> = public.map(|u| ("O365_PUBLIC_URL", u)).into_iter().collect();
        let env = TestEnv::start(options(&vars)).await;
        // Well-formed nonces an attacker chose (planted through a sibling host, or simply sent).
        let planted = URL_SAFE_NO_PAD.encode([7u8; 32]);
        for name in ["o365_consent", "__Host-o365_consent"] {
            let sent = format!("{name}={planted}");
            for _ in 0..3 {
                let s = start(&env, Some(&sent), None).await;
                assert_ne!(s.cookie, sent, "a fresh nonce, not the one sent");
                assert!(!s.set_cookie.contains(&planted), "{}", s.set_cookie);
                // The state is bound to the new nonce, not to the planted one.
                let raw = URL_SAFE_NO_PAD.decode(&s.state).unwrap();
                assert_eq!(&raw[25..57], &nonce_hash(nonce_of(&s.cookie)));
                assert_ne!(&raw[25..57], &nonce_hash(&planted));
            }
        }
        env.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_https_the_cookie_is_host_prefixed_and_the_callback_reads_only_that_one() {
    // Approval mode: the consent registers the tenant pending and starts nothing, so no
    // webhook on the made-up host is ever called.
    let env = TestEnv::start(options(&[
        ("O365_PUBLIC_URL", "https://relay.example.test"),
        ("O365_CONSENT_MODE", "approval"),
    ]))
    .await;
    let s = start(&env, None, None).await;
    let nonce = nonce_of(&s.cookie).to_string();
    assert_eq!(nonce.len(), 43);
    assert_eq!(
        s.set_cookie,
        format!("__Host-o365_consent={nonce}; Path=/; Max-Age=600; HttpOnly; SameSite=Lax; Secure"),
        "__Host-: Secure, Path=/, no Domain"
    );
    assert!(!s.set_cookie.to_ascii_lowercase().contains("domain="));
    let back = accept(&env, &s.authorize).await;
    assert_eq!(
        format!("{}{}", back.origin().ascii_serialization(), back.path()),
        "https://relay.example.test/consent/callback"
    );
    // The same nonce under the unprefixed name (which a sibling host can set): not ours.
    let (status, html) = callback(&env, &back, Some(&format!("o365_consent={nonce}"))).await;
    assert_eq!(status, 400);
    assert!(html.contains("started in another browser"), "{html}");
    // The browser's own cookie: the consent completes.
    let (status, html) = callback(&env, &back, Some(&s.cookie)).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"pending\""), "{html}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_state_is_refused_before_the_code_is_redeemed() {
    let env = TestEnv::start(options(&[("O365_CONSENT_STATE_KEY", KEY)])).await;
    let s = start(&env, None, None).await;
    let back = accept(&env, &s.authorize).await;
    let raw = URL_SAFE_NO_PAD.decode(&s.state).unwrap();
    let tampered = |range: std::ops::Range<usize>, value: &[u8]| {
        let mut t = raw.clone();
        t[range].copy_from_slice(value);
        URL_SAFE_NO_PAD.encode(t)
    };
    let later = (now() + 3_000).to_be_bytes();
    let attacker = URL_SAFE_NO_PAD.encode([9u8; 32]);
    let mut flipped_mac = raw.clone();
    flipped_mac[88] ^= 1;
    let forgeries = [
        ("expiry pushed later", tampered(17..25, &later)),
        ("another id", tampered(1..17, &[0xab; 16])),
        (
            "bound to another nonce",
            tampered(25..57, &nonce_hash(&attacker)),
        ),
        ("MAC altered", URL_SAFE_NO_PAD.encode(&flipped_mac)),
        (
            "MAC of another key",
            forge(
                "another-key-the-attacker-made-0123456789",
                [1; 16],
                now() + 300,
                nonce_of(&s.cookie),
            ),
        ),
        ("truncated", s.state[..ENCODED_LEN - 4].to_string()),
        ("oversized", format!("{}{}", s.state, "A".repeat(8_000))),
        (
            "not base64url",
            format!("{}+/", &s.state[..ENCODED_LEN - 2]),
        ),
        ("empty", String::new()),
    ];
    for (what, state) in &forgeries {
        let (status, html) = callback(&env, &with_state(&back, state), Some(&s.cookie)).await;
        assert_eq!(status, 400, "{what}: {html}");
        assert!(
            html.contains("invalid, expired or was already used"),
            "{what}: a clear page: {html}"
        );
    }
    // Bound to the attacker's own browser and signed by another key: refused as forged too.
    let own = forge(
        "another-key-the-attacker-made-0123456789",
        [2; 16],
        now() + 300,
        &attacker,
    );
    let (status, _) = callback(
        &env,
        &with_state(&back, &own),
        Some(&format!("o365_consent={attacker}")),
    )
    .await;
    assert_eq!(status, 400);
    // Nothing reached Entra or Redis, nothing is registered.
    no_refused_redemption(&env);
    assert_eq!(
        consent_keys(&env).await,
        Vec::<String>::new(),
        "nothing about consents in Redis (the key is configured)"
    );
    assert!(!served(&env).await);
    // The code is still unredeemed: with its genuine state, the consent completes.
    let (status, html) = callback(&env, &back, Some(&s.cookie)).await;
    assert_eq!(status, 200, "{html}");
    assert!(served(&env).await);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expired_state_is_refused() {
    let env = TestEnv::start(options(&[("O365_CONSENT_STATE_KEY", KEY)])).await;
    let s = start(&env, None, None).await;
    let back = accept(&env, &s.authorize).await;
    let nonce = nonce_of(&s.cookie);
    // Signed with the relay's own key and bound to this browser, but past its ten minutes —
    // or claiming more of them than any state issued now (a replica's clock far ahead).
    for (what, expires) in [
        ("expired a second ago", now() - 1),
        ("expired an hour ago", now() - 3_600),
        ("valid for an hour", now() + 3_600),
    ] {
        let state = forge(KEY, rand::random(), expires, nonce);
        let (status, html) = callback(&env, &with_state(&back, &state), Some(&s.cookie)).await;
        assert_eq!(status, 400, "{what}: {html}");
        assert!(html.contains("expired"), "{what}: {html}");
    }
    no_refused_redemption(&env);
    assert_eq!(used_markers(&env).await, 0);
    assert!(!served(&env).await);
    let (status, html) = callback(&env, &back, Some(&s.cookie)).await;
    assert_eq!(status, 200, "{html}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_is_used_once() {
    let env = TestEnv::start(Options::default()).await;
    let s = start(&env, None, None).await;
    // The admin's browser is sent back twice with the same state and two valid codes (the
    // consent page submitted twice), and both arrive at once.
    let (one, two) = tokio::join!(accept(&env, &s.authorize), accept(&env, &s.authorize));
    assert_ne!(query_param(&one, "code"), query_param(&two, "code"));
    let (a, b) = tokio::join!(
        callback(&env, &one, Some(&s.cookie)),
        callback(&env, &two, Some(&s.cookie))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 400], "exactly one wins: {a:?} {b:?}");
    let refused = if a.0 == 400 { &a.1 } else { &b.1 };
    assert!(refused.contains("already used"), "{refused}");
    let calls = start_calls(&env.sim, TENANT_A);
    // Replayed later, with either code: refused before the code is redeemed.
    for back in [&one, &two] {
        let (status, html) = callback(&env, back, Some(&s.cookie)).await;
        assert_eq!(status, 400, "{html}");
    }
    no_refused_redemption(&env);
    assert_eq!(
        start_calls(&env.sim, TENANT_A),
        calls,
        "nothing started again"
    );
    assert_eq!(used_markers(&env).await, 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_callback_from_another_browser_does_not_use_up_the_state() {
    let env = TestEnv::start(Options::default()).await;
    let victim = start(&env, None, None).await;
    let back = accept(&env, &victim.authorize).await;
    // The link reaches other browsers: one without our cookie, one with a consent of its
    // own, one with a well-formed nonce it made up.
    let other = start(&env, None, None).await;
    let made_up = format!("o365_consent={}", URL_SAFE_NO_PAD.encode([3u8; 32]));
    for cookie in [None, Some(other.cookie.as_str()), Some(made_up.as_str())] {
        let (status, html) = callback(&env, &back, cookie).await;
        assert_eq!(status, 400, "{cookie:?}: {html}");
        assert!(html.contains("started in another browser"), "{html}");
    }
    no_refused_redemption(&env);
    assert_eq!(used_markers(&env).await, 0, "the state is not used up");
    assert!(!served(&env).await);
    // The rightful browser finishes.
    let (status, html) = callback(&env, &back, Some(&victim.cookie)).await;
    assert_eq!(status, 200, "{html}");
    assert!(served(&env).await);
    assert_eq!(used_markers(&env).await, 1);
    env.cleanup().await;
}
