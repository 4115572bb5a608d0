//! The Management Activity API client: the one place that sends a bearer token to Microsoft.
//!
//! Every request goes through [`ManagementClient::send`], which refuses any URL whose origin is
//! not `O365_MANAGE_URL` (a `contentUri` or `NextPageUri` pointing elsewhere never receives a
//! token), adds `PublisherIdentifier` (Office 365 Management Activity API reference: the
//! `PublisherIdentifier` parameter of every operation, and "API throttling"), waits for the
//! tenant's shared quota (a content fetch is admitted against it beforehand, without waiting,
//! by [`crate::pipeline::scheduling`]), never follows redirects, retries once with a new token after a
//! 401, and turns Microsoft's error bodies into [`ApiError`] classified by `error.code` (same
//! reference, "Errors").

use crate::domain::{ContentType, TenantId};
use crate::microsoft::notification::RawContent;
use crate::microsoft::tokens::{TokenError, TokenProvider};
use crate::ops::metrics::Metrics;
use crate::store::quota::Hit;
use crate::store::Store;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Management API answered HTTP {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The request or its body did not make it; the cause (with any URL removed: it names the
    /// tenant and content) is the source.
    #[error("Management API could not be reached ({during}): {source}")]
    Transport {
        during: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no token: {0}")]
    Token(#[from] TokenError),
    #[error("refused to send a token to {0}: not the Management API origin")]
    ForeignUrl(String),
    #[error("unreadable response: {0}")]
    Body(String),
}

/// What a caller should do about an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later (after at least the given delay when Microsoft said so).
    Retry(Option<Duration>),
    /// The subscription is missing or disabled (AF20022/AF20023): start it, then retry.
    StartSubscription,
    /// Will never succeed; record why and give up on this item.
    GiveUp,
}

impl ApiError {
    /// A transport failure from reqwest, without the URL.
    pub fn transport(during: &'static str, e: reqwest::Error) -> ApiError {
        ApiError::Transport {
            during,
            source: Box::new(e.without_url()),
        }
    }

    /// Microsoft's error code, or a short stand-in for non-API failures.
    pub fn code(&self) -> &str {
        match self {
            ApiError::Api { code, .. } => code,
            ApiError::Transport { .. } => "transport",
            ApiError::Token(_) => "token",
            ApiError::ForeignUrl(_) => "foreign_url",
            ApiError::Body(_) => "body",
        }
    }

    /// AF20030/AF20055: the listing window is outside what Microsoft accepts (more than 24
    /// hours wide, or beyond 7 days back): recompute it rather than retry it as it is.
    pub fn is_window_error(&self) -> bool {
        matches!(self, ApiError::Api { code, .. } if code == "AF20030" || code == "AF20055")
    }

    /// AF20021: Microsoft could not validate the webhook when starting a subscription.
    pub fn is_webhook_unvalidated(&self) -> bool {
        matches!(self, ApiError::Api { code, .. } if code == "AF20021")
    }

    /// A bounded metric label for one of Microsoft's error codes: the codes a dead letter
    /// commonly carries by name, the tenant-level ones as `tenant`; `None` for any other.
    pub fn code_label(code: &str) -> Option<&'static str> {
        Some(match code {
            "AF20050" => "AF20050",
            "AF20051" => "AF20051",
            "AF20052" => "AF20052",
            "AF10001" => "AF10001",
            "AF20010" | "AF20011" | "AF20012" | "AF20013" => "tenant",
            "AF429" => "AF429",
            _ => return None,
        })
    }

    pub fn is_throttle(&self) -> bool {
        matches!(self, ApiError::Api { code, status, .. } if code == "AF429" || (*status == 429 && code.is_empty()))
    }

    /// Classifies by `error.code`, not by status: AF429 arrives as 429 *and* as 403.
    pub fn disposition(&self) -> Disposition {
        match self {
            ApiError::Api {
                status,
                code,
                retry_after,
                ..
            } => match code.as_str() {
                "AF429" => Disposition::Retry(*retry_after),
                "AF50000" | "AF50005" | "AF50006" | "AF20031" => Disposition::Retry(*retry_after),
                "AF20022" | "AF20023" => Disposition::StartSubscription,
                "AF20050" | "AF20051" | "AF20052" | "AF20020" | "AF10001" | "AF20010"
                | "AF20011" | "AF20012" | "AF20013" => Disposition::GiveUp,
                _ if *status == 429 || *status >= 500 || *status == 401 || *status == 408 => {
                    Disposition::Retry(*retry_after)
                }
                _ => Disposition::GiveUp,
            },
            ApiError::Transport { .. } | ApiError::Body(_) => Disposition::Retry(None),
            ApiError::Token(e) if e.is_transient() => Disposition::Retry(None),
            // A refused credential may be fixed by an operator (consent, certificate): retry
            // with backoff; the attempt limit sends it to the dead-letter queue if not.
            ApiError::Token(_) => Disposition::Retry(None),
            ApiError::ForeignUrl(_) => Disposition::GiveUp,
        }
    }
}

/// How long an error body may take to arrive before it is ignored.
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest listing page or subscription list read (bytes); Microsoft's pages hold a few
/// hundred entries of ~400 bytes.
const MAX_LISTING_BODY: usize = 16 * 1024 * 1024;

/// The most of an error body read: enough for any real one; a larger body is cut (and its
/// code found by [`scan_error_code`]).
const MAX_ERROR_BODY: usize = 256 * 1024;

/// The longest error message kept from a Management API answer (bytes).
const MAX_ERROR_MESSAGE: usize = 512;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}
#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// One entry of `subscriptions/list` (and the answer of `/start`).
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub content_type: String,
    pub status: String,
    #[serde(default)]
    pub webhook: Option<WebhookInfo>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookInfo {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub expiration: Option<String>,
    // authId is deliberately not kept: it is a secret and we know ours.
}

pub struct ManagementClient {
    http: reqwest::Client,
    base: String,
    origin: url::Origin,
    tokens: Arc<TokenProvider>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    publisher_id: Option<TenantId>,
    quota_per_minute: u32,
}

impl ManagementClient {
    pub fn new(
        settings: &crate::config::Settings,
        http: reqwest::Client,
        tokens: Arc<TokenProvider>,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
    ) -> ManagementClient {
        let origin = Url::parse(&settings.manage_url)
            .expect("validated by config")
            .origin();
        ManagementClient {
            http,
            base: settings.manage_url.to_string(),
            origin,
            tokens,
            store,
            metrics,
            publisher_id: settings.publisher_id.clone(),
            quota_per_minute: settings.quota_per_minute,
        }
    }

    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// Whether `url` has exactly the Management API's origin (scheme, host and port).
    pub fn is_management_url(&self, url: &Url) -> bool {
        url.origin() == self.origin
    }

    fn feed_url(&self, tenant: &TenantId, path: &str) -> String {
        format!("{}/api/v1.0/{}/activity/feed/{}", self.base, tenant, path)
    }

    /// Waits until the tenant's shared budget allows one more request.
    async fn acquire_quota(&self, tenant: &TenantId) {
        loop {
            match self.store.quota().hit(tenant, self.quota_per_minute).await {
                Ok(Hit::Admitted) => return,
                Ok(Hit::Wait(wait)) => {
                    tracing::debug!(tenant_id = %tenant, wait_ms = wait.as_millis() as u64, "Tenant quota reached; waiting.");
                    tokio::time::sleep(
                        wait.clamp(Duration::from_millis(10), Duration::from_secs(60)),
                    )
                    .await;
                }
                // Without Redis the quota cannot be shared; Microsoft's AF429 still backs us off.
                Err(_) => return,
            }
        }
    }

    /// Sends an authenticated request for `tenant`. Returns the successful response, or the
    /// classified error.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        tenant: &TenantId,
        call: &'static str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, ApiError> {
        self.send_counted(method, url, tenant, call, body, false)
            .await
    }

    /// [`ManagementClient::send`]; when `counted`, the first request was already counted in the
    /// tenant's budget and goes out without asking it again (a second one, after a 401, asks).
    async fn send_counted(
        &self,
        method: reqwest::Method,
        url: &str,
        tenant: &TenantId,
        call: &'static str,
        body: Option<serde_json::Value>,
        mut counted: bool,
    ) -> Result<reqwest::Response, ApiError> {
        let mut url =
            Url::parse(url).map_err(|_| ApiError::ForeignUrl("an unparseable URL".into()))?;
        if !self.is_management_url(&url) {
            return Err(ApiError::ForeignUrl(url.origin().ascii_serialization()));
        }
        if !url
            .query_pairs()
            .any(|(k, _)| k.eq_ignore_ascii_case("PublisherIdentifier"))
        {
            let publisher = self.publisher_id.as_ref().unwrap_or(tenant).to_string();
            url.query_pairs_mut()
                .append_pair("PublisherIdentifier", &publisher);
        }
        let mut retried_auth = false;
        loop {
            if !std::mem::take(&mut counted) {
                self.acquire_quota(tenant).await;
            }
            let token = self.tokens.get(tenant).await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token.token);
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.metrics
                        .management_requests
                        .with_label_values(&[call, "error"])
                        .inc();
                    return Err(ApiError::transport("sending the request", e));
                }
            };
            let status = resp.status();
            let class = match status.as_u16() {
                200..=299 => "2xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "other",
            };
            self.metrics
                .management_requests
                .with_label_values(&[call, class])
                .inc();
            if status.is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes =
                tokio::time::timeout(ERROR_BODY_TIMEOUT, read_limited(resp, MAX_ERROR_BODY))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
            // Microsoft's error text is kept short: it travels into logs and dead-letter
            // headers, and a 64 KiB message must not reach either whole.
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (
                    crate::domain::text::capped(&b.error.code, 64).into_owned(),
                    crate::domain::text::capped(&b.error.message, MAX_ERROR_MESSAGE).into_owned(),
                ),
                Err(_) => (
                    scan_error_code(&bytes),
                    crate::domain::text::capped(
                        &String::from_utf8_lossy(&bytes),
                        MAX_ERROR_MESSAGE,
                    )
                    .into_owned(),
                ),
            };
            let err = ApiError::Api {
                status: status.as_u16(),
                code,
                message,
                retry_after,
            };
            if err.is_throttle() {
                self.metrics.throttled.inc();
            }
            // A 401 that is not about the tenant or role means the token is no longer good:
            // drop it everywhere and try once more with a new one.
            if status.as_u16() == 401
                && !retried_auth
                && !matches!(err.disposition(), Disposition::GiveUp)
            {
                retried_auth = true;
                tracing::info!(tenant_id = %tenant, "Management API refused the token; fetching a new one.");
                self.tokens.invalidate(tenant, &token.token).await;
                continue;
            }
            return Err(err);
        }
    }

    /// `GET {contentUri}`: the response whose body is the blob (streamed by the caller).
    pub async fn fetch_content(
        &self,
        tenant: &TenantId,
        content_uri: &str,
    ) -> Result<reqwest::Response, ApiError> {
        self.send(reqwest::Method::GET, content_uri, tenant, "content", None)
            .await
    }

    /// `GET {contentUri}` for a fetch the [`crate::pipeline::scheduling::Scheduler`] admitted: its request
    /// is already counted in the tenant's budget, so it is sent at once (a worker never waits
    /// for the budget; see the scheduling module).
    pub async fn fetch_admitted_content(
        &self,
        tenant: &TenantId,
        content_uri: &str,
    ) -> Result<reqwest::Response, ApiError> {
        self.send_counted(
            reqwest::Method::GET,
            content_uri,
            tenant,
            "content",
            None,
            true,
        )
        .await
    }

    /// `subscriptions/content` for one window, following `NextPageUri` (or `NextPageUrl`) to
    /// the end (Office 365 Management Activity API reference, "List available content" and its
    /// "Pagination").
    pub async fn list_content(
        &self,
        tenant: &TenantId,
        ct: ContentType,
        start: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<RawContent>, ApiError> {
        let fmt = "%Y-%m-%dT%H:%M:%S";
        let mut url =
            Url::parse(&self.feed_url(tenant, "subscriptions/content")).expect("valid base");
        url.query_pairs_mut()
            .append_pair("contentType", ct.as_str())
            .append_pair("startTime", &start.format(fmt).to_string())
            .append_pair("endTime", &end.format(fmt).to_string());
        let mut next = Some(url.to_string());
        let mut all = Vec::new();
        let mut pages = 0;
        while let Some(page_url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                return Err(ApiError::Body(
                    "more than 10,000 pages in one window".into(),
                ));
            }
            let resp = self
                .send(reqwest::Method::GET, &page_url, tenant, "list", None)
                .await?;
            next = ["NextPageUri", "NextPageUrl"]
                .iter()
                .find_map(|h| resp.headers().get(*h))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .filter(|s| !s.is_empty());
            let bytes = read_body(resp).await?;
            let page: Vec<RawContent> =
                serde_json::from_slice(&bytes).map_err(|e| ApiError::Body(e.to_string()))?;
            all.extend(page);
        }
        Ok(all)
    }

    /// `subscriptions/start` with our webhook. AF20024 (already enabled, no change) is success.
    pub async fn start_subscription(
        &self,
        tenant: &TenantId,
        ct: ContentType,
        webhook: Option<(&str, &str)>,
    ) -> Result<(), ApiError> {
        let mut url =
            Url::parse(&self.feed_url(tenant, "subscriptions/start")).expect("valid base");
        url.query_pairs_mut()
            .append_pair("contentType", ct.as_str());
        let body = webhook.map(|(address, auth_id)| {
            serde_json::json!({"webhook": {"address": address, "authId": auth_id, "expiration": ""}})
        });
        match self
            .send(reqwest::Method::POST, url.as_str(), tenant, "start", body)
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::Api { code, .. }) if code == "AF20024" => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn stop_subscription(
        &self,
        tenant: &TenantId,
        ct: ContentType,
    ) -> Result<(), ApiError> {
        let mut url = Url::parse(&self.feed_url(tenant, "subscriptions/stop")).expect("valid base");
        url.query_pairs_mut()
            .append_pair("contentType", ct.as_str());
        self.send(reqwest::Method::POST, url.as_str(), tenant, "stop", None)
            .await
            .map(|_| ())
    }

    pub async fn list_subscriptions(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<Subscription>, ApiError> {
        let url = self.feed_url(tenant, "subscriptions/list");
        let resp = self
            .send(
                reqwest::Method::GET,
                &url,
                tenant,
                "list_subscriptions",
                None,
            )
            .await?;
        let bytes = read_body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Body(e.to_string()))
    }
}

/// Microsoft's error code from an error body that is not whole JSON (cut at
/// [`MAX_ERROR_BODY`], or malformed): the first `"code":"…"` of letters and digits.
fn scan_error_code(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    let Some(at) = text.find("\"code\"") else {
        return String::new();
    };
    let rest = text[at + 6..].trim_start();
    let Some(rest) = rest.strip_prefix(':') else {
        return String::new();
    };
    let Some(rest) = rest.trim_start().strip_prefix('"') else {
        return String::new();
    };
    rest.chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(16)
        .collect()
}

/// A listing or subscription-list body, bounded in size (the client's read timeout bounds
/// each read).
async fn read_body(resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    let bytes = read_limited(resp, MAX_LISTING_BODY + 1)
        .await
        .map_err(|e| ApiError::transport("reading the response", e))?;
    if bytes.len() > MAX_LISTING_BODY {
        return Err(ApiError::Body(format!(
            "response larger than {MAX_LISTING_BODY} bytes"
        )));
    }
    Ok(bytes)
}

async fn read_limited(resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, reqwest::Error> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// A failure that is the tenant's, not the blob's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFailure {
    /// Microsoft's error code, or `token` for a refused token: a bounded word.
    pub code: String,
    /// What failed, for the operator.
    pub reason: String,
}

impl ApiError {
    /// Whether this is a tenant-level failure: a token Entra refuses for a reason retrying will not
    /// fix (not a network error, a 5xx or throttling); a 401 from the Management API (the client
    /// already fetched a fresh token and retried once); AF10001 (role missing); AF20010–AF20013
    /// (tenant mismatch, missing, misconfigured, not a GUID). Content-level codes (AF20050–AF20052)
    /// and everything transient are not.
    pub fn tenant_failure(&self) -> Option<TenantFailure> {
        match self {
            ApiError::Token(t) if !t.is_transient() => Some(TenantFailure {
                code: "token".into(),
                reason: format!("no token for the tenant: {t}"),
            }),
            ApiError::Api {
                status,
                code,
                message,
                ..
            } => {
                let tenant_code = matches!(
                    code.as_str(),
                    "AF10001" | "AF20010" | "AF20011" | "AF20012" | "AF20013"
                );
                let content_code = matches!(code.as_str(), "AF20050" | "AF20051" | "AF20052");
                if tenant_code {
                    Some(TenantFailure {
                        code: code.clone(),
                        reason: format!("Management API answered {code}: {message}"),
                    })
                } else if *status == 401 && !content_code {
                    Some(TenantFailure {
                        code: "token".into(),
                        reason: format!(
                            "the Management API refused a fresh token (HTTP 401 {code}): {message}"
                        ),
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// [`Self::tenant_failure`] of a call about `content_type`, leaving out AF10001 on `DLP.All`: that
    /// one may be the DLP role alone (see [`crate::tenancy::health`]); a caller without a cheap way to tell
    /// (the reconciler) lets the tenant's other content types decide.
    pub fn tenant_failure_for(&self, content_type: ContentType) -> Option<TenantFailure> {
        self.tenant_failure()
            .filter(|f| !(f.code == "AF10001" && content_type == ContentType::Dlp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: &str) -> ApiError {
        ApiError::Api {
            status,
            code: code.into(),
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn the_error_code_is_found_in_a_cut_error_body() {
        let body = format!(
            r#"{{"error":{{"code": "AF50000","message":"{}"#,
            "x".repeat(100)
        );
        assert_eq!(scan_error_code(body.as_bytes()), "AF50000");
        assert_eq!(scan_error_code(b"<html>"), "");
    }

    #[test]
    fn throttling_is_recognised_by_code_whatever_the_status() {
        assert!(api(429, "AF429").is_throttle());
        assert!(api(403, "AF429").is_throttle());
        assert_eq!(api(403, "AF429").disposition(), Disposition::Retry(None));
        assert_eq!(api(403, "AF10001").disposition(), Disposition::GiveUp);
    }

    #[test]
    fn errors_are_classified_as_the_reference_says() {
        assert_eq!(api(500, "AF50000").disposition(), Disposition::Retry(None));
        assert_eq!(api(503, "").disposition(), Disposition::Retry(None));
        assert_eq!(api(400, "AF20051").disposition(), Disposition::GiveUp);
        assert_eq!(api(400, "AF20050").disposition(), Disposition::GiveUp);
        assert_eq!(
            api(400, "AF20022").disposition(),
            Disposition::StartSubscription
        );
        assert_eq!(api(401, "AF20010").disposition(), Disposition::GiveUp);
        assert_eq!(
            ApiError::Transport {
                during: "reading the response",
                source: "reset".into()
            }
            .disposition(),
            Disposition::Retry(None)
        );
    }

    #[test]
    fn window_validation_and_label_codes_are_named_in_one_place() {
        assert!(api(400, "AF20030").is_window_error());
        assert!(api(400, "AF20055").is_window_error());
        assert!(!api(400, "AF20051").is_window_error());
        assert!(api(400, "AF20021").is_webhook_unvalidated());
        assert!(!api(400, "AF20022").is_webhook_unvalidated());
        assert_eq!(ApiError::code_label("AF20012"), Some("tenant"));
        assert_eq!(ApiError::code_label("AF20051"), Some("AF20051"));
        assert_eq!(ApiError::code_label("AF99999"), None);
    }

    #[test]
    fn tenant_level_failures_are_told_from_the_blobs_own() {
        for code in ["AF10001", "AF20010", "AF20011", "AF20012", "AF20013"] {
            let status = if code == "AF20010" || code == "AF10001" {
                401
            } else {
                400
            };
            assert_eq!(
                api(status, code).tenant_failure().map(|f| f.code),
                Some(code.to_string())
            );
        }
        // A token refused after the retry with a fresh one.
        assert_eq!(
            api(401, "").tenant_failure().map(|f| f.code),
            Some("token".into())
        );
        let refused = ApiError::Token(TokenError::Rejected {
            status: 400,
            error: "invalid_client".into(),
            description: "AADSTS7000229: missing service principal".into(),
        });
        assert_eq!(
            refused.tenant_failure().map(|f| f.code),
            Some("token".into())
        );
        // Content-level, throttling, Microsoft's own trouble and a busy Entra are not.
        for e in [
            api(400, "AF20050"),
            api(400, "AF20051"),
            api(400, "AF20052"),
            api(429, "AF429"),
            api(403, "AF429"),
            api(500, "AF50000"),
            api(400, "AF20022"),
            ApiError::Token(TokenError::Rejected {
                status: 503,
                error: "temporarily_unavailable".into(),
                description: String::new(),
            }),
        ] {
            assert_eq!(e.tenant_failure(), None, "{e}");
        }
        // AF10001 on DLP.All alone may be the DLP role only.
        assert_eq!(
            api(401, "AF10001").tenant_failure_for(ContentType::Dlp),
            None
        );
        assert!(api(401, "AF10001")
            .tenant_failure_for(ContentType::Exchange)
            .is_some());
        assert!(api(401, "AF20011")
            .tenant_failure_for(ContentType::Dlp)
            .is_some());
    }
}
