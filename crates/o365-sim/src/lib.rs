//! `o365-sim` — a strict, in-process simulator of Entra ID (v1 token endpoints, admin consent)
//! and the Office 365 Management Activity API.
//!
//! One HTTP listener serves both roles: it is the Entra ID base URL *and* the Management API
//! base URL (so a token's `resource` is the simulator's own URL). The simulator enforces
//! Microsoft's contract as its public pages state it ("Office 365 Management Activity API
//! reference", "Get started with Office 365 Management APIs") instead of accepting anything, so
//! a relay that passes its tests against it really does what Microsoft requires.
//!
//! Layout:
//! - `entra`: `/{tenant}/oauth2/token`, `/common/oauth2/authorize`, `/common/oauth2/token`;
//! - `management`: `/api/v1.0/{tenant}/activity/feed/...`;
//! - `records`: realistic audit records and Microsoft-shaped content ids;
//! - [`hostile`]: records and bodies that break Microsoft's shapes, for hostile-upstream tests;
//! - `webhook_delivery`: validation requests and notification delivery with retries;
//! - `control`: `/sim/...` JSON control API for a standalone simulator.
//!
//! The state lives behind one `Arc`; [`Simulator`] is a cheap handle on it.

mod control;
mod entra;
pub mod hostile;
mod management;
mod records;
mod webhook_delivery;

pub use webhook_delivery::{notification_body, MAX_BLOBS_PER_POST};

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpServer};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The five content types of the Management Activity API (anything else is `AF20020`).
pub const CONTENT_TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

/// Configuration of a simulator instance.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The only app registration the sim knows.
    pub client_id: String,
    /// Accepted client secret (`None` = secrets refused).
    pub client_secret: Option<String>,
    /// Registered certificates (PEM); several allowed (rotation).
    pub client_certs_pem: Vec<Vec<u8>>,
    /// Tenant GUIDs (lowercase) that exist; others -> AADSTS90002 / AF20011.
    pub tenants: Vec<String>,
    /// Lifetime of issued access tokens (default 3600 s).
    pub token_lifetime: Duration,
    /// Management calls without a GUID `PublisherIdentifier` -> 400 AF20012 (default true).
    pub publisher_id_required: bool,
    /// Webhook re-delivery delays (default 1 s, 2 s, 4 s, 8 s); exhausted -> webhook disabled.
    pub notification_retry_delays: Vec<Duration>,
    /// Content listing page size (default 200).
    pub page_size: usize,
    /// Records per published blob when not given (default 20).
    pub records_per_blob: usize,
    /// Tenant that "signs in" on the authorize page unless the consent form picks another
    /// known tenant (default `tenants[0]`).
    pub consent_tenant: Option<String>,
    /// UPN of the consenting admin.
    pub consent_upn: String,
    /// The base URL the simulator advertises (token `resource`, `contentUri`s, assertion
    /// `aud`) when it is reached under another name than its bind address (containers).
    pub public_url: Option<String>,
    /// How long published content can be retrieved: its `contentExpiration` is creation plus
    /// this, and a GET after it answers AF20051 (default 7 days, Microsoft's retention; tests
    /// shorten it to see content expire).
    pub content_lifetime: Duration,
    /// Tenants generated in addition to `tenants`: [`generated_tenant`]`(0..n)`. A thousand
    /// tenants cost the simulator a few hundred kilobytes (the benchmark's many-tenant section).
    pub generated_tenants: usize,
    /// When set, every tenant exists already onboarded: all five content types enabled with
    /// this webhook, as if each had been started (without the five validation requests per
    /// tenant that real starts send). `None`: tenants start without subscriptions.
    pub subscribed_webhook: Option<PresetWebhook>,
}

/// The webhook every tenant's subscriptions start with ([`SimConfig::subscribed_webhook`]).
#[derive(Clone, Debug)]
pub struct PresetWebhook {
    pub address: String,
    pub auth_id: String,
}

/// The `i`-th generated tenant id: a fixed, valid GUID per index, so a test, a benchmark and a
/// standalone simulator agree on them without exchanging lists.
pub fn generated_tenant(i: usize) -> String {
    format!("0000e365-0000-4000-8000-{:012x}", i)
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            client_id: "a6099727-6b7b-482c-b509-1df309acc563".to_string(),
            client_secret: None,
            client_certs_pem: Vec::new(),
            tenants: vec!["41463f53-8812-40f4-890f-865bf6e35190".to_string()],
            token_lifetime: Duration::from_secs(3600),
            publisher_id_required: true,
            notification_retry_delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
                Duration::from_secs(8),
            ],
            page_size: 200,
            records_per_blob: 20,
            consent_tenant: None,
            consent_upn: "admin@contoso.onmicrosoft.com".to_string(),
            public_url: None,
            content_lifetime: Duration::from_secs(7 * 24 * 3600),
            generated_tenants: 0,
            subscribed_webhook: None,
        }
    }
}

/// A published content blob, as the simulator serves it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SimBlob {
    pub tenant_id: String,
    pub content_type: String,
    pub content_id: String,
    pub content_uri: String,
    /// e.g. "2026-11-26T04:12:00.000Z"
    pub content_created: String,
    /// created + 7 days
    pub content_expiration: String,
    /// The exact bytes of each record as served in the body. For a blob made by
    /// [`Simulator::publish_body`] this is best effort: the elements of the body when it is a
    /// JSON array (decoded lossily when the body is not UTF-8), else empty.
    pub records: Vec<String>,
    /// Each record's `Id` ("" when a record has no string `Id`); best effort like `records`.
    pub record_ids: Vec<String>,
}

/// A subscription as `subscriptions/list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SimSubscription {
    pub content_type: String,
    pub status: String,
    pub webhook: Option<SimWebhook>,
}

/// A subscription's webhook.
#[derive(Clone, Debug, Serialize)]
pub struct SimWebhook {
    pub address: String,
    pub auth_id: String,
    pub status: String,
    pub expiration: Option<String>,
}

/// Random faults; probabilities 0.0..=1.0, applied independently per request.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Faults {
    /// 429 + `{"error":{"code":"AF429",...}}` (+ `Retry-After: 1` when `retry_after`).
    pub throttle_429: f64,
    /// 403 + AF429 body (Microsoft really does this).
    pub throttle_403: f64,
    /// 500 AF50000.
    pub server_error: f64,
    /// Sleep `slow_ms` before answering.
    pub slow: f64,
    pub slow_ms: u64,
    /// Content GET: 200, send half the body, then close the stream.
    pub truncate: f64,
    /// Notification never delivered (still listed in subscriptions/content).
    pub drop_notification: f64,
    pub notification_delay_ms: u64,
    pub retry_after: bool,
    /// Also apply throttle/5xx/slow to subscriptions/content.
    pub apply_to_listing: bool,
}

/// A deterministic fault for a content GET: the next one ([`Simulator::push_fault`]) or every
/// one of a content id ([`Simulator::fault_for`]).
///
/// Over the control API a fault is JSON tagged by `kind`, durations in milliseconds:
/// `{"kind":"throttle429"}`, `{"kind":"slow","ms":300}`,
/// `{"kind":"drip_feed","chunk":64,"interval_ms":50}`,
/// `{"kind":"retry_after","status":429,"secs":100000000}`,
/// `{"kind":"huge_error","status":500,"code":"AF50000","message_bytes":65536}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "FaultWire", into = "FaultWire")]
pub enum Fault {
    /// 429 AF429 (`Retry-After: 1` when [`Faults::retry_after`] is set).
    Throttle429,
    /// 403 AF429.
    Throttle403,
    /// 500 AF50000.
    ServerError,
    /// Wait, then answer normally.
    Slow(Duration),
    /// 200, half the body, then the connection breaks.
    Truncate,
    /// 400 AF20051.
    Expired,
    /// 401 AF401.
    Unauthorized,
    /// 200 and the whole body, `chunk` bytes at a time with `interval` between chunks: a
    /// slowloris upstream whose every read is quick but whose body takes long. A `chunk` of 0
    /// is served as 1.
    DripFeed { chunk: usize, interval: Duration },
    /// AF429 with HTTP `status` (Microsoft uses 429 and 403) and `Retry-After: {secs}`, however
    /// absurd. A `status` outside 200..=599 (or one that has no body) is served as 500.
    RetryAfter { status: u16, secs: u64 },
    /// `{"error":{"code": code,"message": <message_bytes bytes of ASCII text>}}` with HTTP
    /// `status` (same status rule as `RetryAfter`).
    HugeError {
        status: u16,
        code: String,
        message_bytes: usize,
    },
}

/// Most bytes of a `HugeError` message accepted over the control API (the Rust API is
/// trusted with any size).
const MAX_WIRE_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// [`Fault`] as the control API spells it.
#[derive(Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum FaultWire {
    Throttle429,
    Throttle403,
    ServerError,
    Slow {
        ms: u64,
    },
    Truncate,
    Expired,
    Unauthorized,
    DripFeed {
        chunk: usize,
        interval_ms: u64,
    },
    RetryAfter {
        status: u16,
        secs: u64,
    },
    HugeError {
        status: u16,
        code: String,
        message_bytes: usize,
    },
}

/// The status an error-shaped fault answers with, when `status` can carry a body.
pub(crate) fn fault_status(status: u16) -> Option<actix_web::http::StatusCode> {
    if !(200..=599).contains(&status) || matches!(status, 204 | 205 | 304) {
        return None;
    }
    actix_web::http::StatusCode::from_u16(status).ok()
}

impl TryFrom<FaultWire> for Fault {
    type Error = String;

    /// Refuses what the simulator would otherwise have to repair silently.
    fn try_from(w: FaultWire) -> Result<Self, String> {
        let status_ok = |s: u16| {
            fault_status(s)
                .map(|_| ())
                .ok_or_else(|| format!("status {s} is not a 2xx-5xx status with a body"))
        };
        Ok(match w {
            FaultWire::Throttle429 => Fault::Throttle429,
            FaultWire::Throttle403 => Fault::Throttle403,
            FaultWire::ServerError => Fault::ServerError,
            FaultWire::Slow { ms } => Fault::Slow(Duration::from_millis(ms)),
            FaultWire::Truncate => Fault::Truncate,
            FaultWire::Expired => Fault::Expired,
            FaultWire::Unauthorized => Fault::Unauthorized,
            FaultWire::DripFeed { chunk, interval_ms } => {
                if chunk == 0 {
                    return Err("drip_feed chunk must be at least 1".into());
                }
                Fault::DripFeed {
                    chunk,
                    interval: Duration::from_millis(interval_ms),
                }
            }
            FaultWire::RetryAfter { status, secs } => {
                status_ok(status)?;
                Fault::RetryAfter { status, secs }
            }
            FaultWire::HugeError {
                status,
                code,
                message_bytes,
            } => {
                status_ok(status)?;
                if message_bytes > MAX_WIRE_MESSAGE_BYTES {
                    return Err(format!(
                        "message_bytes above {MAX_WIRE_MESSAGE_BYTES} bytes"
                    ));
                }
                Fault::HugeError {
                    status,
                    code,
                    message_bytes,
                }
            }
        })
    }
}

impl From<Fault> for FaultWire {
    fn from(f: Fault) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match f {
            Fault::Throttle429 => FaultWire::Throttle429,
            Fault::Throttle403 => FaultWire::Throttle403,
            Fault::ServerError => FaultWire::ServerError,
            Fault::Slow(d) => FaultWire::Slow { ms: ms(d) },
            Fault::Truncate => FaultWire::Truncate,
            Fault::Expired => FaultWire::Expired,
            Fault::Unauthorized => FaultWire::Unauthorized,
            Fault::DripFeed { chunk, interval } => FaultWire::DripFeed {
                chunk,
                interval_ms: ms(interval),
            },
            Fault::RetryAfter { status, secs } => FaultWire::RetryAfter { status, secs },
            Fault::HugeError {
                status,
                code,
                message_bytes,
            } => FaultWire::HugeError {
                status,
                code,
                message_bytes,
            },
        }
    }
}

/// Handle on a running simulator; cheap to clone.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
    handle: ServerHandle,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("url", &self.inner.url)
            .finish()
    }
}

// ------------------------------------------------------------------------------------------
// Internal state
// ------------------------------------------------------------------------------------------

/// A registered client certificate, pre-digested for assertion checks.
pub(crate) struct RegisteredCert {
    /// base64url-nopad SHA-1 of the DER (the assertion header's `x5t`).
    pub x5t: String,
    pub key: jsonwebtoken::DecodingKey,
}

/// A stored blob plus bookkeeping.
pub(crate) struct StoredBlob {
    pub blob: SimBlob,
    pub created: DateTime<Utc>,
    pub seq: u64,
    pub body: bytes::Bytes,
    pub expired: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct Subscription {
    pub enabled: bool,
    pub webhook: Option<WebhookState>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct WebhookState {
    pub address: String,
    pub auth_id: String,
    /// "enabled" | "disabled" | "expired"
    pub status: String,
    pub expiration: Option<String>,
}

/// A pending authorization code (single use, 10 minutes).
pub(crate) struct AuthCode {
    pub client_id: String,
    pub redirect_uri: String,
    pub resource: String,
    pub tenant: String,
    pub upn: String,
    pub expires: Instant,
    pub used: bool,
}

#[derive(Default)]
pub(crate) struct CallWindow {
    pub recent: VecDeque<Instant>,
    pub max: u64,
    pub total: u64,
}

#[derive(Default)]
pub(crate) struct State {
    pub blobs: Vec<StoredBlob>,
    pub blob_index: HashMap<String, usize>,
    /// Indexes into `blobs` per (tenant, content type): a listing reads its own feed, not every
    /// tenant's blobs.
    pub feeds: HashMap<(String, String), Vec<usize>>,
    pub next_seq: u64,
    /// Records carried into the next blob of (tenant, content type): Microsoft's by-design duplicates.
    pub carry: HashMap<(String, String), Vec<(String, String)>>,
    pub subscriptions: HashMap<String, HashMap<String, Subscription>>,
    pub codes: HashMap<String, AuthCode>,
    pub seen_jti: HashSet<String>,
    pub faults: Faults,
    pub pushed: VecDeque<Fault>,
    /// Faults answered by every GET of a content id, ahead of `pushed` and random faults.
    pub sticky: HashMap<String, Fault>,
    /// Tenants whose admin withdrew consent (the app's service principal is gone): their
    /// client-credentials requests are refused until consent is granted again.
    pub withdrawn: HashSet<String>,
    /// App roles a tenant's admin took away (tenant → roles): tokens issued from then on lack
    /// them, and the Management API answers AF10001.
    pub revoked_roles: HashMap<String, HashSet<String>>,
    // counters
    /// Client-credentials tokens issued, per tenant.
    pub token_requests: HashMap<String, u64>,
    /// Requests to a tenant's token endpoint answered with an error, per tenant.
    pub refused_token_requests: HashMap<String, u64>,
    pub content_gets: u64,
    pub content_gets_for: HashMap<String, u64>,
    pub list_calls: u64,
    pub start_calls: HashMap<(String, String), u64>,
    pub calls: HashMap<String, CallWindow>,
    /// Management calls per (tenant, route), see [`Route`].
    pub route_calls: HashMap<(String, Route), u64>,
    /// `subscriptions/content` requests being answered right now, and the most at once.
    pub listings_in_flight: u64,
    pub max_listings_in_flight: u64,
    pub notifications_delivered: u64,
    pub notifications_dropped: u64,
    pub records_published: u64,
    pub unique_ids: HashSet<String>,
    pub rejected: Vec<String>,
}

/// The Management API operations, for the per-tenant call counters
/// ([`Simulator::route_calls`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// `POST subscriptions/start`
    Start,
    /// `POST subscriptions/stop`
    Stop,
    /// `GET subscriptions/list`
    ListSubscriptions,
    /// `GET subscriptions/content` (every page)
    ListContent,
    /// `GET audit/{contentId}`
    GetContent,
    /// Any other path under the feed (answered 404).
    Unknown,
}

impl Route {
    pub const ALL: [Route; 6] = [
        Route::Start,
        Route::Stop,
        Route::ListSubscriptions,
        Route::ListContent,
        Route::GetContent,
        Route::Unknown,
    ];
}

pub(crate) struct Inner {
    pub config: SimConfig,
    /// `config.tenants` (lowercase) as a set: every request looks its tenant up.
    pub known_tenants: HashSet<String>,
    /// "http://127.0.0.1:PORT"
    pub url: String,
    pub certs: Vec<RegisteredCert>,
    pub signing_key: jsonwebtoken::EncodingKey,
    pub verify_key: jsonwebtoken::DecodingKey,
    pub http: reqwest::Client,
    pub state: Mutex<State>,
    pub stopped: AtomicBool,
}

impl Inner {
    /// Lock the state; a poisoned lock (a panicking handler) is still usable for a simulator.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn tenant_known(&self, tenant: &str) -> bool {
        self.known_tenants.contains(&tenant.to_ascii_lowercase())
    }

    /// Log one refused request (one short line).
    pub(crate) fn reject(&self, line: String) {
        tracing::debug!(target: "o365_sim", "refused: {line}");
        self.state().rejected.push(line);
    }

    pub(crate) fn consent_tenant(&self) -> String {
        self.config
            .consent_tenant
            .clone()
            .or_else(|| self.config.tenants.first().cloned())
            .unwrap_or_default()
    }
}

/// Generate the sim's own RSA signing key for access tokens.
fn generate_signing_keys() -> anyhow::Result<(jsonwebtoken::EncodingKey, jsonwebtoken::DecodingKey)>
{
    let rsa = openssl::rsa::Rsa::generate(2048)?;
    let private_pem = rsa.private_key_to_pem()?;
    let public_pem = rsa.public_key_to_pem()?;
    Ok((
        jsonwebtoken::EncodingKey::from_rsa_pem(&private_pem)?,
        jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem)?,
    ))
}

/// Parse each registered PEM certificate (a PEM may hold several) into x5t + verifying key.
fn register_certs(pems: &[Vec<u8>]) -> anyhow::Result<Vec<RegisteredCert>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for pem in pems {
        for cert in openssl::x509::X509::stack_from_pem(pem)? {
            let digest = cert.digest(openssl::hash::MessageDigest::sha1())?;
            let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
            let public_pem = cert.public_key()?.public_key_to_pem()?;
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public_pem)?;
            out.push(RegisteredCert { x5t, key });
        }
    }
    Ok(out)
}

impl Simulator {
    /// Bind `addr` (e.g. "127.0.0.1:0"), start serving in a tokio task, return handle.
    pub async fn start(config: SimConfig, addr: &str) -> anyhow::Result<Simulator> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if local.is_ipv6() {
            format!("[{}]", local.ip())
        } else {
            local.ip().to_string()
        };
        let url = match &config.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!("http://{host}:{}", local.port()),
        };
        let (signing_key, verify_key) = generate_signing_keys()?;
        let certs = register_certs(&config.client_certs_pem)?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            // No pooling: requests are made from several runtimes (actix workers, caller's).
            .pool_max_idle_per_host(0)
            .build()?;
        let mut config = config;
        config.tenants = config
            .tenants
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .chain((0..config.generated_tenants).map(generated_tenant))
            .collect();
        let known_tenants = config.tenants.iter().cloned().collect();
        let mut state = State::default();
        if let Some(w) = &config.subscribed_webhook {
            preset(&mut state, &config.tenants, w);
        }
        let inner = Arc::new(Inner {
            config,
            known_tenants,
            url,
            certs,
            signing_key,
            verify_key,
            http,
            state: Mutex::new(state),
            stopped: AtomicBool::new(false),
        });
        let data = web::Data::from(inner.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(4 * 1024 * 1024))
                .configure(control::configure)
                .configure(entra::configure)
                .configure(management::configure)
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handle = server.handle();
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(target: "o365_sim", "simulator server failed: {e}");
            }
        });
        tracing::info!(target: "o365_sim", "simulator listening on {}", inner.url);
        Ok(Simulator { inner, handle })
    }

    /// "http://127.0.0.1:PORT" (no trailing slash): both the Entra and the Management base URL.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// Stop serving (and stop background notification deliveries).
    pub async fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.handle.stop(true).await;
    }

    // --- content -------------------------------------------------------------------------

    /// Create `blobs` new content blobs for (tenant, content_type), each with `records` records
    /// (None = config.records_per_blob), and notify the webhook when one is enabled.
    pub async fn publish(
        &self,
        tenant: &str,
        content_type: &str,
        blobs: usize,
        records: Option<usize>,
    ) -> Vec<SimBlob> {
        records::publish(&self.inner, tenant, content_type, blobs, records)
    }

    /// Same but with records you give (each a complete JSON object text; served byte-exactly).
    pub async fn publish_raw(
        &self,
        tenant: &str,
        content_type: &str,
        records: Vec<String>,
    ) -> SimBlob {
        records::publish_raw(&self.inner, tenant, content_type, None, records)
    }

    /// Like [`Simulator::publish_raw`], under a content id you choose. Any id is listed and
    /// notified as given (its `contentUri` percent-encodes what a URL path cannot hold); its GET
    /// is served when the id passes the simulator's own check (up to 1024 bytes of
    /// `[A-Za-z0-9$_.-]` with a `$`), else answered AF20052. Re-using an id makes its GET serve
    /// the newest blob.
    pub async fn publish_raw_with_id(
        &self,
        tenant: &str,
        content_type: &str,
        content_id: String,
        records: Vec<String>,
    ) -> SimBlob {
        records::publish_raw(&self.inner, tenant, content_type, Some(content_id), records)
    }

    /// Store a blob whose GET answers exactly `body` (any bytes: not UTF-8, not an array, not
    /// JSON) and notify the webhook. `content_id` as in [`Simulator::publish_raw_with_id`]
    /// (`None` = a Microsoft-shaped id). The returned blob's `records` / `record_ids` are best
    /// effort (see [`SimBlob::records`]).
    pub async fn publish_body(
        &self,
        tenant: &str,
        content_type: &str,
        body: Vec<u8>,
        content_id: Option<String>,
    ) -> SimBlob {
        records::publish_body(&self.inner, tenant, content_type, body, content_id)
    }

    /// A blob as a notification would announce it (Microsoft-shaped id, `contentUri` on this
    /// simulator, created now, expiring in 7 days) that is neither stored nor listed: its GET
    /// answers AF20050. For load that only exercises the webhook (the benchmark's ingest).
    pub fn announced_blob(&self, tenant: &str, content_type: &str) -> SimBlob {
        let created = Utc::now();
        let content_id = records::content_id(content_type);
        SimBlob {
            tenant_id: tenant.to_string(),
            content_type: content_type.to_string(),
            content_uri: records::content_uri(&self.inner, tenant, &content_id),
            content_id,
            content_created: ms_time(&created),
            content_expiration: ms_time(&(created + chrono::Duration::days(7))),
            records: Vec::new(),
            record_ids: Vec::new(),
        }
    }

    /// Re-deliver the notification for an existing blob (Microsoft does send duplicates).
    pub async fn renotify(&self, blob: &SimBlob) {
        webhook_delivery::notify(
            &self.inner,
            &blob.tenant_id,
            &blob.content_type,
            vec![blob.clone()],
            false,
        );
    }

    /// Mark content as expired (its GET answers AF20051 from now on).
    pub fn expire(&self, content_id: &str) {
        let mut st = self.inner.state();
        if let Some(&i) = st.blob_index.get(content_id) {
            st.blobs[i].expired = true;
        }
    }

    // --- subscriptions -------------------------------------------------------------------

    /// The tenant's subscriptions (every content type ever started).
    pub fn subscriptions(&self, tenant: &str) -> Vec<SimSubscription> {
        management::subscriptions_of(&self.inner, tenant)
    }

    /// Every tenant onboarded at once: all five content types enabled with webhook `w`, without
    /// validation requests (as [`SimConfig::subscribed_webhook`] does at start, for a caller
    /// that learns the webhook's address only after the simulator runs).
    pub fn subscribe_all(&self, w: &PresetWebhook) {
        preset(&mut self.inner.state(), &self.inner.config.tenants, w);
    }

    /// Disable the webhook of (tenant, content type), as Microsoft does after failures.
    pub fn disable_webhook(&self, tenant: &str, content_type: &str) {
        let mut st = self.inner.state();
        if let Some(sub) = st
            .subscriptions
            .get_mut(&tenant.to_ascii_lowercase())
            .and_then(|m| m.get_mut(content_type))
        {
            if let Some(w) = sub.webhook.as_mut() {
                w.status = "disabled".to_string();
            }
        }
    }

    // --- counters ------------------------------------------------------------------------

    /// Client-credentials tokens issued for the tenant (refused requests are not counted:
    /// see [`Simulator::refused_token_requests`]).
    pub fn token_requests(&self, tenant: &str) -> u64 {
        let st = self.inner.state();
        st.token_requests
            .get(&tenant.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
    /// Requests to the tenant's token endpoint (`POST /{tenant}/oauth2/token`) that were refused
    /// with an OAuth error: a wrong client id, secret or assertion, an unknown tenant, a bad
    /// grant type or body. Issued tokens + refused requests = every request that reached Entra.
    pub fn refused_token_requests(&self, tenant: &str) -> u64 {
        let st = self.inner.state();
        st.refused_token_requests
            .get(&tenant.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
    /// The tenant's admin withdraws consent (deletes the app's service principal): from now
    /// on Entra refuses the tenant's client-credentials requests (AADSTS7000229). Tokens already
    /// issued stay valid until they expire, as Entra's do.
    pub fn withdraw_consent(&self, tenant: &str) {
        self.inner
            .state()
            .withdrawn
            .insert(tenant.to_ascii_lowercase());
    }

    /// The tenant's admin takes the app role `role` (e.g. `ActivityFeed.ReadDlp`) away: tokens
    /// issued from now on lack it (those issued before keep it until they expire).
    pub fn revoke_role(&self, tenant: &str, role: &str) {
        self.inner
            .state()
            .revoked_roles
            .entry(tenant.to_ascii_lowercase())
            .or_default()
            .insert(role.to_string());
    }

    /// The tenant's admin grants consent again (also what accepting the consent page does for
    /// the consenting tenant).
    pub fn grant_consent(&self, tenant: &str) {
        let tenant = tenant.to_ascii_lowercase();
        let mut st = self.inner.state();
        st.withdrawn.remove(&tenant);
        st.revoked_roles.remove(&tenant);
    }

    /// Content GETs answered (any status).
    pub fn content_gets(&self) -> u64 {
        self.inner.state().content_gets
    }
    pub fn content_gets_for(&self, content_id: &str) -> u64 {
        self.inner
            .state()
            .content_gets_for
            .get(content_id)
            .copied()
            .unwrap_or(0)
    }
    /// `subscriptions/content` calls.
    pub fn list_calls(&self) -> u64 {
        self.inner.state().list_calls
    }
    pub fn start_calls(&self, tenant: &str, content_type: &str) -> u64 {
        let key = (tenant.to_ascii_lowercase(), content_type.to_string());
        self.inner
            .state()
            .start_calls
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    /// Every Management API call for the tenant.
    pub fn management_calls(&self, tenant: &str) -> u64 {
        let st = self.inner.state();
        st.calls
            .get(&tenant.to_ascii_lowercase())
            .map_or(0, |c| c.total)
    }
    /// Management calls for the tenant on one route (any answer, refusals included).
    pub fn route_calls(&self, tenant: &str, route: Route) -> u64 {
        let key = (tenant.to_ascii_lowercase(), route);
        self.inner
            .state()
            .route_calls
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    /// Management calls on one route, all tenants together.
    pub fn route_calls_total(&self, route: Route) -> u64 {
        self.inner
            .state()
            .route_calls
            .iter()
            .filter(|((_, r), _)| *r == route)
            .map(|(_, n)| n)
            .sum()
    }
    /// The most `subscriptions/content` requests (any tenants) answered at the same time: how
    /// concurrently a client lists.
    pub fn max_concurrent_listings(&self) -> u64 {
        self.inner.state().max_listings_in_flight
    }
    /// Every tenant that exists (lowercase): `tenants`, then the generated ones.
    pub fn tenants(&self) -> Vec<String> {
        self.inner.config.tenants.clone()
    }
    /// Highest Management call count in any sliding 60 s window.
    pub fn max_calls_per_minute(&self, tenant: &str) -> u64 {
        let st = self.inner.state();
        st.calls
            .get(&tenant.to_ascii_lowercase())
            .map_or(0, |c| c.max)
    }
    /// Webhook notification POSTs answered 200.
    pub fn notifications_delivered(&self) -> u64 {
        self.inner.state().notifications_delivered
    }
    /// Notifications (one per blob) lost on purpose by the drop fault.
    pub fn notifications_dropped(&self) -> u64 {
        self.inner.state().notifications_dropped
    }
    /// Records put into blobs (including duplicates).
    pub fn records_published(&self) -> u64 {
        self.inner.state().records_published
    }
    /// Distinct record Ids put into blobs.
    pub fn unique_record_ids(&self) -> HashSet<String> {
        self.inner.state().unique_ids.clone()
    }
    /// One short line per request the sim refused.
    pub fn rejected_requests(&self) -> Vec<String> {
        self.inner.state().rejected.clone()
    }

    // --- faults --------------------------------------------------------------------------

    pub fn set_faults(&self, faults: Faults) {
        self.inner.state().faults = faults;
    }
    /// Deterministic: the next content GETs (in order, any blob without a sticky fault) answer
    /// with these faults.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.state().pushed.push_back(fault);
    }
    /// Every GET of `content_id` answers with `fault` until [`Simulator::clear_fault_for`]
    /// (replacing any earlier sticky fault of that id). Such GETs neither consume pushed faults
    /// nor roll random ones, so one blob can stay bad while the others behave.
    pub fn fault_for(&self, content_id: &str, fault: Fault) {
        self.inner
            .state()
            .sticky
            .insert(content_id.to_string(), fault);
    }
    /// Remove the sticky fault of `content_id`; `true` when there was one.
    pub fn clear_fault_for(&self, content_id: &str) -> bool {
        self.inner.state().sticky.remove(content_id).is_some()
    }
}

/// Every content type of every tenant in `tenants` enabled with webhook `w`.
fn preset(state: &mut State, tenants: &[String], w: &PresetWebhook) {
    for t in tenants {
        let subs = CONTENT_TYPES
            .iter()
            .map(|ct| {
                let sub = Subscription {
                    enabled: true,
                    webhook: Some(WebhookState {
                        address: w.address.clone(),
                        auth_id: w.auth_id.clone(),
                        status: "enabled".into(),
                        expiration: None,
                    }),
                };
                (ct.to_string(), sub)
            })
            .collect();
        state.subscriptions.insert(t.clone(), subs);
    }
}

/// Microsoft's timestamp shape for `contentCreated` / `contentExpiration`.
pub(crate) fn ms_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}
