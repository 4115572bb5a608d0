//! Control API (JSON) for a standalone simulator, so tests and operators can drive it over HTTP:
//! - `POST /sim/publish` `{"tenant","contentType","blobs","records"}` → `[SimBlob]`
//! - `POST /sim/faults` body [`Faults`](super::Faults) → the faults now in force
//! - `POST /sim/expire` `{"contentId"}` → 204
//! - `GET /sim/stats` → counters
//! - `GET /sim/subscriptions/{tenant}` → `[SimSubscription]`

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{Faults, Inner};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/sim")
            .app_data(web::JsonConfig::default().limit(1024 * 1024))
            .route("/publish", web::post().to(publish))
            .route("/faults", web::post().to(set_faults))
            .route("/expire", web::post().to(expire))
            .route("/stats", web::get().to(stats))
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

async fn stats(inner: web::Data<Inner>) -> HttpResponse {
    let st = inner.state();
    let token_requests: BTreeMap<_, _> = st.token_requests.iter().collect();
    let max_per_minute: BTreeMap<_, _> = st.calls.iter().map(|(t, w)| (t, w.max)).collect();
    let management_calls: BTreeMap<_, _> = st.calls.iter().map(|(t, w)| (t, w.total)).collect();
    HttpResponse::Ok().json(json!({
        "token_requests": token_requests,
        "content_gets": st.content_gets,
        "list_calls": st.list_calls,
        "management_calls": management_calls,
        "max_calls_per_minute": max_per_minute,
        "notifications_delivered": st.notifications_delivered,
        "notifications_dropped": st.notifications_dropped,
        "records_published": st.records_published,
        "unique_records": st.unique_ids.len(),
        "blobs": st.blobs.len(),
        "rejected_requests": st.rejected.len(),
    }))
}

async fn subscriptions(inner: web::Data<Inner>, path: web::Path<String>) -> HttpResponse {
    HttpResponse::Ok().json(super::management::subscriptions_of(
        &inner,
        &path.into_inner(),
    ))
}
