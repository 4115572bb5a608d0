//! The admin listener (cluster-internal): `/healthz`, `/readyz`, `/metrics` and the admin API.

use crate::app::Relay;
use crate::domain::{ContentType, TenantId};
use crate::secret::constant_time_eq;
use crate::tenants::{AddedBy, TenantError};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::time::Duration;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/admin/tenants", web::get().to(list_tenants))
        .route("/admin/tenants/{tid}", web::post().to(add_tenant))
        .route("/admin/tenants/{tid}", web::delete().to(remove_tenant))
        .route(
            "/admin/tenants/{tid}/subscriptions",
            web::get().to(list_subscriptions),
        )
        .route(
            "/admin/tenants/{tid}/subscriptions/start",
            web::post().to(start_subscriptions),
        );
}

fn error(status: actix_web::http::StatusCode, msg: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": msg.into() }))
}

/// Alive unless a background loop could not be kept alive (see [`crate::supervise`]): then
/// Kubernetes should restart the pod.
async fn healthz(relay: web::Data<Relay>) -> HttpResponse {
    let failed = relay.supervisor.failed();
    if failed.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "failed", "failed_tasks": failed }))
    }
}

async fn readyz(relay: web::Data<Relay>) -> HttpResponse {
    let mut problems = Vec::new();
    if relay.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        problems.push("shutting down".to_string());
    }
    if let Err(e) = relay.store.ping().await {
        problems.push(format!("redis: {e}"));
    }
    for task in relay.supervisor.failed() {
        problems.push(format!("background task {task} is not running"));
    }
    match tokio::time::timeout(Duration::from_secs(5), relay.broker.ensure_connected()).await {
        Ok(Ok(())) if relay.broker.topology_declared() => {}
        Ok(Ok(_)) => problems.push("rabbitmq: work queue not declared yet".into()),
        Ok(Err(e)) => problems.push(format!("rabbitmq: {e}")),
        Err(_) => problems.push("rabbitmq: connection attempt timed out".into()),
    }
    if problems.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "not ready", "reasons": problems }))
    }
}

async fn metrics(relay: web::Data<Relay>) -> HttpResponse {
    if let Ok(Ok(depth)) =
        tokio::time::timeout(Duration::from_secs(2), relay.work_queue.depth()).await
    {
        relay.metrics.work_queue_depth.set(i64::from(depth));
    }
    if let crate::config::Credential::Certificate(c) = &relay.settings.credential {
        relay
            .metrics
            .certificate_expiry
            .set(c.seconds_left() as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(relay.metrics.render())
}

/// `Authorization: Bearer {O365_ADMIN_TOKEN}` when that variable is set.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per request
fn authorise(req: &HttpRequest, relay: &Relay) -> Result<(), HttpResponse> {
    let Some(expected) = &relay.settings.admin_token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(error(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

#[allow(clippy::result_large_err)] // as above
fn tenant_param(tid: &str) -> Result<TenantId, HttpResponse> {
    TenantId::parse(tid).map_err(|e| error(actix_web::http::StatusCode::BAD_REQUEST, e))
}

async fn list_tenants(req: HttpRequest, relay: web::Data<Relay>) -> HttpResponse {
    if let Err(r) = authorise(&req, &relay) {
        return r;
    }
    match relay.tenants.list().await {
        Ok(l) => HttpResponse::Ok().json(l),
        Err(e) => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

#[derive(Deserialize)]
struct AddQuery {
    /// Start the tenant's subscriptions right away (default true).
    start: Option<bool>,
}

async fn add_tenant(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<AddQuery>,
    relay: web::Data<Relay>,
) -> HttpResponse {
    if let Err(r) = authorise(&req, &relay) {
        return r;
    }
    let tid = match tenant_param(&path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let record = match relay.tenants.add(&tid, AddedBy::Admin, None).await {
        Ok(r) => r,
        Err(e) => {
            return error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            )
        }
    };
    let subscriptions = if q.start.unwrap_or(true) && relay.settings.public_url.is_some() {
        relay.subscriptions.start_all(&tid, None, false).await
    } else {
        Vec::new()
    };
    HttpResponse::Created()
        .json(serde_json::json!({ "tenant": record, "subscriptions": subscriptions }))
}

#[derive(Deserialize)]
struct RemoveQuery {
    stop_subscriptions: Option<bool>,
}

async fn remove_tenant(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<RemoveQuery>,
    relay: web::Data<Relay>,
) -> HttpResponse {
    if let Err(r) = authorise(&req, &relay) {
        return r;
    }
    let tid = match tenant_param(&path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut stopped = Vec::new();
    if q.stop_subscriptions.unwrap_or(false) {
        for ct in relay.settings.content_types.clone() {
            let r = relay.subscriptions.stop(&tid, ct).await;
            stopped.push(serde_json::json!({ "content_type": ct.as_str(), "ok": r.is_ok(), "error": r.err().map(|e| e.to_string()) }));
        }
    }
    match relay.tenants.remove(&tid).await {
        Ok(removed) => {
            relay.tokens.forget(&tid).await;
            if removed {
                HttpResponse::Ok().json(serde_json::json!({ "removed": tid, "stopped": stopped }))
            } else {
                error(
                    actix_web::http::StatusCode::NOT_FOUND,
                    format!("tenant {tid} is not registered"),
                )
            }
        }
        Err(e @ TenantError::Static(_)) => {
            error(actix_web::http::StatusCode::CONFLICT, e.to_string())
        }
        Err(e) => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        ),
    }
}

async fn list_subscriptions(
    req: HttpRequest,
    path: web::Path<String>,
    relay: web::Data<Relay>,
) -> HttpResponse {
    if let Err(r) = authorise(&req, &relay) {
        return r;
    }
    let tid = match tenant_param(&path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match relay.subscriptions.list(&tid).await {
        Ok(l) => HttpResponse::Ok().json(l),
        Err(e) => error(actix_web::http::StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    force: Option<bool>,
}

async fn start_subscriptions(
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<StartQuery>,
    relay: web::Data<Relay>,
) -> HttpResponse {
    if let Err(r) = authorise(&req, &relay) {
        return r;
    }
    let tid = match tenant_param(&path) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let only = match q
        .content_type
        .as_deref()
        .map(str::parse::<ContentType>)
        .transpose()
    {
        Ok(c) => c,
        Err(e) => return error(actix_web::http::StatusCode::BAD_REQUEST, e),
    };
    let outcomes = relay
        .subscriptions
        .start_all(&tid, only, q.force.unwrap_or(false))
        .await;
    let status = if outcomes.iter().all(|o| o.ok) {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::BAD_GATEWAY
    };
    HttpResponse::build(status).json(outcomes)
}
