//! Management Activity API: `/api/v1.0/{tenant}/activity/feed/...`.
//!
//! Every call is checked like Microsoft does (Office 365 Management Activity API reference,
//! "Activity API operations", the `PublisherIdentifier` parameter and "Errors"): a bearer token
//! signed by the sim and unexpired (AF401 otherwise), the URL tenant exists (AF20011) and equals
//! the token's `tid` (AF20010), `PublisherIdentifier` is a GUID (AF20012), the content type is one
//! of the five (AF20020) and the token holds `ActivityFeed.Read` (`ActivityFeed.ReadDlp` for
//! DLP.All; AF10001).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::body::SizedStream;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    Fault, Inner, Route, SimSubscription, SimWebhook, Subscription, WebhookState, CONTENT_TYPES,
};

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1.0/{tenant}/activity/feed")
            .route("/subscriptions/start", web::post().to(start))
            .route("/subscriptions/stop", web::post().to(stop))
            .route("/subscriptions/list", web::get().to(list))
            .route("/subscriptions/content", web::get().to(content_list))
            .route("/audit/{content_id}", web::get().to(get_content))
            .default_service(web::to(unknown_operation)),
    );
}

/// `{"error":{"code":"AFxxxxx","message":"…"}}` with the given status.
pub(crate) fn af(status: StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"code": code, "message": message}}))
}

/// An AF error that is also logged as a refused request.
fn refuse(
    inner: &Inner,
    what: &str,
    status: StatusCode,
    code: &str,
    message: &str,
) -> HttpResponse {
    inner.reject(format!("{what}: {} {code}: {message}", status.as_u16()));
    af(status, code, message)
}

fn unauthorized() -> HttpResponse {
    af(
        StatusCode::UNAUTHORIZED,
        "AF401",
        "Authorization has been denied for this request.",
    )
}

fn throttled(status: StatusCode, retry_after: bool) -> HttpResponse {
    throttled_for(status, retry_after.then_some(1))
}

/// AF429 with `Retry-After: {secs}` verbatim when given (absurd values included).
fn throttled_for(status: StatusCode, retry_after_secs: Option<u64>) -> HttpResponse {
    let mut b = HttpResponse::build(status);
    if let Some(secs) = retry_after_secs {
        b.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    b.json(json!({"error": {"code": "AF429", "message": "Too many requests. Method=GetBlob, PublisherId=00000000-0000-0000-0000-000000000000"}}))
}

fn server_error() -> HttpResponse {
    af(
        StatusCode::INTERNAL_SERVER_ERROR,
        "AF50000",
        "An internal error occurred. Retry the request.",
    )
}

/// Query parameters (names matched case-insensitively, first value wins).
struct Query(HashMap<String, String>);

impl Query {
    fn of(req: &HttpRequest) -> Query {
        let mut m = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
            m.entry(k.to_ascii_lowercase())
                .or_insert_with(|| v.into_owned());
        }
        Query(m)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(&k.to_ascii_lowercase()).map(String::as_str)
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

/// Record the call for the per-tenant counters (total, per route and sliding 60 s window).
fn count_call(inner: &Inner, tenant: &str, route: Route) {
    let now = Instant::now();
    let mut st = inner.state();
    *st.route_calls
        .entry((tenant.to_string(), route))
        .or_insert(0) += 1;
    let w = st.calls.entry(tenant.to_string()).or_default();
    w.total += 1;
    w.recent.push_back(now);
    while let Some(front) = w.recent.front() {
        if now.duration_since(*front) >= Duration::from_secs(60) {
            w.recent.pop_front();
        } else {
            break;
        }
    }
    w.max = w.max.max(w.recent.len() as u64);
}

#[derive(Deserialize)]
struct AccessClaims {
    tid: String,
    #[serde(default)]
    roles: Vec<String>,
}

/// The checks every Management call goes through. `content_type` is `Some` for calls that
/// take `contentType` (it must then be present and valid).
#[allow(clippy::result_large_err)]
fn precheck(
    inner: &Inner,
    req: &HttpRequest,
    tenant: &str,
    route: Route,
    what: &str,
    needs_content_type: bool,
) -> Result<Query, HttpResponse> {
    count_call(inner, tenant, route);
    let q = Query::of(req);
    // Bearer token: signed by us, unexpired, audience = the Management base URL.
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = token else {
        inner.reject(format!("{what}: 401 AF401: no bearer token"));
        return Err(unauthorized());
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.leeway = 0;
    validation.set_audience(&[inner.url.as_str(), &format!("{}/", inner.url)]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    let claims = match jsonwebtoken::decode::<AccessClaims>(token, &inner.verify_key, &validation) {
        Ok(d) => d.claims,
        Err(e) => {
            inner.reject(format!("{what}: 401 AF401: bearer token invalid: {e}"));
            return Err(unauthorized());
        }
    };
    if !inner.tenant_known(tenant) {
        return Err(refuse(
            inner,
            what,
            StatusCode::BAD_REQUEST,
            "AF20011",
            &format!("Specified tenant ID ({tenant}) does not exist in the system or has been deactivated."),
        ));
    }
    if !claims.tid.eq_ignore_ascii_case(tenant) {
        return Err(refuse(
            inner,
            what,
            StatusCode::UNAUTHORIZED,
            "AF20010",
            &format!("The tenant ID passed in the URL ({tenant}) does not match the tenant ID passed in the access token ({}).", claims.tid),
        ));
    }
    if inner.config.publisher_id_required && !q.get("PublisherIdentifier").is_some_and(is_guid) {
        return Err(refuse(
            inner,
            what,
            StatusCode::BAD_REQUEST,
            "AF20012",
            "PublisherIdentifier missing or not a GUID",
        ));
    }
    let mut needed_role = "ActivityFeed.Read";
    if needs_content_type {
        let ct = q.get("contentType").unwrap_or("");
        if !CONTENT_TYPES.contains(&ct) {
            return Err(refuse(
                inner,
                what,
                StatusCode::BAD_REQUEST,
                "AF20020",
                &format!("The specified content type is not valid: '{ct}'."),
            ));
        }
        if ct == "DLP.All" {
            needed_role = "ActivityFeed.ReadDlp";
        }
    }
    if !claims.roles.iter().any(|r| r == needed_role) {
        return Err(refuse(
            inner,
            what,
            StatusCode::UNAUTHORIZED,
            "AF10001",
            &format!("The permission set ({}) sent in the request does not include the expected permission {needed_role}.", claims.roles.join(",")),
        ));
    }
    Ok(q)
}

fn tenant_of(path: &str) -> String {
    path.to_ascii_lowercase()
}

fn roll(p: f64) -> bool {
    p > 0.0 && rand::random::<f64>() < p
}

// ------------------------------------------------------------------------------------------
// Subscriptions
// ------------------------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct StartBody {
    webhook: Option<WebhookBody>,
}

#[derive(Deserialize)]
struct WebhookBody {
    address: Option<String>,
    #[serde(rename = "authId")]
    auth_id: Option<String>,
    expiration: Option<String>,
}

fn webhook_json(w: &WebhookState) -> Value {
    json!({"status": w.status, "address": w.address, "authId": w.auth_id, "expiration": w.expiration})
}

/// `POST subscriptions/start`.
async fn start(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let tenant = tenant_of(&path.into_inner());
    let what = format!("start {tenant}");
    let q = match precheck(&inner, &req, &tenant, Route::Start, &what, true) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let ct = q.get("contentType").unwrap_or("").to_string();
    *inner
        .state()
        .start_calls
        .entry((tenant.clone(), ct.clone()))
        .or_insert(0) += 1;
    let parsed: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return refuse(
                    &inner,
                    &what,
                    StatusCode::BAD_REQUEST,
                    "AF20001",
                    &format!("Invalid request body: {e}"),
                )
            }
        }
    };
    let wanted = match parsed.webhook {
        None => None,
        Some(w) => {
            let address = w.address.unwrap_or_default();
            match url::Url::parse(&address) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                _ => {
                    return refuse(
                        &inner,
                        &what,
                        StatusCode::BAD_REQUEST,
                        "AF20021",
                        &format!("Webhook address '{address}' is not a valid absolute URL."),
                    )
                }
            }
            Some(WebhookState {
                address,
                auth_id: w.auth_id.unwrap_or_default(),
                status: "enabled".into(),
                expiration: w.expiration.filter(|e| !e.is_empty()),
            })
        }
    };
    // "Already enabled, no property change" -> AF20024.
    let unchanged = {
        let st = inner.state();
        st.subscriptions
            .get(&tenant)
            .and_then(|m| m.get(&ct))
            .is_some_and(|s| {
                s.enabled
                    && match (&s.webhook, &wanted) {
                        (None, None) => true,
                        (Some(have), Some(want)) => {
                            have.status == "enabled"
                                && have.address == want.address
                                && have.auth_id == want.auth_id
                        }
                        _ => false,
                    }
            })
    };
    if unchanged {
        // Not logged as refused: a relay may legitimately re-start after a restart.
        return af(
            StatusCode::BAD_REQUEST,
            "AF20024",
            "The subscription is already enabled. No property change.",
        );
    }
    // Microsoft POSTs a validation request to the webhook before enabling it; anything but 200
    // fails the start with AF20021 and leaves the subscription unchanged.
    if let Some(w) = &wanted {
        if let Err(reason) = super::webhook_delivery::validate(&inner, &w.address, &w.auth_id).await
        {
            return refuse(
                &inner,
                &what,
                StatusCode::BAD_REQUEST,
                "AF20021",
                &format!("Webhook validation failed: {reason}"),
            );
        }
    }
    inner
        .state()
        .subscriptions
        .entry(tenant.clone())
        .or_default()
        .insert(
            ct.clone(),
            Subscription {
                enabled: true,
                webhook: wanted.clone(),
            },
        );
    HttpResponse::Ok().json(json!({
        "contentType": ct,
        "status": "enabled",
        "webhook": wanted.as_ref().map(webhook_json),
    }))
}

/// `POST subscriptions/stop`: 200 with an empty body; the subscription is disabled.
async fn stop(inner: web::Data<Inner>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let tenant = tenant_of(&path.into_inner());
    let q = match precheck(
        &inner,
        &req,
        &tenant,
        Route::Stop,
        &format!("stop {tenant}"),
        true,
    ) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let ct = q.get("contentType").unwrap_or("");
    if let Some(s) = inner
        .state()
        .subscriptions
        .get_mut(&tenant)
        .and_then(|m| m.get_mut(ct))
    {
        s.enabled = false;
    }
    HttpResponse::Ok().finish()
}

/// The tenant's subscriptions in `subscriptions/list` order (by content type).
pub(crate) fn subscriptions_of(inner: &Inner, tenant: &str) -> Vec<SimSubscription> {
    let st = inner.state();
    let Some(m) = st.subscriptions.get(&tenant.to_ascii_lowercase()) else {
        return Vec::new();
    };
    let mut out: Vec<SimSubscription> = m
        .iter()
        .map(|(ct, s)| SimSubscription {
            content_type: ct.clone(),
            status: if s.enabled { "enabled" } else { "disabled" }.into(),
            webhook: s.webhook.as_ref().map(|w| SimWebhook {
                address: w.address.clone(),
                auth_id: w.auth_id.clone(),
                status: w.status.clone(),
                expiration: w.expiration.clone(),
            }),
        })
        .collect();
    out.sort_by(|a, b| a.content_type.cmp(&b.content_type));
    out
}

/// `GET subscriptions/list`.
async fn list(inner: web::Data<Inner>, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let tenant = tenant_of(&path.into_inner());
    if let Err(r) = precheck(
        &inner,
        &req,
        &tenant,
        Route::ListSubscriptions,
        &format!("list {tenant}"),
        false,
    ) {
        return r;
    }
    let subs: Vec<Value> = subscriptions_of(&inner, &tenant)
        .into_iter()
        .map(|s| {
            json!({
                "contentType": s.content_type,
                "status": s.status,
                "webhook": s.webhook.map(|w| json!({"status": w.status, "address": w.address, "authId": w.auth_id, "expiration": w.expiration})),
            })
        })
        .collect();
    HttpResponse::Ok().json(subs)
}

// ------------------------------------------------------------------------------------------
// Listing available content
// ------------------------------------------------------------------------------------------

/// Parse a listing window bound: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`, `YYYY-MM-DDTHH:MM:SS`, leniently
/// with fractional seconds and a `Z` / offset. Always UTC.
pub(crate) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Opaque, tamper-evident page cursor: (created ms, seq) of the first item of the next page.
fn encode_cursor(ms: i64, seq: u64, salt: &str) -> String {
    format!("{ms:016x}{seq:016x}{:016x}", cursor_check(ms, seq, salt))
}

fn decode_cursor(s: &str, salt: &str) -> Option<(i64, u64)> {
    if s.len() != 48 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let ms = u64::from_str_radix(&s[0..16], 16).ok()? as i64;
    let seq = u64::from_str_radix(&s[16..32], 16).ok()?;
    let check = u64::from_str_radix(&s[32..48], 16).ok()?;
    (check == cursor_check(ms, seq, salt)).then_some((ms, seq))
}

fn cursor_check(ms: i64, seq: u64, salt: &str) -> u64 {
    // FNV-1a over the cursor and the listing it belongs to.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{ms}|{seq}|{salt}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Random fault on listing (only when `apply_to_listing`): `Some(response)` to answer with.
async fn listing_fault(inner: &Inner) -> Option<HttpResponse> {
    let f = inner.state().faults.clone();
    if !f.apply_to_listing {
        return None;
    }
    if roll(f.slow) {
        tokio::time::sleep(Duration::from_millis(f.slow_ms)).await;
    }
    if roll(f.throttle_429) {
        return Some(throttled(StatusCode::TOO_MANY_REQUESTS, f.retry_after));
    }
    if roll(f.throttle_403) {
        return Some(throttled(StatusCode::FORBIDDEN, false));
    }
    if roll(f.server_error) {
        return Some(server_error());
    }
    None
}

/// Counts a listing in flight while it lives ([`crate::Simulator::max_concurrent_listings`]).
struct InFlight<'a>(&'a Inner);

impl<'a> InFlight<'a> {
    fn new(inner: &'a Inner) -> Self {
        let mut st = inner.state();
        st.listings_in_flight += 1;
        st.max_listings_in_flight = st.max_listings_in_flight.max(st.listings_in_flight);
        InFlight(inner)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state().listings_in_flight -= 1;
    }
}

/// `GET subscriptions/content`.
async fn content_list(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let tenant = tenant_of(&path.into_inner());
    let _in_flight = InFlight::new(&inner);
    inner.state().list_calls += 1;
    let what = format!("content list {tenant}");
    let q = match precheck(&inner, &req, &tenant, Route::ListContent, &what, true) {
        Ok(q) => q,
        Err(r) => return r,
    };
    if let Some(r) = listing_fault(&inner).await {
        return r;
    }
    let ct = q.get("contentType").unwrap_or("").to_string();
    let now = Utc::now();
    // Both or neither; neither = the last 24 hours.
    let (start, end) = match (q.get("startTime"), q.get("endTime")) {
        (None, None) => (now - chrono::Duration::hours(24), now),
        (Some(s), Some(e)) => match (parse_time(s), parse_time(e)) {
            (Some(s), Some(e)) => (s, e),
            _ => {
                return refuse(&inner, &what, StatusCode::BAD_REQUEST, "AF20030",
                    "Start time and end time must both be specified (or both omitted) and be in a supported format.")
            }
        },
        _ => {
            return refuse(&inner, &what, StatusCode::BAD_REQUEST, "AF20030",
                "Start time and end time must both be specified (or both omitted), must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past.")
        }
    };
    if end <= start || end - start > chrono::Duration::hours(24) {
        return refuse(&inner, &what, StatusCode::BAD_REQUEST, "AF20030",
            "Start time and end time must both be specified (or both omitted), must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past.");
    }
    if start < now - chrono::Duration::days(7) {
        return refuse(
            &inner,
            &what,
            StatusCode::BAD_REQUEST,
            "AF20055",
            "Start time cannot be more than 7 days in the past.",
        );
    }
    // The content type must have been started (enabled now or earlier).
    let has_sub = inner
        .state()
        .subscriptions
        .get(&tenant)
        .is_some_and(|m| m.contains_key(&ct));
    if !has_sub {
        return refuse(
            &inner,
            &what,
            StatusCode::BAD_REQUEST,
            "AF20022",
            "No subscription found for the specified content type.",
        );
    }
    let salt = format!(
        "{tenant}|{ct}|{}|{}",
        start.timestamp_millis(),
        end.timestamp_millis()
    );
    let cursor = match q.get("nextPage") {
        None => None,
        Some(p) => match decode_cursor(p, &salt) {
            Some(c) => Some(c),
            None => {
                return refuse(
                    &inner,
                    &what,
                    StatusCode::BAD_REQUEST,
                    "AF20031",
                    "Invalid nextPage input.",
                )
            }
        },
    };
    let page_size = inner.config.page_size.max(1);
    let (items, next) = {
        let st = inner.state();
        let feed = st.feeds.get(&(tenant.clone(), ct.clone()));
        let mut matching: Vec<_> = feed
            .into_iter()
            .flatten()
            .map(|&i| &st.blobs[i])
            .filter(|b| start <= b.created && b.created < end)
            .map(|b| (b.created.timestamp_millis(), b.seq, b))
            .filter(|(ms, seq, _)| cursor.is_none_or(|c| (*ms, *seq) >= c))
            .collect();
        matching.sort_by_key(|(ms, seq, _)| (*ms, *seq));
        let next = matching.get(page_size).map(|(ms, seq, _)| (*ms, *seq));
        let items: Vec<Value> = matching
            .iter()
            .take(page_size)
            .map(|(_, _, b)| {
                json!({
                    "contentType": b.blob.content_type,
                    "contentId": b.blob.content_id,
                    "contentUri": b.blob.content_uri,
                    "contentCreated": b.blob.content_created,
                    "contentExpiration": b.blob.content_expiration,
                })
            })
            .collect();
        (items, next)
    };
    let mut resp = HttpResponse::Ok();
    if let Some((ms, seq)) = next {
        let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        let mut u = match url::Url::parse(&format!(
            "{}/api/v1.0/{tenant}/activity/feed/subscriptions/content",
            inner.url
        )) {
            Ok(u) => u,
            Err(_) => return server_error(),
        };
        u.query_pairs_mut()
            .append_pair("contentType", &ct)
            .append_pair(
                "startTime",
                &q.get("startTime")
                    .map_or_else(|| fmt(start), str::to_string),
            )
            .append_pair(
                "endTime",
                &q.get("endTime").map_or_else(|| fmt(end), str::to_string),
            )
            .append_pair("nextPage", &encode_cursor(ms, seq, &salt));
        resp.insert_header(("NextPageUri", u.to_string()));
    }
    resp.json(items)
}

// ------------------------------------------------------------------------------------------
// Content retrieval
// ------------------------------------------------------------------------------------------

/// A syntactically plausible content id: Microsoft's ids are `$`-separated alphanumerics. Real
/// ids are ~100 bytes; the bound is generous so hostile tests can serve over-long ids.
fn content_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1024
        && id.contains('$')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'$' | b'_' | b'-' | b'.'))
}

/// `GET audit/{contentId}`.
async fn get_content(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let (tenant, content_id) = path.into_inner();
    let tenant = tenant_of(&tenant);
    {
        let mut st = inner.state();
        st.content_gets += 1;
        *st.content_gets_for.entry(content_id.clone()).or_insert(0) += 1;
    }
    let what = format!("content get {tenant} {content_id}");
    if let Err(r) = precheck(&inner, &req, &tenant, Route::GetContent, &what, false) {
        return r;
    }
    // Faults: sticky (this id) first, then pushed (deterministic), then random ones. A sticky
    // id must not eat pushed faults meant for the other blobs.
    let (fault, faults) = {
        let mut st = inner.state();
        let fault = match st.sticky.get(&content_id) {
            Some(f) => Some(f.clone()),
            None => st.pushed.pop_front(),
        };
        (fault, st.faults.clone())
    };
    let mut delivery = Delivery::Whole;
    match fault {
        Some(Fault::Throttle429) => {
            return throttled(StatusCode::TOO_MANY_REQUESTS, faults.retry_after)
        }
        Some(Fault::Throttle403) => return throttled(StatusCode::FORBIDDEN, false),
        Some(Fault::ServerError) => return server_error(),
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::Truncate) => delivery = Delivery::Truncate,
        Some(Fault::Expired) => return expired(),
        Some(Fault::Unauthorized) => return unauthorized(),
        Some(Fault::DripFeed { chunk, interval }) => delivery = Delivery::Drip { chunk, interval },
        Some(Fault::RetryAfter { status, secs }) => {
            return throttled_for(fault_status_or_500(status), Some(secs))
        }
        Some(Fault::HugeError {
            status,
            code,
            message_bytes,
        }) => return huge_error(status, &code, message_bytes),
        None => {
            if roll(faults.slow) {
                tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
            }
            if roll(faults.throttle_429) {
                return throttled(StatusCode::TOO_MANY_REQUESTS, faults.retry_after);
            }
            if roll(faults.throttle_403) {
                return throttled(StatusCode::FORBIDDEN, false);
            }
            if roll(faults.server_error) {
                return server_error();
            }
            if roll(faults.truncate) {
                delivery = Delivery::Truncate;
            }
        }
    }
    if !content_id_ok(&content_id) {
        return refuse(
            &inner,
            &what,
            StatusCode::BAD_REQUEST,
            "AF20052",
            "Content ID in the URL is invalid.",
        );
    }
    let found = {
        let st = inner.state();
        st.blob_index
            .get(&content_id)
            .map(|&i| &st.blobs[i])
            .filter(|b| b.blob.tenant_id == tenant)
            .map(|b| {
                (
                    b.expired || past_lifetime(&inner, b.created),
                    b.body.clone(),
                    b.blob.content_type == "DLP.All",
                )
            })
    };
    // DLP content needs its own role, whatever the URL says (it names no content type).
    if let Some((_, _, true)) = &found {
        let roles = bearer_roles(&inner, &req);
        if !roles.iter().any(|r| r == "ActivityFeed.ReadDlp") {
            return refuse(
                &inner,
                &what,
                StatusCode::UNAUTHORIZED,
                "AF10001",
                &format!("The permission set ({}) sent in the request does not include the expected permission ActivityFeed.ReadDlp.", roles.join(",")),
            );
        }
    }
    let found = found.map(|(expired, body, _)| (expired, body));
    let body = match found {
        None => {
            return refuse(
                &inner,
                &what,
                StatusCode::BAD_REQUEST,
                "AF20050",
                "The specified content does not exist.",
            )
        }
        Some((true, _)) => return expired(),
        Some((false, body)) => body,
    };
    match delivery {
        Delivery::Whole => HttpResponse::Ok()
            .content_type("application/json; charset=utf-8")
            .body(body),
        Delivery::Truncate => truncated(body),
        Delivery::Drip { chunk, interval } => drip_fed(body, chunk, interval),
    }
}

/// The roles of the request's bearer token (already verified by [`precheck`]).
fn bearer_roles(inner: &Inner, req: &HttpRequest) -> Vec<String> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[inner.url.as_str(), &format!("{}/", inner.url)]);
    jsonwebtoken::decode::<AccessClaims>(token, &inner.verify_key, &validation)
        .map(|d| d.claims.roles)
        .unwrap_or_default()
}

/// Whether content created at `created` can no longer be retrieved (AF20051).
fn past_lifetime(inner: &Inner, created: DateTime<Utc>) -> bool {
    chrono::Duration::from_std(inner.config.content_lifetime)
        .is_ok_and(|life| Utc::now() >= created + life)
}

/// How a content body that is served at all goes out.
enum Delivery {
    Whole,
    Truncate,
    Drip { chunk: usize, interval: Duration },
}

/// The status of an error-shaped fault; one that cannot carry the error body becomes 500 so
/// that a careless test gets an error answer rather than a malformed response.
fn fault_status_or_500(status: u16) -> StatusCode {
    super::fault_status(status).unwrap_or_else(|| {
        tracing::warn!(target: "o365_sim", "fault status {status} cannot carry a body; answering 500");
        StatusCode::INTERNAL_SERVER_ERROR
    })
}

/// An AF error whose message is exactly `message_bytes` bytes (ASCII, so no escaping changes
/// the count).
fn huge_error(status: u16, code: &str, message_bytes: usize) -> HttpResponse {
    const TEXT: &[u8] = b"An internal error occurred. Retry the request. ";
    let message: String = TEXT
        .iter()
        .cycle()
        .take(message_bytes)
        .map(|&b| char::from(b))
        .collect();
    af(fault_status_or_500(status), code, &message)
}

/// 200 with a Content-Length of the full body, sent `chunk` bytes at a time with `interval`
/// between chunks: every read is quick, the whole is slow.
fn drip_fed(body: bytes::Bytes, chunk: usize, interval: Duration) -> HttpResponse {
    let total = body.len() as u64;
    let chunk = chunk.max(1);
    let stream = futures_util::stream::unfold((body, true), move |(rest, first)| async move {
        if rest.is_empty() {
            return None;
        }
        if !first {
            tokio::time::sleep(interval).await;
        }
        let n = chunk.min(rest.len());
        Some((
            Ok::<_, std::io::Error>(rest.slice(..n)),
            (rest.slice(n..), false),
        ))
    });
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(SizedStream::new(total, Box::pin(stream)))
}

fn expired() -> HttpResponse {
    af(StatusCode::BAD_REQUEST, "AF20051", "Content requested with the key has already expired. Content older than 7 days cannot be retrieved.")
}

/// 200 with a Content-Length of the full body, but only the first half is sent before the
/// stream fails and the connection is closed.
fn truncated(body: bytes::Bytes) -> HttpResponse {
    let total = body.len() as u64;
    let half = body.slice(..body.len() / 2);
    let stream = futures_util::stream::unfold(0u8, move |step| {
        let half = half.clone();
        async move {
            match step {
                0 => Some((Ok::<_, std::io::Error>(half), 1)),
                1 => {
                    // Let the first half reach the client before the connection dies.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((
                        Err(std::io::Error::other("truncated by the simulator's fault")),
                        2,
                    ))
                }
                _ => None,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("application/json; charset=utf-8")
        .body(SizedStream::new(total, Box::pin(stream)))
}

/// Any other path under the feed: Microsoft answers 404 with an AF body.
async fn unknown_operation(inner: web::Data<Inner>, req: HttpRequest) -> HttpResponse {
    let tenant = req
        .match_info()
        .get("tenant")
        .unwrap_or("")
        .to_ascii_lowercase();
    count_call(&inner, &tenant, Route::Unknown);
    inner.reject(format!("unknown operation {} {}", req.method(), req.path()));
    af(
        StatusCode::NOT_FOUND,
        "AF20001",
        "The requested operation does not exist.",
    )
}
