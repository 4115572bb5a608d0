//! `/admin/tenants…`: the tenants served — list, add, remove, approve — and their
//! subscriptions (list, start).

use super::error::logged;
use super::guard::Operator;
use super::{AdminApi, AdminError, TenantPath};
use crate::domain::ContentType;
use crate::tenancy::onboarding::AddRequest;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/tenants", web::get().to(list_tenants))
        .route("/admin/tenants/{tid}", web::post().to(add_tenant))
        .route("/admin/tenants/{tid}", web::delete().to(remove_tenant))
        .route(
            "/admin/tenants/{tid}/subscriptions",
            web::get().to(list_subscriptions),
        )
        .route(
            "/admin/tenants/{tid}/subscriptions/start",
            web::post().to(start_subscriptions),
        )
        .route(
            "/admin/tenants/{tid}/approve",
            web::post().to(approve_tenant),
        );
}

async fn list_tenants(_: Operator, api: web::Data<AdminApi>) -> Result<HttpResponse, AdminError> {
    let list = api.tenants.list().await.map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok().json(list))
}

#[derive(Deserialize)]
struct AddQuery {
    /// Start the tenant's subscriptions right away (default true).
    start: Option<bool>,
}

async fn add_tenant(
    _: Operator,
    path: web::Path<TenantPath>,
    q: web::Query<AddQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    let added = api
        .onboarding
        .add(&tid, AddRequest::by_admin(q.start.unwrap_or(true)))
        .await
        .map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Created().json(added))
}

#[derive(Deserialize)]
struct RemoveQuery {
    stop_subscriptions: Option<bool>,
}

async fn remove_tenant(
    _: Operator,
    path: web::Path<TenantPath>,
    q: web::Query<RemoveQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    let removed = api
        .onboarding
        .remove(&tid, q.stop_subscriptions.unwrap_or(false))
        .await
        .map_err(|e| logged(e.into()))?;
    if !removed.removed {
        return Err(AdminError::NotRegistered(tid));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "removed": tid, "stopped": removed.stopped })))
}

async fn list_subscriptions(
    _: Operator,
    path: web::Path<TenantPath>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    let list = api
        .subscriptions
        .list(&tid)
        .await
        .map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok().json(list))
}

/// Approves a tenant pending approval (`O365_CONSENT_MODE=approval`) and starts its
/// subscriptions: 200, 404 not registered, 409 not pending.
async fn approve_tenant(
    _: Operator,
    path: web::Path<TenantPath>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    match api.onboarding.approve(&tid).await {
        Ok(Some(approved)) => Ok(HttpResponse::Ok().json(approved)),
        Ok(None) => Err(AdminError::NotRegistered(tid)),
        Err(e) => Err(logged(e.into())),
    }
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(rename = "contentType")]
    content_type: Option<ContentType>,
    force: Option<bool>,
}

async fn start_subscriptions(
    _: Operator,
    path: web::Path<TenantPath>,
    q: web::Query<StartQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    let only = q.content_type;
    let outcomes = api
        .subscriptions
        .start_all(&tid, only, q.force.unwrap_or(false))
        .await;
    let status = if outcomes.iter().all(|o| o.ok) {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok(HttpResponse::build(status).json(outcomes))
}
