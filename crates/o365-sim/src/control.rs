//! Control API (JSON) for a standalone simulator, so tests and operators can drive it over HTTP:
//! - `POST /sim/publish` `{"tenant","contentType","blobs","records"}` → `[SimBlob]`
//! - `POST /sim/faults` body [`Faults`](super::Faults) → the faults now in force
//! - `POST /sim/expire` `{"contentId"}` → 204
//! - `GET /sim/stats` → counters (`calls_by_route`: Management calls per route, all tenants)
//! - `GET /sim/calls/{tenant}` → the tenant's Management calls per route
//!   (`{"start":0,"stop":0,"list_subscriptions":1,"list_content":5,"get_content":0}`)
//! - `GET /sim/subscriptions/{tenant}` → `[SimSubscription]`
//! - `POST /sim/publish-body` `{"tenant"?,"contentType","contentId"?,"bodyBase64"}` → `SimBlob`
//!   (the body is served byte-exactly; see `Simulator::publish_body`)
//! - `POST /sim/push-fault` `{"fault": Fault}` → 204 (the next content GET)
//! - `POST /sim/fault-for` `{"contentId","fault": Fault}` → 204 (every GET of that id)
//! - `DELETE /sim/fault-for/{contentId}` → 204, or 404 when that id had no sticky fault
//! - `POST /sim/consent` `{"tenant","granted"}` → 204: `false` withdraws the tenant's consent
//!   (its token requests are refused), `true` grants it again
//!
//! `Fault` JSON: see [`Fault`](super::Fault), e.g.
//! `{"kind":"drip_feed","chunk":64,"interval_ms":50}`.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{Fault, Faults, Inner, Route, CONTENT_TYPES};

/// JSON limit of the control API.
const JSON_LIMIT: usize = 1024 * 1024;
/// JSON limit of `publish-body` only: its base64 body may hold a multi-MiB blob.
const BODY_JSON_LIMIT: usize = 16 * 1024 * 1024;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/sim")
            .app_data(web::JsonConfig::default().limit(JSON_LIMIT))
            .service(
                web::resource("/publish-body")
                    .app_data(web::JsonConfig::default().limit(BODY_JSON_LIMIT))
                    .route(web::post().to(publish_body)),
            )
            .route("/push-fault", web::post().to(push_fault))
            .route("/fault-for", web::post().to(fault_for))
            .route("/fault-for/{content_id}", web::delete().to(clear_fault_for))
            .route("/publish", web::post().to(publish))
            .route("/faults", web::post().to(set_faults))
            .route("/expire", web::post().to(expire))
            .route("/consent", web::post().to(consent))
            .route("/stats", web::get().to(stats))
            .route("/calls/{tenant}", web::get().to(calls))
            .route("/subscriptions/{tenant}", web::get().to(subscriptions)),
    );
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PublishReq {
    tenant: Option<String>,
    content_type: String,
    #[serde(default = "one")]
    blobs: usize,
    records: Option<usize>,
}

fn one() -> usize {
    1
}

async fn publish(inner: web::Data<Inner>, req: web::Json<PublishReq>) -> HttpResponse {
    let req = req.into_inner();
    let tenant = req
        .tenant
        .or_else(|| inner.config.tenants.first().cloned())
        .unwrap_or_default();
    // Cap what one call may create (a control API, not a load generator).
    let blobs = req.blobs.min(10_000);
    let inner = inner.into_inner();
    let out = super::records::publish(&inner, &tenant, &req.content_type, blobs, req.records);
    HttpResponse::Ok().json(out)
}

fn bad_request(message: impl Into<String>) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": message.into()}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PublishBodyReq {
    tenant: Option<String>,
    content_type: String,
    content_id: Option<String>,
    body_base64: String,
}

async fn publish_body(inner: web::Data<Inner>, req: web::Json<PublishBodyReq>) -> HttpResponse {
    let req = req.into_inner();
    let tenant = req
        .tenant
        .or_else(|| inner.config.tenants.first().cloned())
        .unwrap_or_default();
    // The body may be hostile; where it goes must not be, or the test proves nothing.
    if !inner.tenant_known(&tenant) {
        return bad_request(format!("unknown tenant '{tenant}'"));
    }
    if !CONTENT_TYPES.contains(&req.content_type.as_str()) {
        return bad_request(format!("unknown content type '{}'", req.content_type));
    }
    if req.content_id.as_deref() == Some("") {
        return bad_request("contentId must not be empty");
    }
    let body = match base64::engine::general_purpose::STANDARD.decode(req.body_base64.as_bytes()) {
        Ok(b) => b,
        Err(e) => return bad_request(format!("bodyBase64 is not standard base64: {e}")),
    };
    let inner = inner.into_inner();
    let blob =
        super::records::publish_body(&inner, &tenant, &req.content_type, body, req.content_id);
    HttpResponse::Ok().json(blob)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFaultReq {
    fault: Fault,
}

async fn push_fault(inner: web::Data<Inner>, req: web::Json<PushFaultReq>) -> HttpResponse {
    inner.state().pushed.push_back(req.into_inner().fault);
    HttpResponse::NoContent().finish()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultForReq {
    content_id: String,
    fault: Fault,
}

async fn fault_for(inner: web::Data<Inner>, req: web::Json<FaultForReq>) -> HttpResponse {
    let req = req.into_inner();
    if req.content_id.is_empty() {
        return bad_request("contentId must not be empty");
    }
    inner.state().sticky.insert(req.content_id, req.fault);
    HttpResponse::NoContent().finish()
}

async fn clear_fault_for(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    if inner.state().sticky.remove(path.as_str()).is_some() {
        HttpResponse::NoContent().finish()
    } else {
        HttpResponse::NotFound().json(json!({"error": "no sticky fault for that contentId"}))
    }
}

async fn set_faults(inner: web::Data<Inner>, faults: web::Json<Faults>) -> HttpResponse {
    let faults = faults.into_inner();
    inner.state().faults = faults.clone();
    HttpResponse::Ok().json(faults)
}

#[derive(Deserialize)]
struct ExpireReq {
    #[serde(rename = "contentId")]
    content_id: String,
}

async fn expire(inner: web::Data<Inner>, req: web::Json<ExpireReq>) -> HttpResponse {
    let mut st = inner.state();
    match st.blob_index.get(&req.content_id).copied() {
        Some(i) => {
            st.blobs[i].expired = true;
            HttpResponse::NoContent().finish()
        }
        None => HttpResponse::NotFound().json(json!({"error": "unknown contentId"})),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsentReq {
    tenant: String,
    granted: bool,
}

async fn consent(inner: web::Data<Inner>, req: web::Json<ConsentReq>) -> HttpResponse {
    let req = req.into_inner();
    if !inner.tenant_known(&req.tenant) {
        return bad_request(format!("unknown tenant '{}'", req.tenant));
    }
    let tenant = req.tenant.to_ascii_lowercase();
    let mut st = inner.state();
    if req.granted {
        st.withdrawn.remove(&tenant);
        st.revoked_roles.remove(&tenant);
    } else {
        st.withdrawn.insert(tenant);
    }
    HttpResponse::NoContent().finish()
}

async fn stats(inner: web::Data<Inner>) -> HttpResponse {
    let st = inner.state();
    let token_requests: BTreeMap<_, _> = st.token_requests.iter().collect();
    let refused_token_requests: BTreeMap<_, _> = st.refused_token_requests.iter().collect();
    let max_per_minute: BTreeMap<_, _> = st.calls.iter().map(|(t, w)| (t, w.max)).collect();
    let management_calls: BTreeMap<_, _> = st.calls.iter().map(|(t, w)| (t, w.total)).collect();
    let mut calls_by_route: BTreeMap<Route, u64> = Route::ALL.iter().map(|r| (*r, 0)).collect();
    for ((_, route), n) in &st.route_calls {
        *calls_by_route.entry(*route).or_insert(0) += n;
    }
    HttpResponse::Ok().json(json!({
        "token_requests": token_requests,
        "refused_token_requests": refused_token_requests,
        "content_gets": st.content_gets,
        "list_calls": st.list_calls,
        "management_calls": management_calls,
        "calls_by_route": calls_by_route,
        "max_calls_per_minute": max_per_minute,
        "notifications_delivered": st.notifications_delivered,
        "notifications_dropped": st.notifications_dropped,
        "records_published": st.records_published,
        "unique_records": st.unique_ids.len(),
        "blobs": st.blobs.len(),
        "rejected_requests": st.rejected.len(),
    }))
}

async fn calls(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    let tenant = path.into_inner().to_ascii_lowercase();
    let st = inner.state();
    let per_route: BTreeMap<Route, u64> = Route::ALL
        .iter()
        .map(|r| {
            let n = st.route_calls.get(&(tenant.clone(), *r)).copied();
            (*r, n.unwrap_or(0))
        })
        .collect();
    HttpResponse::Ok().json(per_route)
}

async fn subscriptions(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(super::management::subscriptions_of(
        &inner,
        &path.into_inner(),
    ))
}
