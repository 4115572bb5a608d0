//! What every test of the simulator shares: its configuration, tokens, Management API calls
//! and small webhook receivers. Everything goes through the simulator's public API and HTTP.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use o365_sim::{SimBlob, SimConfig, Simulator};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const TENANT_A: &str = "41463f53-8812-40f4-890f-865bf6e35190";
pub const TENANT_B: &str = "8c6d0c0e-2b5e-4a8f-9d3e-7f1a2b3c4d5e";
pub const SECRET: &str = "s3cret-value-for-tests";
pub const CLIENT_ID: &str = "a6099727-6b7b-482c-b509-1df309acc563";

/// A self-signed certificate and its private key (PEM) plus the `x5t` thumbprint.
pub struct TestCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub x5t: String,
}

pub fn make_cert() -> TestCert {
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

pub fn config(cert: Option<&TestCert>) -> SimConfig {
    SimConfig {
        client_secret: Some(SECRET.into()),
        client_certs_pem: cert.map(|c| vec![c.cert_pem.clone()]).unwrap_or_default(),
        tenants: vec![TENANT_A.into(), TENANT_B.into()],
        notification_retry_delays: vec![Duration::from_millis(20), Duration::from_millis(20)],
        ..SimConfig::default()
    }
}

pub async fn sim_with(config: SimConfig) -> Simulator {
    Simulator::start(config, "127.0.0.1:0").await.unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Sign an assertion with `key_pem`, header x5t `x5t`, the given claims.
pub fn assertion(key_pem: &[u8], x5t: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.x5t = Some(x5t.to_string());
    jsonwebtoken::encode(
        &h,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(key_pem).unwrap(),
    )
    .unwrap()
}

pub fn good_claims(sim: &Simulator, tenant: &str) -> Value {
    json!({
        "aud": format!("{}/{tenant}/oauth2/token", sim.url()),
        "iss": CLIENT_ID, "sub": CLIENT_ID,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now(), "iat": now(), "exp": now() + 600,
    })
}

/// Asks `tenant`'s token endpoint for a client-credentials token for `resource`, proving the
/// client with `credential` (a secret or a signed assertion); returns (status, body).
pub async fn token_request(
    sim: &Simulator,
    tenant: &str,
    resource: &str,
    credential: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("resource", resource),
    ];
    form.extend_from_slice(credential);
    let r = http()
        .post(format!("{}/{tenant}/oauth2/token", sim.url()))
        .form(&form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

pub async fn token_with_assertion(sim: &Simulator, tenant: &str, assertion: &str) -> (u16, Value) {
    let credential = [
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    token_request(sim, tenant, &sim.url(), &credential).await
}

pub async fn token_with_secret(sim: &Simulator, tenant: &str, secret: &str) -> (u16, Value) {
    token_request(sim, tenant, &sim.url(), &[("client_secret", secret)]).await
}

/// Checks that the token request `what` was refused with `status` and OAuth error `error`.
pub fn assert_token_refused(what: &str, got: &(u16, Value), status: u16, error: &str) {
    let (got_status, body) = got;
    assert_eq!(
        (*got_status, body["error"].as_str()),
        (status, Some(error)),
        "{what}: {body}"
    );
}

/// The `error_description` of a refused token request (it starts with Entra's AADSTS code).
pub fn error_description(body: &Value) -> &str {
    body["error_description"].as_str().unwrap()
}

/// The claims of a token (the JWT's payload, decoded).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

pub async fn bearer(sim: &Simulator, tenant: &str) -> String {
    let (status, body) = token_with_secret(sim, tenant, SECRET).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

pub fn feed(sim: &Simulator, tenant: &str, rest: &str) -> String {
    format!("{}/api/v1.0/{tenant}/activity/feed/{rest}", sim.url())
}

/// A simulator with the tests' configuration and a bearer token of tenant A.
pub async fn sim_with_token() -> (Simulator, String) {
    let sim = sim_with(config(None)).await;
    let token = bearer(&sim, TENANT_A).await;
    (sim, token)
}

/// Publishes one blob of `ct` for tenant A (`records` as in [`Simulator::publish`]) and returns it.
pub async fn publish_one(sim: &Simulator, ct: &str, records: Option<usize>) -> SimBlob {
    let mut blobs = sim.publish(TENANT_A, ct, 1, records).await;
    assert_eq!(blobs.len(), 1, "one blob published");
    blobs.remove(0)
}

/// Sends a GET with bearer + PublisherIdentifier, as the relay does; the body is left unread.
pub async fn mgmt_send(url: &str, token: &str) -> reqwest::Response {
    http()
        .get(url)
        .bearer_auth(token)
        .query(&[("PublisherIdentifier", TENANT_A)])
        .send()
        .await
        .unwrap()
}

/// GET with bearer + PublisherIdentifier; returns (status, headers, body text).
pub async fn mgmt_get(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = mgmt_send(url, token).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// GET with bearer + PublisherIdentifier; returns (status, headers, body bytes).
pub async fn mgmt_get_bytes(
    url: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
    let r = mgmt_send(url, token).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap())
}

/// GETs `url` and checks that it is served (200); returns the body text.
pub async fn mgmt_ok(url: &str, token: &str) -> String {
    let (status, _, body) = mgmt_get(url, token).await;
    assert_eq!(status, 200, "{url}: {body}");
    body
}

/// GETs `url` and checks that it is answered with `status` and Microsoft's error code `code`;
/// returns the headers (for `Retry-After`).
pub async fn assert_af(
    url: &str,
    token: &str,
    status: u16,
    code: &str,
) -> reqwest::header::HeaderMap {
    let (got, headers, body) = mgmt_get(url, token).await;
    assert_eq!(
        (got, af_code(&body).as_str()),
        (status, code),
        "{url}: {body}"
    );
    headers
}

/// GETs `url` and checks that it answers 200 and then breaks off the body (`Fault::Truncate`).
pub async fn assert_truncated(url: &str, token: &str) {
    let r = mgmt_send(url, token).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.bytes().await.is_err(), "truncated body must fail");
}

/// Checks that the simulator logged no refused request (faults are not refusals).
pub fn assert_nothing_refused(sim: &Simulator) {
    assert!(
        sim.rejected_requests().is_empty(),
        "{:?}",
        sim.rejected_requests()
    );
}

pub async fn start_sub(
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

/// The body of a subscription start that asks for notifications at `hook` (auth id "x").
pub fn webhook_body(hook: &str) -> Value {
    json!({"webhook": {"address": hook, "authId": "x"}})
}

/// Starts tenant A's subscription to `ct` with notifications at `hook`; returns (status, body).
pub async fn start_webhook_sub(sim: &Simulator, token: &str, ct: &str, hook: &str) -> (u16, Value) {
    start_sub(sim, TENANT_A, token, ct, Some(webhook_body(hook))).await
}

/// Starts tenant A's subscription to `ct` with a webhook receiver answering 200, checks that it
/// started, and returns the receiver's URL and what it received (the validation request first).
pub async fn subscribed_receiver(
    sim: &Simulator,
    token: &str,
    ct: &str,
) -> (String, Arc<Mutex<Vec<Received>>>) {
    let (hook, got) = webhook_receiver(200).await;
    let (status, body) = start_webhook_sub(sim, token, ct, &hook).await;
    assert_eq!(status, 200, "{body}");
    (hook, got)
}

/// Checks that a subscription start was refused with `status` and Microsoft's code `code`.
pub fn assert_start_refused(got: &(u16, Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(
        (*got_status, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

pub fn af_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The URL of the simulator's control endpoint `/sim/{path}`.
pub fn control_url(sim: &Simulator, path: &str) -> String {
    format!("{}/sim/{path}", sim.url())
}

/// POSTs `body` to the control endpoint `/sim/{path}`.
pub async fn control_post(sim: &Simulator, path: &str, body: &Value) -> reqwest::Response {
    http()
        .post(control_url(sim, path))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// GETs the control endpoint `/sim/{path}` and returns its JSON.
pub async fn control_get(sim: &Simulator, path: &str) -> Value {
    let r = http().get(control_url(sim, path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "/sim/{path}");
    r.json().await.unwrap()
}

/// DELETEs the control endpoint `/sim/{path}`; returns the status.
pub async fn control_delete(sim: &Simulator, path: &str) -> u16 {
    let r = http().delete(control_url(sim, path)).send().await.unwrap();
    r.status().as_u16()
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// Listens on a free loopback port and hands every connection to `handle`; returns the URL of
/// its `/webhook` path.
async fn serve<F, Fut>(handle: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(handle(sock));
        }
    });
    url
}

/// Answers with an empty body and `status` (e.g. "200 OK"), then closes.
async fn reply(mut sock: TcpStream, status: &str) {
    let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Reads one request: its head, then Content-Length bytes of body. `None` when the peer closed
/// before the head was complete.
async fn read_request(sock: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, len) = loop {
        let n = sock.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
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
    Some(Received { headers, body })
}

/// A tiny webhook receiver answering `status`; returns its URL and what it received.
pub async fn webhook_receiver(status: u16) -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let got2 = got.clone();
    let url = serve(move |mut sock| {
        let got = got2.clone();
        async move {
            let Some(request) = read_request(&mut sock).await else {
                return;
            };
            got.lock().unwrap().push(request);
            reply(sock, &format!("{status} X")).await;
        }
    })
    .await;
    (url, got)
}

pub async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Answers 200 to the first request, 503 to every later one; counts requests.
pub async fn switching_receiver() -> (String, Arc<Mutex<usize>>) {
    let count: Arc<Mutex<usize>> = Arc::default();
    let c2 = count.clone();
    let url = serve(move |mut sock| {
        let c = c2.clone();
        async move {
            let mut buf = [0u8; 8192];
            let _ = sock.read(&mut buf).await;
            let n = {
                let mut g = c.lock().unwrap();
                *g += 1;
                *g
            };
            reply(sock, if n == 1 { "200 OK" } else { "503 Unavailable" }).await;
        }
    })
    .await;
    (url, count)
}

/// `len` bytes of `[A-Za-z0-9$]`, with a `$` every 13 bytes like Microsoft's separators.
pub fn long_content_id(len: usize) -> String {
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
