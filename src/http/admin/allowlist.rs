//! `/admin/consent/allowed…`: the consent allowlist (`O365_CONSENT_MODE=allowlist`) — list,
//! allow, disallow.

use super::error::logged;
use super::guard::Operator;
use super::{AdminApi, AdminError, TenantPath};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/consent/allowed", web::get().to(list_allowed))
        .route("/admin/consent/allowed/{tid}", web::put().to(allow_tenant))
        .route(
            "/admin/consent/allowed/{tid}",
            web::delete().to(disallow_tenant),
        );
}

async fn list_allowed(_: Operator, api: web::Data<AdminApi>) -> Result<HttpResponse, AdminError> {
    let list = api
        .consent_policy
        .list()
        .await
        .map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok().json(list))
}

/// Allows a tenant to onboard: 201 when added, 200 when it was allowed already.
async fn allow_tenant(
    _: Operator,
    path: web::Path<TenantPath>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    let added = api
        .consent_policy
        .allow(&tid)
        .await
        .map_err(|e| logged(e.into()))?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(serde_json::json!({ "allowed": tid, "added": added })))
}

/// Takes a tenant off the allowlist: 200, 404 not on it, 409 configured.
async fn disallow_tenant(
    _: Operator,
    path: web::Path<TenantPath>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    let tid = path.into_inner().tid;
    if !api
        .consent_policy
        .disallow(&tid)
        .await
        .map_err(|e| logged(e.into()))?
    {
        return Err(AdminError::NotAllowed(tid));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "removed": tid })))
}
