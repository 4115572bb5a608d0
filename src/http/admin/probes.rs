//! `/healthz`, `/readyz` and `/metrics`: for Kubernetes and Prometheus, without a token.

use super::AdminApi;
use actix_web::{web, HttpResponse};
use std::sync::atomic::Ordering;
use std::time::Duration;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

/// Alive unless a background loop could not be kept alive (see [`crate::ops::supervise`]): then
/// Kubernetes should restart the pod.
async fn healthz(api: web::Data<AdminApi>) -> HttpResponse {
    let failed = api.supervisor.failed();
    if failed.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "failed", "failed_tasks": failed }))
    }
}

async fn readyz(api: web::Data<AdminApi>) -> HttpResponse {
    let mut problems = Vec::new();
    if api.stopping.load(Ordering::SeqCst) {
        problems.push("shutting down".to_string());
    }
    // The reasons name the dependency; what it said goes to the log (debug: probes are frequent).
    if let Err(e) = api.store.ping().await {
        tracing::debug!(error = %e, "Not ready: Redis.");
        problems.push("redis: unavailable".to_string());
    }
    for task in api.supervisor.failed() {
        problems.push(format!("background task {task} is not running"));
    }
    match tokio::time::timeout(Duration::from_secs(5), api.broker.ensure_connected()).await {
        Ok(Ok(())) if api.broker.topology_declared() => {}
        Ok(Ok(_)) => problems.push("rabbitmq: work queue not declared yet".into()),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "Not ready: RabbitMQ.");
            problems.push("rabbitmq: unavailable".into())
        }
        Err(_) => problems.push("rabbitmq: connection attempt timed out".into()),
    }
    if problems.is_empty() {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({ "status": "not ready", "reasons": problems }))
    }
}

async fn metrics(api: web::Data<AdminApi>) -> HttpResponse {
    if let Ok(Ok(depth)) =
        tokio::time::timeout(Duration::from_secs(2), api.work_queue.depth()).await
    {
        api.metrics.work_queue_depth.set(i64::from(depth));
    }
    if let Some(c) = &api.certificate {
        api.metrics.certificate_expires_in(c.seconds_left());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(api.metrics.render())
}
