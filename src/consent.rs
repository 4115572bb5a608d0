//! Tenant onboarding through admin consent (Get started with Office 365 Management APIs, "Get
//! Office 365 tenant admin consent" and "Request an access token using the authorization code";
//! docs/ONBOARDING.md, "3. Onboard a customer tenant"). `GET /consent` shows a page with a
//! button; `GET /consent/start` creates a single-use `state` bound to the browser and redirects
//! to Entra's authorize URL; `GET /consent/callback` verifies and consumes the state, exchanges
//! the code at the `common` endpoint, reads `tid` from the token (never from the query string)
//! and, as `O365_CONSENT_MODE` says ([`admission`]), registers the tenant and starts its
//! subscriptions, registers it pending approval, or registers nothing.
//!
//! **The state is bound to the browser that started the flow** (RFC 6749 §10.12): the start
//! sets a random nonce in a cookie and keeps only its SHA-256 beside the state; the callback is
//! honoured only when the same browser brings the nonce back. A callback replayed from another
//! browser — e.g. an attacker's own `code` and `state` planted on a victim — is refused before
//! the code is redeemed, and leaves the state for its own browser. The cookie is `HttpOnly`
//! (no script reads it), `Path={public path}/consent` (sent nowhere else), `Max-Age` the
//! state's 10 minutes, `Secure` when `O365_PUBLIC_URL` is https, and `SameSite=Lax`: the
//! callback is a top-level GET navigation that arrives from Entra's site, and `Strict` cookies
//! are withheld from any request a cross-site page started, so with `Strict` the callback would
//! never see the nonce; `Lax` sends it on exactly that kind of request (top-level, safe method)
//! and still withholds it from cross-site subrequests and POSTs. A browser that starts twice
//! (two tabs) keeps one nonce, so both flows complete.
//!
//! **Starts are bounded**: per client ([`limiter`]: `O365_CONSENT_STARTS_PER_MINUTE`, 429 with
//! `Retry-After`) and in total (`O365_CONSENT_MAX_PENDING` states in progress across all
//! replicas, kept in Redis; beyond it 503 with `Retry-After`), so a flood of unauthenticated
//! starts cannot hold unbounded memory.
//!
//! `o365-relay consent-url` prints `{O365_PUBLIC_URL}/consent/start`: a state minted on the
//! operator's terminal could not be bound to the admin's browser.

pub mod admission;
pub mod limiter;
mod pages;

pub use pages::{esc, permissions};

use crate::config::{BaseUrl, ConsentMode, IpNet};
use crate::domain::{ContentType, TenantId};
use crate::onboarding::{AddRequest, Onboarding};
use crate::store::consent::Taken;
use crate::store::{Store, StoreError};
use crate::tenants::{AddedBy, TenantError, TenantState};
use crate::tokens::{TokenError, TokenProvider};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use admission::{Admission, Verdict};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use limiter::{Admit, RateLimiter};
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const STATE_TTL: Duration = Duration::from_secs(600);
/// The cookie holding the browser's nonce.
pub const COOKIE: &str = "o365_consent";
/// A nonce: 32 random bytes, base64url without padding.
const NONCE_LEN: usize = 43;
/// What a browser refused for the cap on pending states is told to wait.
const BUSY_RETRY_AFTER: u64 = 60;
/// When (Unix seconds) the cap on pending states was last logged, so a flood logs once a minute.
static CAP_WARNED: AtomicU64 = AtomicU64::new(0);

/// True at most once a minute per `last` (which it updates).
fn once_a_minute(last: &AtomicU64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let before = last.load(Ordering::Relaxed);
    now >= before.saturating_add(60)
        && last
            .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// What the consent pages need.
pub struct Consent {
    /// Keeps the single-use `state`s.
    pub store: Arc<Store>,
    /// Exchanges the authorization code at Entra ID.
    pub tokens: Arc<TokenProvider>,
    pub onboarding: Arc<Onboarding>,
    /// `O365_CONSENT_MODE` and its allowlist.
    pub admission: Arc<Admission>,
    /// `O365_CONSENT_STARTS_PER_MINUTE`, per client.
    pub limiter: RateLimiter,
    /// `O365_TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// `O365_CONSENT_MAX_PENDING`.
    pub max_pending: u32,
    /// `O365_CONTENT_TYPES`, listed on the page.
    pub content_types: Vec<ContentType>,
    /// `O365_LOGIN_URL` (Entra ID's authorize endpoint lives under it).
    pub login_url: BaseUrl,
    /// `O365_MANAGE_URL`: the `resource` consented to, and the `aud` the token must carry.
    pub manage_url: BaseUrl,
    pub client_id: String,
    /// `{O365_PUBLIC_URL}/consent/callback`; `None` without a public URL.
    pub redirect_uri: Option<String>,
    /// `O365_PUBLIC_URL` (the cookie's path and whether it is `Secure`).
    pub public_url: Option<BaseUrl>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/consent", web::get().to(page))
        .route("/consent/start", web::get().to(start))
        .route("/consent/callback", web::get().to(callback));
}

/// Why a consent step failed. The `Display` text is what the admin reads on the error page;
/// what Entra ID or Redis said stays in the `source`, which is logged.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("This deployment has no public URL configured (O365_PUBLIC_URL).")]
    NoPublicUrl,
    #[error("Temporarily unavailable. Please try again in a minute.")]
    StateStore(#[source] StoreError),
    #[error("Too many attempts from your network. Please wait a moment and try again.")]
    TooManyStarts { retry_after: u64 },
    #[error("Too many sign-ins are in progress right now. Please try again in a few minutes.")]
    TooManyPending,
    #[error("This sign-in link is invalid, expired or was already used. Start again from the consent page.")]
    InvalidState,
    #[error("This sign-in was started in another browser, or your browser did not keep our cookie. Start again from the consent page in this browser.")]
    OtherBrowser,
    #[error("Consent was declined, so nothing was connected.")]
    Declined,
    #[error("Microsoft reported an error: {0}")]
    Microsoft(String),
    #[error("Microsoft did not return an authorization code.")]
    NoCode,
    #[error("Microsoft did not accept the authorization code. Start again from the consent page.")]
    CodeRefused(#[source] TokenError),
    #[error("Microsoft returned a token we could not read.")]
    UnreadableToken,
    #[error("The token from Microsoft does not name a tenant for the Management API.")]
    NoTenant,
    #[error("This service does not serve tenant {0}.")]
    NotServed(TenantId),
    #[error("The tenant could not be registered right now. Please try again in a minute.")]
    Register(#[source] TenantError),
}

impl ResponseError for ConsentError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsentError::StateStore(_) | ConsentError::TooManyPending => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ConsentError::TooManyStarts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ConsentError::NotServed(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match std::error::Error::source(self) {
            Some(cause) => {
                tracing::warn!(error = %self, cause = %cause, "Consent step failed.")
            }
            // A flood is not worth a line per request: one client over its budget is debug;
            // the cap on pending states reached is worth a warning, at most once a minute.
            None if matches!(self, ConsentError::TooManyStarts { .. }) => {
                tracing::debug!(error = %self, "Consent step refused.")
            }
            None if matches!(self, ConsentError::TooManyPending) => {
                if once_a_minute(&CAP_WARNED) {
                    tracing::warn!("O365_CONSENT_MAX_PENDING consents are in progress: new starts are refused (503) until some complete or expire.")
                }
            }
            None => tracing::info!(error = %self, "Consent step refused."),
        }
        match self {
            ConsentError::StateStore(_) => pages::unavailable(),
            ConsentError::TooManyStarts { retry_after } => {
                pages::try_later(self.status_code(), &self.to_string(), *retry_after)
            }
            ConsentError::TooManyPending => {
                pages::try_later(self.status_code(), &self.to_string(), BUSY_RETRY_AFTER)
            }
            ConsentError::NotServed(tenant) => pages::not_served(tenant),
            other => pages::error_page(other.status_code(), &other.to_string()),
        }
    }
}

async fn page(consent: web::Data<Consent>) -> HttpResponse {
    let note = match consent.admission.mode() {
        ConsentMode::Open => "",
        ConsentMode::Allowlist => {
            "<p><small>This service connects only the organisations its operator has agreed to serve; any other will be told so after signing in, and nothing is collected from it.</small></p>"
        }
        ConsentMode::Approval => {
            "<p><small>After your consent, the operator of this service approves your tenant before any audit data is collected.</small></p>"
        }
    };
    pages::consent_page(&consent.content_types, note)
}

/// The browser's nonce from the `Cookie` header(s), if one is well-formed.
fn nonce_of(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| {
            *name == COOKIE
                && value.len() == NONCE_LEN
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|(_, value)| value.to_string())
}

/// Hex SHA-256 of a nonce: what is kept beside the state.
fn nonce_hash(nonce: &str) -> String {
    openssl::sha::sha256(nonce.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `Set-Cookie` for `nonce`; see the module doc for each attribute.
fn set_cookie(public_url: Option<&BaseUrl>, nonce: &str) -> String {
    let (path, secure) = match public_url {
        Some(u) => (
            format!("{}/consent", u.url().path().trim_end_matches('/')),
            u.is_https(),
        ),
        None => ("/consent".to_string(), false),
    };
    format!(
        "{COOKIE}={nonce}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax{}",
        STATE_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

impl Consent {
    /// Who a request is attributed to for the rate limit ([`crate::client_address`]).
    fn client(&self, req: &HttpRequest) -> IpAddr {
        crate::client_address::of_request(req, &self.trusted_proxies)
    }

    /// `{login}/common/oauth2/authorize?response_type=code&resource=…&client_id=…&redirect_uri=…&state=…`.
    fn authorize_url(&self, redirect_uri: &str, state: &str) -> String {
        let mut url = url::Url::parse(&format!("{}/common/oauth2/authorize", self.login_url))
            .expect("valid login url");
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("resource", &self.manage_url)
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state);
        url.to_string()
    }
}

async fn start(
    req: HttpRequest,
    consent: web::Data<Consent>,
) -> Result<HttpResponse, ConsentError> {
    if let Admit::No(wait) = consent.limiter.check(consent.client(&req)) {
        return Err(ConsentError::TooManyStarts {
            retry_after: wait.as_secs(),
        });
    }
    let redirect_uri = consent
        .redirect_uri
        .as_deref()
        .ok_or(ConsentError::NoPublicUrl)?;
    let nonce =
        nonce_of(&req).unwrap_or_else(|| URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()));
    let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let issued = consent
        .store
        .consent()
        .issue(&state, &nonce_hash(&nonce), STATE_TTL, consent.max_pending)
        .await
        .map_err(ConsentError::StateStore)?;
    if !issued {
        return Err(ConsentError::TooManyPending);
    }
    let mut response = HttpResponse::Found()
        .insert_header((
            header::LOCATION,
            consent.authorize_url(redirect_uri, &state),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    let cookie = HeaderValue::from_str(&set_cookie(consent.public_url.as_ref(), &nonce))
        .expect("a cookie is header-safe");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads claims from a JWT we received directly from Entra's token endpoint over our own
/// connection (so its origin is already established; Get started with Office 365 Management
/// APIs, "Request an access token using the authorization code", says to extract `tid` from it).
fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?).ok()
}

async fn callback(
    req: HttpRequest,
    q: web::Query<Callback>,
    consent: web::Data<Consent>,
) -> Result<HttpResponse, ConsentError> {
    // The state (and the browser it is bound to) is checked before anything else, errors
    // included; it is consumed only by its own browser.
    let state = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or(ConsentError::InvalidState)?;
    let presented = nonce_of(&req).map(|n| nonce_hash(&n)).unwrap_or_default();
    match consent
        .store
        .consent()
        .take(state, &presented)
        .await
        .map_err(ConsentError::StateStore)?
    {
        Taken::Consumed => {}
        Taken::Unknown => return Err(ConsentError::InvalidState),
        Taken::OtherBrowser => return Err(ConsentError::OtherBrowser),
    }
    if let Some(err) = &q.error {
        if err == "access_denied" {
            return Err(ConsentError::Declined);
        }
        let desc = q.error_description.as_deref().unwrap_or("");
        return Err(ConsentError::Microsoft(format!(
            "{err}. {}",
            desc.split(['\r', '\n']).next().unwrap_or("")
        )));
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or(ConsentError::NoCode)?;
    let redirect_uri = consent.redirect_uri.as_deref().unwrap_or_default();
    let token = consent
        .tokens
        .entra()
        .exchange_code(code, redirect_uri)
        .await
        .map_err(ConsentError::CodeRefused)?;
    let c = claims(&token).ok_or(ConsentError::UnreadableToken)?;
    let aud_ok = c
        .get("aud")
        .and_then(|a| a.as_str())
        .is_some_and(|a| a.trim_end_matches('/') == consent.manage_url.as_str());
    let tenant = c
        .get("tid")
        .and_then(|t| t.as_str())
        .and_then(|t| TenantId::parse(t).ok());
    let (Some(tenant), true) = (tenant, aud_ok) else {
        return Err(ConsentError::NoTenant);
    };
    let upn = c
        .get("upn")
        .or_else(|| c.get("unique_name"))
        .and_then(|u| u.as_str())
        .map(str::to_string);
    let new_state = match consent
        .admission
        .verdict(&tenant)
        .await
        .map_err(ConsentError::StateStore)?
    {
        Verdict::Register(state) => state,
        Verdict::NotServed => {
            tracing::warn!(tenant_id = %tenant, consented_by = upn.as_deref().unwrap_or(""), "Consent from a tenant not on the allowlist: nothing registered.");
            return Err(ConsentError::NotServed(tenant));
        }
    };
    let added = consent
        .onboarding
        .add(
            &tenant,
            AddRequest {
                added_by: AddedBy::Consent,
                consented_by: upn.clone(),
                start_subscriptions: true,
                state: new_state,
            },
        )
        .await
        .map_err(ConsentError::Register)?;
    Ok(match added.tenant.state {
        TenantState::Pending { .. } => {
            tracing::info!(tenant_id = %tenant, "Consent received; the tenant awaits approval.");
            pages::awaiting_approval(&tenant, upn.as_deref())
        }
        _ => pages::connected(&tenant, upn.as_deref(), &added.subscriptions),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cookies: &[&str]) -> HttpRequest {
        let mut req = actix_web::test::TestRequest::default();
        for c in cookies {
            req = req.append_header((header::COOKIE, *c));
        }
        req.to_http_request()
    }

    #[test]
    fn the_nonce_is_read_only_from_a_well_formed_cookie_of_ours() {
        let nonce = "A".repeat(NONCE_LEN);
        assert_eq!(
            nonce_of(&request(&[&format!("other=1; {COOKIE}={nonce}; x=y")])),
            Some(nonce.clone())
        );
        assert_eq!(
            nonce_of(&request(&["a=b", &format!("{COOKIE}={nonce}")])),
            Some(nonce.clone()),
            "several Cookie headers (HTTP/2)"
        );
        for bad in [
            format!("{COOKIE}=short"),
            format!("{COOKIE}={}!", "A".repeat(NONCE_LEN - 1)),
            format!("x{COOKIE}={nonce}"),
            String::new(),
        ] {
            assert_eq!(nonce_of(&request(&[&bad])), None, "{bad}");
        }
        assert_eq!(nonce_hash("abc").len(), 64);
        assert_ne!(nonce_hash("abc"), nonce_hash("abd"));
    }

    #[test]
    fn the_cookie_is_httponly_lax_limited_to_the_consent_path_and_secure_over_https() {
        let https = BaseUrl::parse("https://relay.example.com/o365/").unwrap();
        assert_eq!(
            set_cookie(Some(&https), "n"),
            "o365_consent=n; Path=/o365/consent; Max-Age=600; HttpOnly; SameSite=Lax; Secure"
        );
        let http = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            set_cookie(Some(&http), "n"),
            "o365_consent=n; Path=/consent; Max-Age=600; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn the_cap_warning_is_logged_at_most_once_a_minute() {
        let last = AtomicU64::new(0);
        assert!(once_a_minute(&last));
        assert!(!once_a_minute(&last));
        last.store(last.load(Ordering::Relaxed) - 61, Ordering::Relaxed);
        assert!(once_a_minute(&last));
    }
}
