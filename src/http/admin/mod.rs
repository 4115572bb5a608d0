//! The admin listener (cluster-internal): `/healthz`, `/readyz`, `/metrics` and the admin API
//! (tenants, their approval and subscriptions, the consent allowlist; OPERATIONS.md, "Admin
//! API").
//!
//! Who may use it: [`session`] (the status page's sign-in sessions) and [`throttle`] (failed
//! sign-ins per client); browsers on other sites are refused by [`crate::http::admin::origin`].
//!
//! Errors are [`AdminError`]s: each names the status a client gets and a message written for
//! that client. What Redis, RabbitMQ or Microsoft said stays in the error's `source`, which is
//! logged, never sent: the body names the failing dependency and, for Microsoft, its error code.

pub mod origin;
pub mod session;
pub mod throttle;

use crate::broker::Broker;
use crate::domain::certs::ClientCertificate;
use crate::domain::secret::{constant_time_eq, Secret};
use crate::domain::{ContentType, TenantId};
use crate::http::consent::admission::{Admission, AllowlistError};
use crate::http::html::{self, Forms};
use crate::http::status::StatusReport;
use crate::microsoft::management::{ApiError, Disposition};
use crate::ops::metrics::Metrics;
use crate::ops::supervise::Supervisor;
use crate::pipeline::dead_letters::{Action, DeadLetters, Filter};
use crate::pipeline::work_queue::WorkQueue;
use crate::store::{Store, StoreError};
use crate::tenancy::onboarding::{AddRequest, Onboarding};
use crate::tenancy::subscriptions::Subscriptions;
use crate::tenancy::tenants::{TenantError, Tenants};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;
use session::SessionId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use throttle::{Route, SignInThrottle, Verdict};

/// What the admin listener needs.
pub struct AdminApi {
    pub onboarding: Arc<Onboarding>,
    pub tenants: Arc<Tenants>,
    pub subscriptions: Arc<Subscriptions>,
    pub store: Arc<Store>,
    pub broker: Arc<Broker>,
    pub work_queue: Arc<WorkQueue>,
    pub supervisor: Arc<Supervisor>,
    pub metrics: Arc<Metrics>,
    /// `O365_ADMIN_TOKEN`: when set, the admin API asks for it as a bearer token.
    pub admin_token: Option<Secret<String>>,
    /// Failed sign-ins per client (`O365_ADMIN_LOGIN_FAILURES_PER_MINUTE`).
    pub sign_in: SignInThrottle,
    /// `O365_CONSENT_MODE` and its allowlist (`/admin/consent/allowed`).
    pub admission: Arc<Admission>,
    /// The client certificate, for its expiry metric.
    pub certificate: Option<ClientCertificate>,
    /// Set when a graceful stop begins, so `/readyz` turns 503 and Kubernetes stops routing here.
    pub stopping: Arc<AtomicBool>,
    /// What `/admin/status` and the status page show.
    pub status: Arc<StatusReport>,
}

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
        )
        .route("/admin/", web::get().to(status_page))
        .route("/admin", web::get().to(status_page))
        .route("/admin/login", web::post().to(login))
        .route("/admin/logout", web::post().to(logout))
        .route("/admin/status", web::get().to(status_json))
        .route("/admin/dead-letters", web::get().to(list_dead_letters))
        .route(
            "/admin/dead-letters/requeue",
            web::post().to(requeue_dead_letters),
        )
        .route(
            "/admin/dead-letters/purge",
            web::post().to(purge_dead_letters),
        )
        .route(
            "/admin/tenants/{tid}/approve",
            web::post().to(approve_tenant),
        )
        .route("/admin/consent/allowed", web::get().to(list_allowed))
        .route("/admin/consent/allowed/{tid}", web::put().to(allow_tenant))
        .route(
            "/admin/consent/allowed/{tid}",
            web::delete().to(disallow_tenant),
        );
}

/// Why an admin API request failed. The `Display` text is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// The client sent too many wrong tokens: its token was not compared.
    #[error("too many failed sign-ins from this client; retry in {retry_after} s")]
    Throttled { retry_after: u64 },
    #[error("{0}")]
    BadRequest(String),
    #[error("tenant {0} is not registered")]
    NotRegistered(TenantId),
    #[error("tenant {0} is not on the consent allowlist")]
    NotAllowed(TenantId),
    #[error("tenant {0} is configured in O365_TENANTS; remove it there")]
    Static(TenantId),
    /// The request contradicts the tenant's state (e.g. approving a tenant that is not pending).
    #[error("{0}")]
    Conflict(String),
    #[error("RabbitMQ is unavailable; retry later")]
    Broker(#[source] crate::broker::BrokerError),
    #[error("the tenant registry (Redis) is unavailable; retry later")]
    Store(#[source] StoreError),
    #[error("{}", management_message(.0))]
    Management(#[source] ApiError),
}

fn management_message(e: &ApiError) -> String {
    match e {
        ApiError::Api { code, .. } => format!("the Management API refused the request ({code})"),
        ApiError::Token(_) => {
            "no token for this tenant: check its consent and the relay's credential".into()
        }
        ApiError::Transport { .. } | ApiError::Body(_) => {
            "the Management API could not be reached; retry later".into()
        }
        ApiError::ForeignUrl(_) => "the Management API answered with a foreign address".into(),
    }
}

impl AdminError {
    fn code(&self) -> Option<&str> {
        match self {
            AdminError::Management(e) => Some(e.code()),
            _ => None,
        }
    }
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotRegistered(_) | AdminError::NotAllowed(_) => StatusCode::NOT_FOUND,
            AdminError::Static(_) | AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(_) | AdminError::Broker(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Management(e) => management_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Some(code) = self.code() {
            body["code"] = code.into();
        }
        let mut response = HttpResponse::build(self.status_code());
        if let AdminError::Throttled { retry_after } = self {
            response.insert_header((header::RETRY_AFTER, *retry_after));
        }
        response.json(body)
    }
}

/// A Management API failure as the admin client should see it: a refusal that will not change
/// by retrying is Microsoft's verdict on the request (422 for a tenant or subscription problem,
/// 502 for anything else Microsoft did wrong); throttling and outages are 503, so a client
/// retries; no token is 424 (the request depends on a consent or credential that failed).
fn management_status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::Token(_) => StatusCode::FAILED_DEPENDENCY,
        ApiError::Transport { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::Api { .. } => match e.disposition() {
            Disposition::Retry(_) => StatusCode::SERVICE_UNAVAILABLE,
            Disposition::StartSubscription | Disposition::GiveUp => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        },
        ApiError::Body(_) | ApiError::ForeignUrl(_) => StatusCode::BAD_GATEWAY,
    }
}

impl From<TenantError> for AdminError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::Static(t) => AdminError::Static(t),
            e @ TenantError::NotPending(..) => AdminError::Conflict(e.to_string()),
            TenantError::Store(e) => AdminError::Store(e),
        }
    }
}

impl From<AllowlistError> for AdminError {
    fn from(e: AllowlistError) -> Self {
        match e {
            e @ AllowlistError::Configured(_) => AdminError::Conflict(e.to_string()),
            AllowlistError::Store(e) => AdminError::Store(e),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        AdminError::Store(e)
    }
}

impl From<ApiError> for AdminError {
    fn from(e: ApiError) -> Self {
        AdminError::Management(e)
    }
}

/// Logs what the client is not told.
fn logged(e: AdminError) -> AdminError {
    if let Some(source) = std::error::Error::source(&e) {
        tracing::warn!(error = %e, cause = %source, "Admin API request failed.");
    }
    e
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

/// The bearer token of `req`, if it sent one.
fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// `Authorization: Bearer {O365_ADMIN_TOKEN}` when that variable is set. A wrong or missing
/// token counts against its client, and a client over its budget is refused (429) without its
/// token being compared ([`throttle`]).
fn authorise(req: &HttpRequest, api: &AdminApi) -> Result<(), AdminError> {
    let Some(expected) = &api.admin_token else {
        return Ok(());
    };
    let verdict = api.sign_in.attempt(req, Route::Api, || {
        bearer(req)
            .is_some_and(|given| constant_time_eq(given.as_bytes(), expected.expose().as_bytes()))
    });
    match verdict {
        Verdict::Passed => Ok(()),
        Verdict::Failed => Err(AdminError::Unauthorized),
        Verdict::Throttled(wait) => Err(AdminError::Throttled {
            retry_after: wait.as_secs(),
        }),
    }
}

/// Who asks for a read-only page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// A browser loading the status page: without any credential it gets the sign-in form,
    /// which is no failed sign-in.
    Page,
    /// `GET /admin/status`: the admin API, where a missing token is a failure.
    Api,
}

/// A read-only request: the status page's session ([`session`]), or the bearer token. A
/// session cookie that opens nothing (ended, expired, revoked) is refused without counting as
/// a failure: a session id is not a guess at the token. Redis unreachable is a 503, never a
/// session.
async fn authorise_read(
    req: &HttpRequest,
    api: &AdminApi,
    reader: Reader,
) -> Result<(), AdminError> {
    let Some(expected) = &api.admin_token else {
        return Ok(());
    };
    let cookie = SessionId::of(req);
    if let Some(id) = &cookie {
        let open = session::is_open(&api.store, id, expected)
            .await
            .map_err(|e| logged(e.into()))?;
        if open {
            return Ok(());
        }
    }
    let nothing_to_compare = bearer(req).is_none() && (cookie.is_some() || reader == Reader::Page);
    if nothing_to_compare {
        return Err(AdminError::Unauthorized);
    }
    authorise(req, api)
}

fn tenant_param(tid: &str) -> Result<TenantId, AdminError> {
    TenantId::parse(tid).map_err(|e| AdminError::BadRequest(e.to_string()))
}

async fn list_tenants(
    req: HttpRequest,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let list = api.tenants.list().await.map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok().json(list))
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
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
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
    req: HttpRequest,
    path: web::Path<String>,
    q: web::Query<RemoveQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
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
    req: HttpRequest,
    path: web::Path<String>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
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
    req: HttpRequest,
    path: web::Path<String>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
    match api.onboarding.approve(&tid).await {
        Ok(Some(approved)) => Ok(HttpResponse::Ok().json(approved)),
        Ok(None) => Err(AdminError::NotRegistered(tid)),
        Err(e) => Err(logged(e.into())),
    }
}

async fn list_allowed(
    req: HttpRequest,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let list = api.admission.list().await.map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok().json(list))
}

/// Allows a tenant to onboard: 201 when added, 200 when it was allowed already.
async fn allow_tenant(
    req: HttpRequest,
    path: web::Path<String>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
    let added = api
        .admission
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
    req: HttpRequest,
    path: web::Path<String>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
    if !api
        .admission
        .disallow(&tid)
        .await
        .map_err(|e| logged(e.into()))?
    {
        return Err(AdminError::NotAllowed(tid));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "removed": tid })))
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
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise(&req, &api)?;
    let tid = tenant_param(&path)?;
    let only = q
        .content_type
        .as_deref()
        .map(str::parse::<ContentType>)
        .transpose()
        .map_err(|e| AdminError::BadRequest(e.to_string()))?;
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

async fn status_json(
    req: HttpRequest,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    authorise_read(&req, &api, Reader::Api).await?;
    let status = api.status.collect().await.map_err(|e| logged(e.into()))?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(status))
}

const LOGIN_STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f4f6f8;margin:0}\
form{max-width:24rem;margin:4rem auto;background:#fff;padding:1.5rem;border-radius:10px;box-shadow:0 1px 4px rgba(0,0,0,.1)}\
input{width:100%;padding:.6rem;margin:.6rem 0;font-size:1rem;box-sizing:border-box}\
button{padding:.6rem 1rem;font-size:1rem}.err{color:#c50f1f}";

fn login_page(status: StatusCode, message: &str) -> HttpResponse {
    let body = html::html! {
        form method="post" action="/admin/login" {
            h1 { "o365-relay status" }
            p.err #message { (message) }
            label {
                "Admin token (" code { "O365_ADMIN_TOKEN" } ")"
                input type="password" name="token" autocomplete="current-password" autofocus;
            }
            button type="submit" { "Sign in" }
        }
    };
    html::page(
        status,
        Forms::SameOrigin,
        html::document(
            "o365-relay status: sign in",
            LOGIN_STYLE,
            html::html! {},
            body,
        ),
    )
}

/// The status page; a sign-in form when the admin token is required and not given.
async fn status_page(req: HttpRequest, api: web::Data<AdminApi>) -> HttpResponse {
    match authorise_read(&req, &api, Reader::Page).await {
        Ok(()) => {}
        Err(AdminError::Store(_)) => {
            return login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis, which keeps the sessions, is unavailable: nobody is signed in until it is back. Retry later.",
            )
        }
        Err(AdminError::Throttled { retry_after }) => return throttled_page(retry_after),
        Err(_) => return login_page(StatusCode::UNAUTHORIZED, ""),
    }
    match api.status.collect().await {
        Ok(status) => html::page(
            StatusCode::OK,
            Forms::SameOrigin,
            crate::http::status::html::render(&status, api.admin_token.is_some()),
        ),
        Err(e) => {
            let e = logged(e.into());
            login_page(e.status_code(), &e.to_string())
        }
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// The sign-in form again, for a client over its budget of failures.
fn throttled_page(retry_after: u64) -> HttpResponse {
    let mut page = login_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Too many wrong tokens from this address: try again in {retry_after} s."),
    );
    page.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    page
}

/// 303 to the status page.
fn to_status_page() -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/admin/"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// Exchanges the admin token for a session ([`session`]): a new random id in the cookie.
async fn login(
    req: HttpRequest,
    form: web::Form<LoginForm>,
    api: web::Data<AdminApi>,
) -> HttpResponse {
    let Some(expected) = &api.admin_token else {
        return to_status_page();
    };
    let verdict = api.sign_in.attempt(&req, Route::Login, || {
        constant_time_eq(form.token.as_bytes(), expected.expose().as_bytes())
    });
    match verdict {
        Verdict::Passed => {}
        Verdict::Failed => {
            return login_page(StatusCode::UNAUTHORIZED, "That is not the admin token.")
        }
        Verdict::Throttled(wait) => return throttled_page(wait.as_secs()),
    }
    match session::open(&api.store, expected).await {
        Ok(id) => {
            let mut response = to_status_page();
            let cookie = session::set_cookie(&id, session::is_https(&req));
            response.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_str(&cookie).expect("a cookie is header-safe"),
            );
            response
        }
        Err(e) => {
            logged(e.into());
            login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Cannot sign in now: Redis, which keeps the sessions, is unavailable. Retry later.",
            )
        }
    }
}

/// Ends the browser's session, and tells the browser to forget its cookie. A state change,
/// so [`crate::http::admin::origin`] refuses it from other sites like every other.
async fn logout(req: HttpRequest, api: web::Data<AdminApi>) -> HttpResponse {
    let ended = match SessionId::of(&req) {
        Some(id) => session::end(&api.store, &id).await,
        None => Ok(()),
    };
    let mut response = match ended {
        Ok(()) => to_status_page(),
        Err(e) => {
            logged(e.into());
            login_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Signed out in this browser, but the session store (Redis) is unavailable: the session could not be ended on the server, where it expires by itself within 12 hours. Sign in and out again once Redis is back.",
            )
        }
    };
    let cookie = session::clear_cookie(session::is_https(&req));
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie is header-safe"),
    );
    response
}

/// `?tenant=&reason=&limit=` of the dead-letter endpoints (`confirm=yes` for a purge).
#[derive(Deserialize)]
struct DeadLetterQuery {
    tenant: Option<String>,
    reason: Option<String>,
    limit: Option<usize>,
    confirm: Option<String>,
}

impl DeadLetterQuery {
    fn filter(&self) -> Result<Filter, AdminError> {
        let tenant = self.tenant.as_deref().map(tenant_param).transpose()?;
        if self.reason.as_ref().is_some_and(|r| r.len() > 256) {
            return Err(AdminError::BadRequest("reason: at most 256 bytes".into()));
        }
        Ok(Filter {
            tenant,
            reason: self.reason.clone().filter(|r| !r.is_empty()),
            limit: self.limit,
        })
    }
}

fn dead_letters(api: &AdminApi) -> DeadLetters {
    DeadLetters::new(api.broker.clone(), api.work_queue.names().clone())
}

async fn list_dead_letters(
    req: HttpRequest,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&req, &q, &api, Action::List).await
}

async fn requeue_dead_letters(
    req: HttpRequest,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&req, &q, &api, Action::Requeue).await
}

async fn purge_dead_letters(
    req: HttpRequest,
    q: web::Query<DeadLetterQuery>,
    api: web::Data<AdminApi>,
) -> Result<HttpResponse, AdminError> {
    walk_dead_letters(&req, &q, &api, Action::Purge).await
}

/// One walk of the dead-letter queue; a purge asks for `confirm=yes`, as the CLI asks its
/// operator.
async fn walk_dead_letters(
    req: &HttpRequest,
    q: &DeadLetterQuery,
    api: &AdminApi,
    action: Action,
) -> Result<HttpResponse, AdminError> {
    authorise(req, api)?;
    let filter = q.filter()?;
    if action == Action::Purge && q.confirm.as_deref() != Some("yes") {
        return Err(AdminError::BadRequest(
            "a purge deletes dead letters for good: add confirm=yes".into(),
        ));
    }
    let walked = dead_letters(api)
        .walk(&filter, action)
        .await
        .map_err(|e| logged(AdminError::Broker(e)))?;
    Ok(HttpResponse::Ok().json(walked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outside_text_never_becomes_markup_on_the_sign_in_page() {
        use test_support::markup::{assert_same_outline, HOSTILE};
        let body = |text: &str| {
            let page = login_page(StatusCode::UNAUTHORIZED, text);
            async move {
                let bytes = actix_web::body::to_bytes(page.into_body()).await.unwrap();
                String::from_utf8(bytes.to_vec()).unwrap()
            }
        };
        let hostile = body(HOSTILE).await;
        assert_same_outline(&body("plain text").await, &hostile);
        assert!(hostile.contains(r"\u{1b}]0;pwned\u{7}"), "{hostile}");
    }

    fn api(status: u16, code: &str) -> ApiError {
        ApiError::Api {
            status,
            code: code.into(),
            message: "internal detail from Microsoft".into(),
            retry_after: None,
        }
    }

    #[test]
    fn management_errors_keep_their_code_and_hide_microsofts_text() {
        for (e, status) in [
            (api(429, "AF429"), StatusCode::SERVICE_UNAVAILABLE),
            (api(500, "AF50000"), StatusCode::SERVICE_UNAVAILABLE),
            (api(400, "AF20022"), StatusCode::UNPROCESSABLE_ENTITY),
            (api(403, "AF10001"), StatusCode::UNPROCESSABLE_ENTITY),
            (
                ApiError::Transport {
                    during: "sending the request",
                    source: "connection refused by 10.0.0.7".into(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                ApiError::Body("unreadable at byte 7".into()),
                StatusCode::BAD_GATEWAY,
            ),
        ] {
            let code = e.code().to_string();
            let err = AdminError::from(e);
            assert_eq!(err.status_code(), status, "{err:?}");
            let text = err.to_string();
            assert!(!text.contains("internal detail"), "{text}");
            assert!(!text.contains("10.0.0.7"), "{text}");
            assert_eq!(err.code(), Some(code.as_str()));
            // The cause is kept for the log.
            assert!(std::error::Error::source(&err).is_some());
        }
    }

    #[test]
    fn store_errors_name_the_dependency_not_its_message() {
        let err = AdminError::from(StoreError::Unavailable("10.1.2.3:6379 refused".into()));
        assert_eq!(err.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!err.to_string().contains("10.1.2.3"));
        assert!(err.to_string().contains("Redis"));
    }
}
