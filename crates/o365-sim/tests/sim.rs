//! Tests of the Office 365 / Entra ID simulator itself, through its public API and HTTP only.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use o365_sim::{Fault, Faults, SimConfig, Simulator};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};
use serde_json::{json, Value};

const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const TENANT_B: &str = "8c6d0c0e-2b5e-4a8f-9d3e-7f1a2b3c4d5e";
const SECRET: &str = "s3cret-value-for-tests";
const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";

/// A self-signed certificate and its private key (PEM) plus the `x5t` thumbprint.
struct TestCert {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    x5t: String,
}

fn make_cert() -> TestCert {
    let pkey = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "o365-relay-test").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&pkey).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(365).unwrap())
        .unwrap();
    b.sign(&pkey, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(cert.digest(MessageDigest::sha1()).unwrap());
    TestCert {
        cert_pem: cert.to_pem().unwrap(),
        key_pem: pkey.private_key_to_pem_pkcs8().unwrap(),
        x5t,
    }
}

fn config(cert: Option<&TestCert>) -> SimConfig {
    SimConfig {
        client_secret: Some(SECRET.into()),
        client_certs_pem: cert.map(|c| vec![c.cert_pem.clone()]).unwrap_or_default(),
        tenants: vec![TENANT_A.into(), TENANT_B.into()],
        notification_retry_delays: vec![Duration::from_millis(20), Duration::from_millis(20)],
        ..SimConfig::default()
    }
}

async fn sim_with(config: SimConfig) -> Simulator {
    Simulator::start(config, "127.0.0.1:0").await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sign an assertion with `key_pem`, header x5t `x5t`, the given claims.
fn assertion(key_pem: &[u8], x5t: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.x5t = Some(x5t.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).unwrap(),
    )
    .unwrap()
}

fn good_claims(sim: &Simulator, tenant: &str) -> Value {
    json!({
        "aud": format!("{}/{tenant}/oauth2/token", sim.url()),
        "iss": CLIENT_ID, "sub": CLIENT_ID,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now(), "iat": now(), "exp": now() + 600,
    })
}

async fn token_with_assertion(sim: &Simulator, tenant: &str, assertion: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/{tenant}/oauth2/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("resource", &sim.url()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn token_with_secret(sim: &Simulator, tenant: &str, secret: &str) -> (u16, Value) {
    let r = http()
        .post(format!("{}/{tenant}/oauth2/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("resource", &sim.url()),
            ("client_secret", secret),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn bearer(sim: &Simulator, tenant: &str) -> String {
    let (status, body) = token_with_secret(sim, tenant, SECRET).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn feed(sim: &Simulator, tenant: &str, rest: &str) -> String {
    format!("{}/api/v1.0/{tenant}/activity/feed/{rest}", sim.url())
}

/// GET with bearer + PublisherIdentifier; returns (status, headers, body text).
async fn mgmt_get(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http()
        .get(url)
        .bearer_auth(token)
        .query(&[("PublisherIdentifier", TENANT_A)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

async fn start_sub(
    sim: &Simulator,
    tenant: &str,
    token: &str,
    ct: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http()
        .post(feed(sim, tenant, "subscriptions/start"))
        .bearer_auth(token)
        .query(&[("contentType", ct), ("PublisherIdentifier", tenant)]);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn af_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

// ------------------------------------------------------------------------------------------
// Entra
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_assertion_gets_a_token_with_v1_shape() {
    let cert = make_cert();
    let sim = sim_with(config(Some(&cert))).await;
    let a = assertion(&cert.key_pem, &cert.x5t, &good_claims(&sim, TENANT_A));
    let (status, body) = token_with_assertion(&sim, TENANT_A, &a).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], "3600");
    assert!(body["expires_on"].is_string());
    assert!(body["not_before"].is_string());
    assert_eq!(body["resource"], sim.url());
    // The access token carries tid/roles/appid.
    let token = body["access_token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["tid"], TENANT_A);
    assert_eq!(claims["appid"], CLIENT_ID);
    assert_eq!(claims["aud"], sim.url());
    assert!(claims["roles"]
        .as_array()
        .unwrap()
        .contains(&json!("ActivityFeed.Read")));
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(sim.token_requests(TENANT_B), 0);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_are_refused() {
    let cert = make_cert();
    let other = make_cert();
    let sim = sim_with(config(Some(&cert))).await;
    let mut cases: Vec<(&str, String)> = Vec::new();
    // Wrong x5t.
    cases.push((
        "wrong x5t",
        assertion(&cert.key_pem, &other.x5t, &good_claims(&sim, TENANT_A)),
    ));
    // Signed by a foreign key, but claiming the registered certificate.
    cases.push((
        "foreign key",
        assertion(&other.key_pem, &cert.x5t, &good_claims(&sim, TENANT_A)),
    ));
    // Wrong audience (the other tenant's endpoint).
    cases.push((
        "wrong aud",
        assertion(&cert.key_pem, &cert.x5t, &good_claims(&sim, TENANT_B)),
    ));
    // Expired.
    let mut c = good_claims(&sim, TENANT_A);
    c["nbf"] = json!(now() - 1200);
    c["exp"] = json!(now() - 600);
    cases.push(("expired", assertion(&cert.key_pem, &cert.x5t, &c)));
    // Lifetime above one hour.
    let mut c = good_claims(&sim, TENANT_A);
    c["exp"] = json!(now() + 7200);
    cases.push(("too long", assertion(&cert.key_pem, &cert.x5t, &c)));
    // iss != client id.
    let mut c = good_claims(&sim, TENANT_A);
    c["iss"] = json!("someone-else");
    cases.push(("bad iss", assertion(&cert.key_pem, &cert.x5t, &c)));
    for (what, a) in cases {
        let (status, body) = token_with_assertion(&sim, TENANT_A, &a).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"], "invalid_client", "{what}");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .starts_with("AADSTS700027"),
            "{what}: {body}"
        );
    }
    // Replayed jti: first use works, second is refused.
    let a = assertion(&cert.key_pem, &cert.x5t, &good_claims(&sim, TENANT_A));
    assert_eq!(token_with_assertion(&sim, TENANT_A, &a).await.0, 200);
    let (status, body) = token_with_assertion(&sim, TENANT_A, &a).await;
    assert_eq!(status, 401, "replay: {body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("replay"));
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(
        sim.refused_token_requests(TENANT_A),
        7,
        "six bad assertions and one replay, each counted as a refusal"
    );
    assert!(sim.rejected_requests().len() >= 7);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_tenant_and_resource_checks() {
    let sim = sim_with(config(None)).await;
    assert_eq!(token_with_secret(&sim, TENANT_A, SECRET).await.0, 200);
    let (status, body) = token_with_secret(&sim, TENANT_A, "wrong").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (401, "invalid_client")
    );
    let unknown = "00000000-1111-2222-3333-444444444444";
    let (status, body) = token_with_secret(&sim, unknown, SECRET).await;
    assert_eq!(status, 400);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS90002"));
    let r = http()
        .post(format!("{}/{TENANT_A}/oauth2/token", sim.url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("resource", "https://manage.office.com"),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_resource");
    assert_eq!(sim.token_requests(TENANT_A), 1);
    assert_eq!(
        sim.refused_token_requests(TENANT_A),
        2,
        "wrong secret, wrong resource"
    );
    assert_eq!(sim.refused_token_requests(unknown), 1, "unknown tenant");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_flow_and_code_exchange() {
    let sim = sim_with(config(None)).await;
    let redirect = "https://relay.example.com/consent/callback";
    let authorize = format!(
        "{}/common/oauth2/authorize?response_type=code&resource={}&client_id={CLIENT_ID}&redirect_uri={}&state=xyz",
        sim.url(),
        urlencode(&sim.url()),
        urlencode(redirect)
    );
    let page = http().get(&authorize).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("Permissions requested"));
    assert!(html.contains(r#"<button id="accept" name="decision" value="accept">Accept</button>"#));
    assert!(html.contains(r#"<button id="cancel" name="decision" value="cancel">Cancel</button>"#));
    // Bad client id -> 400 error page.
    let bad = authorize.replace(CLIENT_ID, "11111111-1111-1111-1111-111111111111");
    assert_eq!(
        http().get(&bad).send().await.unwrap().status().as_u16(),
        400
    );

    let decide = |decision: &'static str| {
        let sim_url = sim.url();
        async move {
            http()
                .post(format!("{sim_url}/common/oauth2/authorize/decision"))
                .form(&[
                    ("response_type", "code"),
                    ("client_id", CLIENT_ID),
                    ("resource", &sim_url),
                    ("redirect_uri", redirect),
                    ("state", "xyz"),
                    ("decision", decision),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let r = decide("cancel").await;
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "access_denied");
    assert!(q["error_description"].starts_with("AADSTS65004"));
    assert_eq!(q["state"], "xyz");

    let r = decide("accept").await;
    assert_eq!(r.status().as_u16(), 302);
    let loc = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    assert!(loc.as_str().starts_with(redirect));
    let q: HashMap<_, _> = loc.query_pairs().into_owned().collect();
    assert_eq!(q["state"], "xyz");
    let code = q["code"].clone();

    let exchange = || {
        let sim_url = sim.url();
        let code = code.clone();
        async move {
            let r = http()
                .post(format!("{sim_url}/common/oauth2/token"))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("client_id", CLIENT_ID),
                    ("redirect_uri", redirect),
                    ("resource", &sim_url),
                    ("client_secret", SECRET),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = exchange().await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refresh_token"].is_string() && body["id_token"].is_string());
    let payload = body["access_token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["tid"], TENANT_A);
    assert_eq!(claims["upn"], "admin@contoso.onmicrosoft.com");
    // Single use.
    let (status, body) = exchange().await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    sim.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ------------------------------------------------------------------------------------------
// Management API
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_auth_checks() {
    let sim = sim_with(config(None)).await;
    let token_a = bearer(&sim, TENANT_A).await;
    let blob = sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(3))
        .await
        .remove(0);
    // Without PublisherIdentifier -> AF20012 and logged.
    let r = http()
        .get(&blob.content_uri)
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(af_code(&r.text().await.unwrap()), "AF20012");
    assert!(sim
        .rejected_requests()
        .iter()
        .any(|l| l.contains("AF20012")));
    // With it -> 200, the exact body.
    let (status, _, body) = mgmt_get(&blob.content_uri, &token_a).await;
    assert_eq!(status, 200);
    let arr: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(arr.len(), 3);
    // Token of tenant A used on tenant B -> AF20010.
    let (status, _, body) = mgmt_get(&feed(&sim, TENANT_B, "subscriptions/list"), &token_a).await;
    assert_eq!((status, af_code(&body).as_str()), (401, "AF20010"));
    // Garbage token -> 401 AF401.
    let (status, _, body) = mgmt_get(&feed(&sim, TENANT_A, "subscriptions/list"), "x.y.z").await;
    assert_eq!((status, af_code(&body).as_str()), (401, "AF401"));
    // Bad content type -> AF20020.
    let (status, _, body) = mgmt_get(
        &format!(
            "{}?contentType=Audit.Nope",
            feed(&sim, TENANT_A, "subscriptions/content")
        ),
        &token_a,
    )
    .await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20020"));
    // Unknown / bad content id, blob of another tenant.
    let unknown = feed(&sim, TENANT_A, "audit/123456789012$123456789012$abc$def$04");
    let (status, _, body) = mgmt_get(&unknown, &token_a).await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20050"));
    let (status, _, body) = mgmt_get(&feed(&sim, TENANT_A, "audit/not-an-id"), &token_a).await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20052"));
    let token_b = bearer(&sim, TENANT_B).await;
    let foreign = blob.content_uri.replace(TENANT_A, TENANT_B);
    let (status, _, _) = mgmt_get(&foreign, &token_b).await;
    assert_eq!(status, 400);
    // Expired content.
    sim.expire(&blob.content_id);
    let (status, _, body) = mgmt_get(&blob.content_uri, &token_a).await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20051"));
    assert_eq!(sim.content_gets_for(&blob.content_id), 4);
    assert!(sim.management_calls(TENANT_A) >= 7);
    assert!(sim.max_calls_per_minute(TENANT_A) >= 7);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_windows_and_paging() {
    let sim = sim_with(SimConfig {
        page_size: 3,
        ..config(None)
    })
    .await;
    let token = bearer(&sim, TENANT_A).await;
    let list = |q: String| {
        feed(
            &sim,
            TENANT_A,
            &format!("subscriptions/content?contentType=Audit.SharePoint{q}"),
        )
    };
    // No subscription yet -> AF20022.
    let (status, _, body) = mgmt_get(&list(String::new()), &token).await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20022"));
    assert_eq!(
        start_sub(&sim, TENANT_A, &token, "Audit.SharePoint", None)
            .await
            .0,
        200
    );
    // Repeat -> AF20024.
    let (status, body) = start_sub(&sim, TENANT_A, &token, "Audit.SharePoint", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (400, "AF20024")
    );
    assert_eq!(sim.start_calls(TENANT_A, "Audit.SharePoint"), 2);

    let fmt = |d: chrono::Duration| {
        (chrono::Utc::now() + d)
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let h = chrono::Duration::hours;
    // More than 24 h apart, end <= start, only one bound -> AF20030; start > 7 days ago -> AF20055.
    for (q, code) in [
        (
            format!("&startTime={}&endTime={}", fmt(h(-25)), fmt(h(1))),
            "AF20030",
        ),
        (
            format!("&startTime={}&endTime={}", fmt(h(0)), fmt(h(-1))),
            "AF20030",
        ),
        (format!("&startTime={}", fmt(h(-1))), "AF20030"),
        (
            format!(
                "&startTime={}&endTime={}",
                fmt(h(-24 * 8)),
                fmt(h(-24 * 8 + 1))
            ),
            "AF20055",
        ),
    ] {
        let (status, _, body) = mgmt_get(&list(q.clone()), &token).await;
        assert_eq!((status, af_code(&body).as_str()), (400, code), "{q}");
    }
    let blobs = sim.publish(TENANT_A, "Audit.SharePoint", 10, Some(2)).await;
    sim.publish(TENANT_A, "Audit.Exchange", 2, Some(2)).await;
    let want: HashSet<String> = blobs.iter().map(|b| b.content_id.clone()).collect();
    // Date-only and minute formats are accepted.
    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let tomorrow = (chrono::Utc::now() + h(24)).format("%Y-%m-%d").to_string();
    let (status, _, _) = mgmt_get(
        &list(format!("&startTime={day}&endTime={tomorrow}")),
        &token,
    )
    .await;
    assert_eq!(status, 200);
    // Page through the window: every blob exactly once.
    let mut url = list(format!("&startTime={}&endTime={}", fmt(h(-1)), fmt(h(1))));
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, headers, body) = mgmt_get(&url, &token).await;
        assert_eq!(status, 200, "{body}");
        let items: Vec<Value> = serde_json::from_str(&body).unwrap();
        assert!(items.len() <= 3);
        for it in &items {
            assert_eq!(it["contentType"], "Audit.SharePoint");
            seen.push(it["contentId"].as_str().unwrap().to_string());
        }
        pages += 1;
        match headers.get("NextPageUri") {
            Some(next) => url = next.to_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen.len(), 10);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), want);
    // Bad nextPage -> AF20031.
    let (status, _, body) =
        mgmt_get(&format!("{}&nextPage=garbage", list(String::new())), &token).await;
    assert_eq!((status, af_code(&body).as_str()), (400, "AF20031"));
    assert!(sim.list_calls() >= 9);
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------
// Webhooks
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
}

/// A tiny webhook receiver answering `status`; returns its URL and what it received.
async fn webhook_receiver(status: u16) -> (String, Arc<Mutex<Vec<Received>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let got2 = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let got = got2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers, then Content-Length bytes of body.
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let headers = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                got.lock().unwrap().push(Received { headers, body });
                let reply = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, got)
}

async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_with_webhook_validates_and_notifications_arrive() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
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
    let (status, resp) = start_sub(&sim, TENANT_A, &token, "Audit.General", Some(body)).await;
    assert_eq!(
        (status, resp["error"]["code"].as_str().unwrap()),
        (400, "AF20024")
    );
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
    let (status, _, body) = mgmt_get(&feed(&sim, TENANT_A, "subscriptions/list"), &token).await;
    assert_eq!(status, 200);
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["contentType"], "Audit.General");
    assert_eq!(list[0]["status"], "disabled");
    assert_eq!(list[0]["webhook"]["address"], hook.as_str());
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhooks() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    // Validation answered 500 -> AF20021, subscription unchanged.
    let (bad, _) = webhook_receiver(500).await;
    let (status, resp) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "DLP.All",
        Some(json!({"webhook": {"address": bad, "authId": "x"}})),
    )
    .await;
    assert_eq!(
        (status, resp["error"]["code"].as_str().unwrap()),
        (400, "AF20021")
    );
    assert!(sim.subscriptions(TENANT_A).is_empty());
    // A webhook that validates, then fails notifications: disabled after the retries.
    let (hook, got) = webhook_receiver(200).await;
    let (status, _) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "Audit.Exchange",
        Some(json!({"webhook": {"address": hook, "authId": "x"}})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(got.lock().unwrap().len(), 1);
    sim.disable_webhook(TENANT_A, "Audit.Exchange");
    let w = sim.subscriptions(TENANT_A)[0].webhook.clone().unwrap();
    assert_eq!(w.status, "disabled");
    // Re-start re-enables (validation again).
    let (status, _) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "Audit.Exchange",
        Some(json!({"webhook": {"address": bad, "authId": "x"}})),
    )
    .await;
    assert_eq!(status, 400);
    let (dead, _) = webhook_receiver(200).await;
    let (status, _) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "Audit.Exchange",
        Some(json!({"webhook": {"address": dead, "authId": "x"}})),
    )
    .await;
    assert_eq!(status, 200);
    let w = sim.subscriptions(TENANT_A)[0].webhook.clone().unwrap();
    assert_eq!(
        (w.status.as_str(), w.address.as_str()),
        ("enabled", dead.as_str())
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_is_disabled_after_failed_deliveries() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    // A receiver that accepts the validation (first request) and fails everything after.
    let (hook, got) = switching_receiver().await;
    let (status, _) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "Audit.SharePoint",
        Some(json!({"webhook": {"address": hook, "authId": "x"}})),
    )
    .await;
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

/// Answers 200 to the first request, 503 to every later one; counts requests.
async fn switching_receiver() -> (String, Arc<Mutex<usize>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    let count: Arc<Mutex<usize>> = Arc::default();
    let c2 = count.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let c = c2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let n = {
                    let mut g = c.lock().unwrap();
                    *g += 1;
                    *g
                };
                let status = if n == 1 { "200 OK" } else { "503 Unavailable" };
                let reply =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, count)
}

// ------------------------------------------------------------------------------------------
// Records and faults
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_realistic_and_odd() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    for ct in [
        "Audit.AzureActiveDirectory",
        "Audit.Exchange",
        "Audit.SharePoint",
        "Audit.General",
        "DLP.All",
    ] {
        let blobs = sim.publish(TENANT_A, ct, 2, None).await;
        for blob in &blobs {
            assert_eq!(blob.records.len(), 20);
            assert!(blob.content_id.ends_with("$04") && blob.content_id.matches('$').count() == 4);
            assert!(blob.content_uri.ends_with(&blob.content_id));
            let (status, _, body) = mgmt_get(&blob.content_uri, &token).await;
            assert_eq!(status, 200);
            // The body is the records verbatim.
            for r in &blob.records {
                assert!(body.contains(r.as_str()));
            }
            let arr: Vec<Value> =
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("{ct}: {e}\n{body}"));
            assert_eq!(arr.len(), 20);
            for (rec, id) in arr.iter().zip(&blob.record_ids) {
                assert_eq!(rec["Id"], id.as_str());
                assert_eq!(rec["OrganizationId"], TENANT_A);
                assert!(rec["CreationTime"].as_str().unwrap().len() == 19);
                assert!(rec["Workload"].is_string() && rec["Operation"].is_string());
            }
            let raw = blob.records.join("\n");
            for needle in [
                "\"ClientIP\":null",
                "\"ClientIP\":\"1.2.3.4:12345\"",
                "\"ClientIP\":\"[fdfd::555]:12346\"",
                "\"UserType\":\"0\"",
                "9223372036854775807",
                "18446744073709551615",
                "1.0e-7",
                "\\ud83d\\ude00",
                "\\u00e9",
                "é",
                "日本",
                "\"\"",
            ] {
                assert!(raw.contains(needle), "{ct}: missing {needle}");
            }
        }
        // ~1 in 20 records of the first blob reappears byte-identically in the second.
        let dup: Vec<_> = blobs[1]
            .records
            .iter()
            .filter(|r| blobs[0].records.contains(r))
            .collect();
        assert_eq!(dup.len(), 1, "{ct}");
    }
    // General has RecordType > 255.
    let g = sim.publish(TENANT_A, "Audit.General", 1, Some(8)).await;
    assert!(g[0]
        .records
        .iter()
        .any(|r| r.contains("\"RecordType\":261")));
    assert_eq!(sim.records_published(), 5 * 40 + 8);
    assert_eq!(
        sim.unique_record_ids().len() as u64,
        sim.records_published() - 5 - 1
    );
    // publish_raw is served byte-exactly.
    let raw = vec![
        r#"{"Id":"0b7e3d0a-0000-4000-8000-000000000001","RecordType":1,"Odd":[1,{"a":null}]}"#
            .to_string(),
        r#"{ "Id" : "0b7e3d0a-0000-4000-8000-000000000002" }"#.to_string(),
    ];
    let blob = sim
        .publish_raw(TENANT_A, "Audit.Exchange", raw.clone())
        .await;
    let (status, _, body) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(status, 200);
    assert!(body.contains(&raw[0]) && body.contains(&raw[1]));
    assert_eq!(blob.record_ids[1], "0b7e3d0a-0000-4000-8000-000000000002");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_faults() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let blob = sim
        .publish(TENANT_A, "Audit.SharePoint", 1, None)
        .await
        .remove(0);
    sim.set_faults(Faults {
        retry_after: true,
        ..Faults::default()
    });
    sim.push_fault(Fault::Throttle429);
    sim.push_fault(Fault::Throttle403);
    sim.push_fault(Fault::ServerError);
    sim.push_fault(Fault::Unauthorized);
    sim.push_fault(Fault::Expired);
    sim.push_fault(Fault::Slow(Duration::from_millis(300)));
    let (s, h, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (429, "AF429"));
    assert_eq!(h["retry-after"], "1");
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (403, "AF429"));
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (500, "AF50000"));
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 401);
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (400, "AF20051"));
    let t0 = std::time::Instant::now();
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // Truncated: 200, then the body breaks.
    sim.push_fault(Fault::Truncate);
    let r = http()
        .get(&blob.content_uri)
        .bearer_auth(&token)
        .query(&[("PublisherIdentifier", TENANT_A)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.is_err(), "truncated body must fail");
    // Random faults (probability 1).
    sim.set_faults(Faults {
        throttle_429: 1.0,
        ..Faults::default()
    });
    let (s, h, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 429);
    assert!(h.get("retry-after").is_none());
    sim.set_faults(Faults::default());
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    assert_eq!(sim.content_gets(), 9);
    // Faults did not count as refusals.
    assert!(
        sim.rejected_requests().is_empty(),
        "{:?}",
        sim.rejected_requests()
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api() {
    let sim = sim_with(config(None)).await;
    let r = http()
        .post(format!("{}/sim/publish", sim.url()))
        .json(
            &json!({"tenant": TENANT_A, "contentType": "Audit.Exchange", "blobs": 2, "records": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let blobs: Vec<o365_sim::SimBlob> = r.json().await.unwrap();
    assert_eq!(blobs.len(), 2);
    let r = http()
        .post(format!("{}/sim/faults", sim.url()))
        .json(&json!({"throttle_429": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    bearer(&sim, TENANT_A).await;
    let stats: Value = http()
        .get(format!("{}/sim/stats", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["records_published"], 10);
    assert_eq!(stats["token_requests"][TENANT_A], 1);
    let subs: Value = http()
        .get(format!("{}/sim/subscriptions/{TENANT_A}", sim.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(subs, json!([]));
    sim.stop().await;
}

// ------------------------------------------------------------------------------------------
// Hostile upstream
// ------------------------------------------------------------------------------------------

/// GET with bearer + PublisherIdentifier; returns (status, headers, body bytes).
async fn mgmt_get_bytes(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let r = http()
        .get(url)
        .bearer_auth(token)
        .query(&[("PublisherIdentifier", TENANT_A)])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap())
}

/// `len` bytes of `[A-Za-z0-9$]`, with a `$` every 13 bytes like Microsoft's separators.
fn long_content_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|i| {
            if i % 13 == 12 {
                '$'
            } else {
                char::from(ALPHABET[i * 7 % ALPHABET.len()])
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drip_fed_content_arrives_slowly_but_whole() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let body = o365_sim::hostile::blob_body(&[o365_sim::hostile::record_with_huge_field(
        TENANT_A,
        "Operation",
        500,
    )
    .into_bytes()]);
    let blob = sim
        .publish_body(TENANT_A, "Audit.General", body.clone(), None)
        .await;
    let interval = Duration::from_millis(30);
    let chunks_expected = body.len().div_ceil(256);
    assert!(chunks_expected >= 4, "body of {} bytes", body.len());
    sim.push_fault(Fault::DripFeed {
        chunk: 256,
        interval,
    });
    let t0 = std::time::Instant::now();
    let mut r = http()
        .get(&blob.content_uri)
        .bearer_auth(&token)
        .query(&[("PublisherIdentifier", TENANT_A)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.content_length(), Some(body.len() as u64));
    let mut got = Vec::new();
    let mut reads = 0;
    let mut longest_gap = Duration::ZERO;
    let mut last = std::time::Instant::now();
    while let Some(c) = r.chunk().await.unwrap() {
        longest_gap = longest_gap.max(last.elapsed());
        last = std::time::Instant::now();
        reads += 1;
        got.extend_from_slice(&c);
    }
    assert_eq!(got, body, "the drip-fed body is the whole body");
    assert!(
        t0.elapsed() >= interval * (chunks_expected as u32 - 1),
        "{:?} for {chunks_expected} chunks",
        t0.elapsed()
    );
    assert!(reads >= 2, "arrived in pieces ({reads} reads)");
    // Each piece comes well before any sensible per-read timeout.
    assert!(longest_gap < Duration::from_secs(1), "{longest_gap:?}");
    // The fault was consumed: the next GET is whole and quick.
    let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_fault_sends_the_absurd_header() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let blob = sim
        .publish(TENANT_A, "Audit.Exchange", 1, Some(2))
        .await
        .remove(0);
    sim.push_fault(Fault::RetryAfter {
        status: 429,
        secs: 100_000_000,
    });
    sim.push_fault(Fault::RetryAfter {
        status: 403,
        secs: 0,
    });
    let (s, h, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (429, "AF429"));
    assert_eq!(h["retry-after"], "100000000");
    let (s, h, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (403, "AF429"));
    assert_eq!(h["retry-after"], "0");
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_error_message_is_served() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let blob = sim
        .publish(TENANT_A, "Audit.SharePoint", 1, Some(2))
        .await
        .remove(0);
    sim.push_fault(Fault::HugeError {
        status: 500,
        code: "AF50000".into(),
        message_bytes: 65_536,
    });
    // A code that needs escaping still yields valid JSON.
    sim.push_fault(Fault::HugeError {
        status: 400,
        code: "AF\"20050\n".into(),
        message_bytes: 0,
    });
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 500);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"]["code"], "AF50000");
    let message = v["error"]["message"].as_str().unwrap();
    assert_eq!(message.len(), 65_536);
    assert!(message.starts_with("An internal error occurred."));
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 400);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["error"], json!({"code": "AF\"20050\n", "message": ""}));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_fault_hits_only_its_content_id() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let blobs = sim.publish(TENANT_A, "Audit.Exchange", 2, Some(2)).await;
    let (bad, good) = (&blobs[0], &blobs[1]);
    sim.fault_for(&bad.content_id, Fault::ServerError);
    sim.push_fault(Fault::Throttle429);
    // The sticky id answers its fault every time and leaves the pushed one alone...
    for _ in 0..3 {
        let (s, _, b) = mgmt_get(&bad.content_uri, &token).await;
        assert_eq!((s, af_code(&b).as_str()), (500, "AF50000"));
    }
    // ...which the next GET of another blob takes; after it that blob is fine.
    let (s, _, b) = mgmt_get(&good.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (429, "AF429"));
    let (s, _, _) = mgmt_get(&good.content_uri, &token).await;
    assert_eq!(s, 200);
    // Random faults do not reach a sticky id either.
    sim.set_faults(Faults {
        throttle_403: 1.0,
        ..Faults::default()
    });
    sim.fault_for(&bad.content_id, Fault::Expired);
    let (s, _, b) = mgmt_get(&bad.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (400, "AF20051"));
    sim.set_faults(Faults::default());
    // The old variants work sticky too: a body that always breaks halfway.
    sim.fault_for(&bad.content_id, Fault::Truncate);
    for _ in 0..2 {
        let r = http()
            .get(&bad.content_uri)
            .bearer_auth(&token)
            .query(&[("PublisherIdentifier", TENANT_A)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.bytes().await.is_err(), "truncated body must fail");
    }
    // The new ones too.
    sim.fault_for(
        &bad.content_id,
        Fault::RetryAfter {
            status: 429,
            secs: 7,
        },
    );
    let (s, h, _) = mgmt_get(&bad.content_uri, &token).await;
    assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "7"));
    assert!(sim.clear_fault_for(&bad.content_id));
    assert!(!sim.clear_fault_for(&bad.content_id));
    let (s, _, b) = mgmt_get(&bad.content_uri, &token).await;
    assert_eq!(s, 200);
    assert!(b.contains(&bad.records[0]));
    assert_eq!(sim.content_gets_for(&bad.content_id), 8);
    assert!(
        sim.rejected_requests().is_empty(),
        "{:?}",
        sim.rejected_requests()
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_content_id_is_listed_notified_and_served() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let (hook, got) = webhook_receiver(200).await;
    let (status, _) = start_sub(
        &sim,
        TENANT_A,
        &token,
        "Audit.General",
        Some(json!({"webhook": {"address": hook, "authId": "x"}})),
    )
    .await;
    assert_eq!(status, 200);
    let id = long_content_id(300);
    assert_eq!(id.len(), 300);
    let records = o365_sim::hostile::duplicate_id_records(TENANT_A, 2);
    let blob = sim
        .publish_raw_with_id(TENANT_A, "Audit.General", id.clone(), records.clone())
        .await;
    assert_eq!(blob.content_id, id);
    assert_eq!(
        blob.content_uri,
        feed(&sim, TENANT_A, &format!("audit/{id}"))
    );
    // Notified as given.
    assert!(wait_for(|| sim.notifications_delivered() == 1).await);
    let n: Vec<Value> = serde_json::from_str(&got.lock().unwrap()[1].body).unwrap();
    assert_eq!(n[0]["contentId"], id.as_str());
    assert_eq!(n[0]["contentUri"], blob.content_uri.as_str());
    // Listed as given.
    let (s, _, b) = mgmt_get(
        &feed(
            &sim,
            TENANT_A,
            "subscriptions/content?contentType=Audit.General",
        ),
        &token,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let listed: Vec<Value> = serde_json::from_str(&b).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["contentId"], id.as_str());
    assert_eq!(listed[0]["contentUri"], blob.content_uri.as_str());
    // Served.
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.contains(&records[0]) && b.contains(&records[1]));
    // Beyond the simulator's own bound: listed, but its GET is refused like a bad id.
    let too_long = long_content_id(1025);
    let blob = sim
        .publish_raw_with_id(TENANT_A, "Audit.General", too_long, records)
        .await;
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (400, "AF20052"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_body_is_served_byte_exact_even_when_not_utf8() {
    use o365_sim::hostile;
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let good = hostile::record_with_long_id(TENANT_A, 36);
    let bad = hostile::record_with_invalid_utf8(TENANT_A);
    let body = hostile::blob_body(&[good.clone().into_bytes(), bad.clone()]);
    assert!(std::str::from_utf8(&body).is_err());
    let blob = sim
        .publish_body(TENANT_A, "Audit.Exchange", body.clone(), None)
        .await;
    let (s, h, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    assert_eq!(h["content-length"], body.len().to_string().as_str());
    assert_eq!(b.as_ref(), body.as_slice());
    // Best-effort records: both Ids are known, the bad record only lossily.
    assert_eq!(blob.records.len(), 2);
    assert_eq!(blob.records[0], good);
    let good_id = serde_json::from_str::<Value>(&good).unwrap()["Id"].clone();
    assert_eq!(blob.record_ids[0], good_id.as_str().unwrap());
    assert_eq!(blob.record_ids[1].len(), 36);
    // Not an array, not JSON, empty: served as given, under the id asked for.
    for (i, body) in [
        b"{\"value\":[]}".to_vec(),
        vec![0xFF, 0xFE, 0x00, b'[', 0x80],
        Vec::new(),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("{i}$hostile$body");
        let blob = sim
            .publish_body(TENANT_A, "Audit.Exchange", body.clone(), Some(id.clone()))
            .await;
        assert_eq!(blob.content_id, id);
        assert!(blob.records.is_empty() && blob.record_ids.is_empty());
        let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
        assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_record_makers_build_what_they_promise() {
    use o365_sim::hostile;
    let common = [
        "CreationTime",
        "Id",
        "Operation",
        "OrganizationId",
        "RecordType",
        "UserKey",
        "UserType",
        "Workload",
        "UserId",
    ];
    let is_guid = |v: &Value| uuid::Uuid::try_parse(v.as_str().unwrap()).is_ok();

    for len in [0, 36, 300, 5000] {
        let r: Value = serde_json::from_str(&hostile::record_with_long_id(TENANT_A, len)).unwrap();
        assert_eq!(r["Id"].as_str().unwrap().len(), len);
        for k in common {
            assert!(r.get(k).is_some(), "{k} missing");
        }
        assert_eq!(r["OrganizationId"], TENANT_A);
    }

    for field in ["Operation", "Workload", "BrandNewField"] {
        let text = hostile::record_with_huge_field(TENANT_A, field, 100_000);
        let r: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(r[field].as_str().unwrap().len(), 100_000, "{field}");
        assert!(is_guid(&r["Id"]));
        for k in common {
            assert!(r.get(k).is_some(), "{k} missing");
        }
        // The field is replaced, not repeated.
        assert_eq!(text.matches(&format!("\"{field}\":")).count(), 1);
    }

    let bad = hostile::record_with_invalid_utf8(TENANT_A);
    assert!(std::str::from_utf8(&bad).is_err());
    assert!(serde_json::from_slice::<Value>(&bad).is_err());
    let lossy: Value = serde_json::from_str(&String::from_utf8_lossy(&bad)).unwrap();
    assert!(is_guid(&lossy["Id"]));
    assert!(lossy["UserId"].as_str().unwrap().contains('\u{FFFD}'));

    let dups = hostile::duplicate_id_records(TENANT_A, 5);
    assert_eq!(dups.len(), 5);
    let ids: HashSet<String> = dups
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r).unwrap()["Id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(
        dups.iter().collect::<HashSet<_>>().len(),
        5,
        "otherwise different"
    );

    let body = hostile::blob_body(&[b"{\"a\":1}".to_vec(), b"{}".to_vec()]);
    assert_eq!(body, b"[{\"a\":1},{}]");
    assert_eq!(hostile::blob_body(&[]), b"[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_have_a_json_shape_and_nonsense_is_refused() {
    let cases = [
        (Fault::Throttle429, json!({"kind": "throttle429"})),
        (Fault::ServerError, json!({"kind": "server_error"})),
        (
            Fault::Slow(Duration::from_millis(300)),
            json!({"kind": "slow", "ms": 300}),
        ),
        (
            Fault::DripFeed {
                chunk: 64,
                interval: Duration::from_millis(50),
            },
            json!({"kind": "drip_feed", "chunk": 64, "interval_ms": 50}),
        ),
        (
            Fault::RetryAfter {
                status: 429,
                secs: 100_000_000,
            },
            json!({"kind": "retry_after", "status": 429, "secs": 100_000_000}),
        ),
        (
            Fault::HugeError {
                status: 500,
                code: "AF50000".into(),
                message_bytes: 65_536,
            },
            json!({"kind": "huge_error", "status": 500, "code": "AF50000", "message_bytes": 65_536}),
        ),
    ];
    for (fault, wire) in cases {
        assert_eq!(serde_json::to_value(&fault).unwrap(), wire);
        assert_eq!(serde_json::from_value::<Fault>(wire).unwrap(), fault);
    }
    for nonsense in [
        json!({"kind": "drip_feed", "chunk": 0, "interval_ms": 50}),
        json!({"kind": "retry_after", "status": 42, "secs": 1}),
        json!({"kind": "retry_after", "status": 204, "secs": 1}),
        json!({"kind": "huge_error", "status": 500, "code": "X", "message_bytes": 1u64 << 40}),
        json!({"kind": "slow", "ms": 1, "extra": true}),
        json!({"kind": "meteor_strike"}),
        json!({"ms": 1}),
    ] {
        assert!(
            serde_json::from_value::<Fault>(nonsense.clone()).is_err(),
            "{nonsense}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_serves_raw_bodies_and_sets_faults() {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    let control = |path: &str| format!("{}/sim/{path}", sim.url());
    let body = vec![b'[', 0xFF, b']'];
    let id = long_content_id(300);
    let r = http()
        .post(control("publish-body"))
        .json(&json!({
            "tenant": TENANT_A,
            "contentType": "Audit.SharePoint",
            "contentId": id,
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&body),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let blob: o365_sim::SimBlob = r.json().await.unwrap();
    assert_eq!(blob.content_id, id);
    let (s, _, b) = mgmt_get_bytes(&blob.content_uri, &token).await;
    assert_eq!((s, b.as_ref()), (200, body.as_slice()));
    // A multi-MiB body fits the route's own limit (above the control API's 1 MiB).
    let big = vec![b' '; 3 * 1024 * 1024];
    let r = http()
        .post(control("publish-body"))
        .json(&json!({
            "contentType": "Audit.SharePoint",
            "bodyBase64": base64::engine::general_purpose::STANDARD.encode(&big),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Where a body goes is checked even though the body is not.
    for bad in [
        json!({"contentType": "Audit.Nope", "bodyBase64": ""}),
        json!({"tenant": "00000000-0000-0000-0000-000000000000", "contentType": "Audit.SharePoint", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint", "bodyBase64": "not base64!"}),
        json!({"contentType": "Audit.SharePoint", "contentId": "", "bodyBase64": ""}),
        json!({"contentType": "Audit.SharePoint"}),
    ] {
        let r = http()
            .post(control("publish-body"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    // Sticky over HTTP, then cleared.
    let r = http()
        .post(control("fault-for"))
        .json(&json!({"contentId": id, "fault": {"kind": "huge_error", "status": 503, "code": "AF50005", "message_bytes": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, _, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (503, "AF50005"));
    let r = http()
        .delete(control(&format!("fault-for/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http()
        .delete(control(&format!("fault-for/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // Pushed over HTTP.
    let r = http()
        .post(control("push-fault"))
        .json(&json!({"fault": {"kind": "retry_after", "status": 403, "secs": 100000000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let (s, h, b) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!((s, af_code(&b).as_str()), (403, "AF429"));
    assert_eq!(h["retry-after"], "100000000");
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    // A nonsensical fault is refused, not stored.
    let r = http()
        .post(control("push-fault"))
        .json(&json!({"fault": {"kind": "drip_feed", "chunk": 0, "interval_ms": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let (s, _, _) = mgmt_get(&blob.content_uri, &token).await;
    assert_eq!(s, 200);
    sim.stop().await;
}
