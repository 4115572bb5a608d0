//! `POST /webhook`: where Microsoft's notifications enter (reference §6, contract.md).
//!
//! A request is untrusted until every check passed: the `Webhook-AuthID` (constant time), the
//! media type, the size, the JSON shape, and every blob (client id, served tenant, configured
//! content type, and a `contentUri` that is exactly the Management API's URL for that tenant and
//! content id). Only then are the blobs published to the work queue; `200` is answered only
//! after RabbitMQ confirmed every one. One bad blob rejects the whole request and enqueues
//! nothing.

use crate::app::Relay;
use crate::broker::{header, json_properties, OutMessage};
use crate::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use crate::secret::constant_time_eq;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use lapin::types::FieldTable;
use serde::Deserialize;
use tracing::Instrument;

/// Microsoft's notification bodies are small; anything above this is refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// A notification entry as Microsoft sends it (reference §6). Strings until validated.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawNotification {
    tenant_id: Option<String>,
    client_id: Option<String>,
    content_type: Option<String>,
    content_id: Option<String>,
    content_uri: Option<String>,
    content_created: Option<String>,
    content_expiration: Option<String>,
}

/// Why a request was refused; also the metric's `reason` label.
#[derive(Debug)]
pub enum Rejection {
    Auth,
    MediaType,
    TooLarge,
    Malformed(String),
    Blob {
        index: usize,
        reason: &'static str,
        detail: String,
    },
    Unavailable(String),
}

impl Rejection {
    fn label(&self) -> &'static str {
        match self {
            Rejection::Auth => "auth",
            Rejection::MediaType => "media_type",
            Rejection::TooLarge => "too_large",
            Rejection::Malformed(_) => "malformed",
            Rejection::Blob { reason, .. } => reason,
            Rejection::Unavailable(_) => "unavailable",
        }
    }

    fn response(&self) -> HttpResponse {
        let (mut builder, msg) = match self {
            Rejection::Auth => (
                HttpResponse::Unauthorized(),
                "missing or wrong Webhook-AuthID".to_string(),
            ),
            Rejection::MediaType => (
                HttpResponse::UnsupportedMediaType(),
                "expected Content-Type application/json".into(),
            ),
            Rejection::TooLarge => (
                HttpResponse::PayloadTooLarge(),
                format!("body larger than {MAX_BODY} bytes"),
            ),
            Rejection::Malformed(m) => (HttpResponse::BadRequest(), format!("malformed body: {m}")),
            Rejection::Blob { index, detail, .. } => (
                HttpResponse::BadRequest(),
                format!("blob {index}: {detail}"),
            ),
            Rejection::Unavailable(_) => (
                HttpResponse::ServiceUnavailable(),
                "work queue unavailable; retry later".into(),
            ),
        };
        builder.json(serde_json::json!({ "error": msg }))
    }
}

fn authorised(req: &HttpRequest, relay: &Relay) -> bool {
    match req.headers().get("Webhook-AuthID") {
        Some(v) => constant_time_eq(
            v.as_bytes(),
            relay.settings.webhook_auth_id.expose().as_bytes(),
        ),
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

fn blob_err(index: usize, reason: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection::Blob {
        index,
        reason,
        detail: detail.into(),
    }
}

/// Turns one notification entry into a work item, or says precisely why not. Pure except for
/// the served-tenant lookup.
pub async fn validate_blob(
    relay: &Relay,
    index: usize,
    n: RawNotification,
) -> Result<WorkItem, Rejection> {
    let field = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| blob_err(index, "malformed", format!("{name} is missing")))
    };
    let client_id = field(n.client_id, "clientId")?;
    if !client_id.eq_ignore_ascii_case(&relay.settings.client_id) {
        return Err(blob_err(
            index,
            "client_id",
            "clientId is not this application's",
        ));
    }
    let tenant = TenantId::parse(&field(n.tenant_id, "tenantId")?)
        .map_err(|e| blob_err(index, "tenant", e))?;
    if !relay.tenants.is_served(&tenant).await {
        return Err(blob_err(
            index,
            "tenant",
            format!("tenant {tenant} is not served"),
        ));
    }
    let content_type: ContentType = field(n.content_type, "contentType")?
        .parse()
        .map_err(|e: String| blob_err(index, "content_type", e))?;
    if !relay.settings.content_types.contains(&content_type) {
        return Err(blob_err(
            index,
            "content_type",
            format!("content type {content_type} is not configured"),
        ));
    }
    let content_id = ContentId::parse(&field(n.content_id, "contentId")?)
        .map_err(|e| blob_err(index, "malformed", e))?;
    let uri = field(n.content_uri, "contentUri")?;
    check_content_uri(relay, &uri, &tenant, &content_id)
        .map_err(|d| blob_err(index, "content_uri", d))?;
    Ok(WorkItem {
        tenant_id: tenant,
        content_type,
        content_id,
        content_uri: uri,
        content_created: n.content_created,
        content_expiration: n.content_expiration,
        source: Source::Webhook,
    })
}

/// The `contentUri` must be exactly `{O365_MANAGE_URL}/api/v1.0/{tenant}/activity/feed/audit/{contentId}`:
/// same origin, this tenant, this content id, no credentials, query or fragment. Anything else
/// could make us send the tenant's token to someone else.
pub fn check_content_uri(
    relay: &Relay,
    uri: &str,
    tenant: &TenantId,
    content_id: &ContentId,
) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|_| "contentUri is not a URL".to_string())?;
    if !relay.management.is_management_url(&url) {
        return Err("contentUri does not point at the Management API".into());
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err("contentUri has credentials, a query or a fragment".into());
    }
    let segments: Vec<&str> = url.path().split('/').collect();
    let ok = matches!(
        segments.as_slice(),
        ["", "api", "v1.0", t, "activity", "feed", "audit", c]
            if TenantId::parse(t).is_ok_and(|t| &t == tenant)
                && decode_dollar(c) == content_id.as_str()
    );
    if ok {
        Ok(())
    } else {
        Err("contentUri path is not /api/v1.0/{tenantId}/activity/feed/audit/{contentId} for this blob".into())
    }
}

/// Content ids hold `$`, which a sender may percent-encode.
fn decode_dollar(s: &str) -> String {
    s.replace("%24", "$")
        .replace("%24".to_ascii_lowercase().as_str(), "$")
}

/// The headers naming a blob's tenant and content type, on work items and on records alike.
pub fn blob_headers(item: &WorkItem) -> FieldTable {
    let mut headers = FieldTable::default();
    header(&mut headers, "o365-tenant-id", item.tenant_id.as_str());
    header(
        &mut headers,
        "o365-content-type",
        item.content_type.as_str(),
    );
    headers
}

/// Serialises work items into work-queue messages.
pub fn work_messages(items: &[WorkItem]) -> Vec<(Vec<u8>, lapin::BasicProperties)> {
    items
        .iter()
        .map(|item| {
            let mut headers = blob_headers(item);
            header(
                &mut headers,
                "o365-source",
                if item.source == Source::Webhook {
                    "webhook"
                } else {
                    "reconcile"
                },
            );
            let body = serde_json::to_vec(item).expect("serialisable");
            (
                body,
                json_properties(item.content_id.as_str()).with_headers(headers),
            )
        })
        .collect()
}

/// Publishes work items to the work queue and waits for every confirm.
pub async fn enqueue(relay: &Relay, items: &[WorkItem]) -> Result<(), crate::broker::BrokerError> {
    let messages = work_messages(items);
    let work = relay.broker.names().work.clone();
    let out: Vec<OutMessage<'_>> = messages
        .iter()
        .map(|(body, props)| OutMessage {
            exchange: "",
            routing_key: &work,
            body,
            properties: props.clone(),
        })
        .collect();
    relay.broker.publish_all(out).await
}

async fn handle(
    req: &HttpRequest,
    payload: web::Payload,
    relay: &Relay,
) -> Result<HttpResponse, Rejection> {
    if !authorised(req, relay) {
        return Err(Rejection::Auth);
    }
    let validation_header = req.headers().get("Webhook-ValidationCode").is_some();
    if !is_json(req) && !validation_header {
        return Err(Rejection::MediaType);
    }
    let body = read_body(req, payload).await?;
    // Notifications are arrays and are parsed straight into their type; a validation request
    // (sent by /subscriptions/start) has the header or a `validationCode` object body: answer
    // 200 and enqueue nothing.
    let entries: Option<Vec<RawNotification>> = if validation_header {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(entries) => Some(entries),
            Err(e) => {
                let value: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Rejection::Malformed(e.to_string()))?;
                if value.get("validationCode").is_none() {
                    return Err(Rejection::Malformed(format!(
                        "expected an array of content notifications ({e})"
                    )));
                }
                None
            }
        }
    };
    let Some(entries) = entries else {
        tracing::info!("Answered a webhook validation request.");
        relay
            .metrics
            .notifications
            .with_label_values(&["accepted", "validation"])
            .inc();
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "validated" })));
    };
    let mut items = Vec::with_capacity(entries.len());
    for (i, n) in entries.into_iter().enumerate() {
        items.push(validate_blob(relay, i, n).await?);
    }
    if !items.is_empty() {
        enqueue(relay, &items)
            .await
            .map_err(|e| Rejection::Unavailable(e.to_string()))?;
    }
    for item in &items {
        tracing::debug!(tenant_id = %item.tenant_id, content_type = %item.content_type, content_id = %item.content_id, "Blob enqueued.");
    }
    relay
        .metrics
        .notifications
        .with_label_values(&["accepted", "ok"])
        .inc();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "accepted": items.len() })))
}

/// The actix handler.
pub async fn webhook(
    req: HttpRequest,
    payload: web::Payload,
    relay: web::Data<Relay>,
) -> HttpResponse {
    let span = tracing::info_span!("webhook", request_id = %uuid::Uuid::new_v4());
    respond(req, payload, relay).instrument(span).await
}

async fn respond(req: HttpRequest, payload: web::Payload, relay: web::Data<Relay>) -> HttpResponse {
    match handle(&req, payload, &relay).await {
        Ok(r) => r,
        Err(rejection) => {
            relay
                .metrics
                .notifications
                .with_label_values(&["rejected", rejection.label()])
                .inc();
            match &rejection {
                Rejection::Unavailable(e) => {
                    tracing::error!(error = %e, "Work queue unavailable; answered 503 so Microsoft retries.")
                }
                Rejection::Blob { index, detail, .. } => {
                    tracing::warn!(blob = index, reason = %detail, "Notification rejected.")
                }
                other => tracing::warn!(reason = other.label(), "Webhook request rejected."),
            }
            rejection.response()
        }
    }
}
