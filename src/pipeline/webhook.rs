//! `POST /webhook`: where Microsoft's notifications enter (Microsoft's "Get started" guide,
//! "Receiving notifications"; README "Data path").
//!
//! A request is untrusted until every check passed: the `Webhook-AuthID` (constant time), the
//! media type, the size and the time its body takes to arrive, the JSON shape, and every blob
//! ([`crate::microsoft::notification`]: client id, content type, content id, the exact `contentUri`; here:
//! a served tenant). Only then are the blobs handed to the [`WorkQueue`]; `200` is answered only
//! after RabbitMQ confirmed every one. One bad blob rejects the whole request and enqueues
//! nothing. The same blob named twice in one request is enqueued once.

use crate::broker::BrokerError;
use crate::domain::secret::{constant_time_eq, Secret};
use crate::domain::TenantId;
use crate::microsoft::notification::{parse_notification_body, BlobRejection, ContentRules};
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::LimitedWarnings;
use crate::pipeline::work_queue::WorkQueue;
use crate::store::Store;
use crate::tenancy::tenants::Tenants;
use actix_web::http::header::HeaderName;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Microsoft's notification bodies are small; anything above this is refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// What the webhook needs.
pub struct Webhook {
    pub auth_id: Secret<String>,
    pub rules: ContentRules,
    pub tenants: Arc<Tenants>,
    pub queue: Arc<WorkQueue>,
    pub metrics: Arc<Metrics>,
    /// Where "last notification received" is kept for the status page.
    pub store: Arc<Store>,
    /// `O365_WEBHOOK_BODY_TIMEOUT`: how long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// Why a request was refused; also the metric's `reason` label. The `Display` text is what
/// Microsoft (or whoever sent the request) reads; a broker failure stays in the `source`.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("missing or wrong Webhook-AuthID")]
    Auth,
    #[error("expected Content-Type application/json")]
    MediaType,
    #[error("body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("request body did not arrive in time")]
    SlowBody,
    #[error("malformed body: {}", crate::domain::text::capped(.0, 300))]
    Malformed(String),
    #[error("blob {index}: {}", .rejection.detail)]
    Blob {
        index: usize,
        rejection: BlobRejection,
    },
    #[error("work queue unavailable; retry later")]
    Unavailable(#[source] BrokerError),
}

impl Rejection {
    fn label(&self) -> &'static str {
        match self {
            Rejection::Auth => "auth",
            Rejection::MediaType => "media_type",
            Rejection::TooLarge => "too_large",
            Rejection::SlowBody => "slow_body",
            Rejection::Malformed(_) => "malformed",
            Rejection::Blob { rejection, .. } => rejection.reason,
            Rejection::Unavailable(_) => "unavailable",
        }
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        match self {
            Rejection::Auth => StatusCode::UNAUTHORIZED,
            Rejection::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Rejection::Malformed(_) | Rejection::Blob { .. } => StatusCode::BAD_REQUEST,
            // Microsoft retries a notification that was not answered 200.
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(serde_json::json!({ "error": self.to_string() }))
    }
}

/// Wrong-auth warnings: one per [`LimitedWarnings::EVERY`], the rest counted.
static AUTH_WARNINGS: LimitedWarnings = LimitedWarnings::new();

/// `Webhook-AuthID` and `Webhook-ValidationCode`, as header names made once (a `&str` name is
/// parsed again on every lookup).
static AUTH_ID: HeaderName = HeaderName::from_static("webhook-authid");
static VALIDATION_CODE: HeaderName = HeaderName::from_static("webhook-validationcode");

fn authorised(req: &HttpRequest, webhook: &Webhook) -> bool {
    match req.headers().get(&AUTH_ID) {
        Some(v) => constant_time_eq(v.as_bytes(), webhook.auth_id.expose().as_bytes()),
        None => false,
    }
}

/// Microsoft sends `application/json; utf-8` (sic), so only the media type itself is checked.
fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<web::BytesMut, Rejection> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(Rejection::TooLarge);
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Rejection::Malformed(e.to_string()))?;
        if body.len() + chunk.len() > MAX_BODY {
            return Err(Rejection::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    webhook: &Webhook,
) -> Result<HttpResponse, Rejection> {
    if !authorised(req, webhook) {
        return Err(Rejection::Auth);
    }
    let validation_header = req.headers().get(&VALIDATION_CODE).is_some();
    if !is_json(req) && !validation_header {
        return Err(Rejection::MediaType);
    }
    // A slow sender must not hold a connection and a buffer for long (slowloris).
    let body = tokio::time::timeout(webhook.body_timeout, read_body(req, payload))
        .await
        .map_err(|_| Rejection::SlowBody)??;
    // A validation request (sent by /subscriptions/start) has the header and/or a
    // `{"validationCode": …}` object body: answer 200 and enqueue nothing. A notification is an
    // array; an array that comes with the validation header is neither — refuse it rather than
    // drop its blobs silently.
    let first = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .copied()
        .unwrap_or(b' ');
    if first != b'[' {
        let is_validation = validation_header
            || serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|v| v.get("validationCode").is_some());
        if !is_validation {
            return Err(Rejection::Malformed(
                "expected an array of content notifications".into(),
            ));
        }
        tracing::info!("Answered a webhook validation request.");
        webhook
            .metrics
            .notifications
            .with_label_values(&["accepted", "validation"])
            .inc();
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "validated" })));
    }
    if validation_header {
        return Err(Rejection::Malformed(
            "a validation request (Webhook-ValidationCode) must not carry notifications".into(),
        ));
    }
    let entries = parse_notification_body(&body).map_err(Rejection::Malformed)?;
    let entries_len = entries.len();
    let mut items = Vec::with_capacity(entries_len);
    let mut seen = HashSet::new();
    for (index, raw) in entries.into_iter().enumerate() {
        // An unserved tenant is named as such, whatever else is wrong with the blob.
        if let Some(tenant) = raw
            .tenant_id
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok())
        {
            if !webhook.tenants.is_served(&tenant).await {
                return Err(Rejection::Blob {
                    index,
                    rejection: BlobRejection {
                        reason: "tenant",
                        detail: format!("tenant {tenant} is not served"),
                    },
                });
            }
        }
        let item = webhook
            .rules
            .notification(raw)
            .map_err(|rejection| Rejection::Blob { index, rejection })?;
        // A single blob needs no set (nothing allocated for the common case).
        if entries_len == 1 || seen.insert((item.tenant_id.clone(), item.content_id.clone())) {
            items.push(item);
        }
    }
    if !items.is_empty() {
        webhook
            .queue
            .enqueue(&items)
            .await
            .map_err(Rejection::Unavailable)?;
    }
    let accepted = items.len();
    // For the status page: counted in memory on the answer path and written by the store at
    // most NOTIFIED_FLUSH later (no Redis round trip and no task per request).
    for item in items {
        tracing::debug!(tenant_id = %item.tenant_id, content_type = %item.content_type, content_id = %item.content_id, "Blob enqueued.");
        webhook
            .store
            .count_notified(item.tenant_id, item.content_type, 1);
    }
    webhook
        .metrics
        .notifications
        .with_label_values(&["accepted", "ok"])
        .inc();
    // `{"accepted":N}`, written directly (no JSON value built per request).
    Ok(HttpResponse::Ok()
        .content_type(actix_web::http::header::ContentType::json())
        .body(format!("{{\"accepted\":{accepted}}}")))
}

/// The actix handler.
pub async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    webhook: web::Data<Webhook>,
) -> HttpResponse {
    // A random id (thread-local generator: no system call per request, unlike a UUID).
    let span = tracing::info_span!("webhook", otel.name = "webhook.receive", request_id = %format_args!("{:016x}", rand::random::<u64>()));
    respond(req, payload, webhook).instrument(span).await
}

async fn respond(
    req: HttpRequest,
    payload: web::Payload,
    webhook: web::Data<Webhook>,
) -> HttpResponse {
    match handle(&req, payload, &webhook).await {
        Ok(r) => r,
        Err(rejection) => {
            webhook
                .metrics
                .notifications
                .with_label_values(&["rejected", rejection.label()])
                .inc();
            match &rejection {
                Rejection::Unavailable(e) => {
                    tracing::error!(error = %e, "Work queue unavailable; answered 503 so Microsoft retries.")
                }
                Rejection::Blob { index, rejection } => {
                    tracing::warn!(blob = index, reason = %rejection.detail, "Notification rejected.")
                }
                // Anyone can post without the auth id: a flood must not flood the log too.
                // The metric counts each one; the log says so at most once per interval.
                Rejection::Auth => {
                    if let Some(suppressed) = AUTH_WARNINGS.allow() {
                        tracing::warn!(
                            reason = "auth",
                            suppressed,
                            "Webhook request rejected: missing or wrong Webhook-AuthID (one line per 10 s at most; suppressed = those not logged since)."
                        )
                    }
                }
                other => tracing::warn!(reason = other.label(), "Webhook request rejected."),
            }
            rejection.error_response()
        }
    }
}
