//! What every test of the simulator shares: its configuration, tokens, Management API calls
//! and small webhook receivers. Everything goes through the simulator's public API and HTTP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use o365_sim::{SimConfig, Simulator};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};
use serde_json::{json, Value};

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

pub async fn token_with_assertion(sim: &Simulator, tenant: &str, assertion: &str) -> (u16, Value) {
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

pub async fn token_with_secret(sim: &Simulator, tenant: &str, secret: &str) -> (u16, Value) {
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

pub async fn bearer(sim: &Simulator, tenant: &str) -> String {
    let (status, body) = token_with_secret(sim, tenant, SECRET).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

pub fn feed(sim: &Simulator, tenant: &str, rest: &str) -> String {
    format!("{}/api/v1.0/{tenant}/activity/feed/{rest}", sim.url())
}

/// GET with bearer + PublisherIdentifier; returns (status, headers, body text).
pub async fn mgmt_get(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, String) {
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

pub fn af_code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
}

/// A tiny webhook receiver answering `status`; returns its URL and what it received.
pub async fn webhook_receiver(status: u16) -> (String, Arc<Mutex<Vec<Received>>>) {
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

/// GET with bearer + PublisherIdentifier; returns (status, headers, body bytes).
pub async fn mgmt_get_bytes(
    url: &str,
    token: &str,
) -> (u16, reqwest::header::HeaderMap, bytes::Bytes) {
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
