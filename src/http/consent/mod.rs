//! Tenant onboarding through admin consent (docs/ONBOARDING.md, "3. Onboard a customer
//! tenant"): `GET /consent` shows the button, `/consent/start` redirects to Entra's authorize
//! URL, `/consent/callback` redeems the code, reads `tid` from the token (never the query) and
//! registers the tenant as `O365_CONSENT_MODE` says ([`policy`]).
//!
//! **A start costs the server nothing**: the `state` is signed, not stored ([`state`]: id,
//! expiry, SHA-256 of a nonce we put in a fresh cookie at every start), so no flood of starts
//! can crowd out a real admin ([`limiter`] is only a courtesy). The callback checks MAC, expiry
//! and the browser's nonce (RFC 6749 §10.12) before Redis or Entra see anything, then uses the
//! state once (`SET NX`); another browser's callback uses nothing up. The cookie is
//! `__Host-o365_consent` over https (no sibling host can plant or shadow it), `HttpOnly` and
//! `SameSite=Lax` (the callback is a top-level GET from Entra's site, which `Strict` misses).

pub mod limiter;
mod pages;
pub mod policy;
pub mod state;

pub use pages::permissions;

use crate::config::{BaseUrl, IpNet};
use crate::domain::{ContentType, TenantId};
use crate::microsoft::tokens::{TokenError, TokenProvider};
use crate::store::{Store, StoreError};
use crate::tenancy::onboarding::{AddRequest, Onboarding};
use crate::tenancy::tenants::{AddedBy, TenantError, TenantState};
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use limiter::{Admit, RateLimiter};
use policy::{ConsentPolicy, Verdict};
use serde::Deserialize;
use state::{Claims, Keys, Refused};
use std::net::IpAddr;
use std::sync::Arc;

/// The cookie holding the browser's nonce over http.
pub const COOKIE: &str = "o365_consent";
/// The same over https: the `__Host-` prefix makes browsers accept it only `Secure`, with
/// `Path=/` and no `Domain`.
pub const HOST_COOKIE: &str = "__Host-o365_consent";
/// A nonce: 32 random bytes, base64url without padding.
const NONCE_LEN: usize = 43;

/// What the consent pages need.
pub struct Consent {
    /// Marks states used.
    pub store: Arc<Store>,
    /// Signs and verifies states (`O365_CONSENT_STATE_KEY`, or one shared through Redis).
    pub keys: Keys,
    /// Exchanges the authorization code at Entra ID.
    pub tokens: Arc<TokenProvider>,
    pub onboarding: Arc<Onboarding>,
    /// `O365_CONSENT_MODE` and its allowlist.
    pub consent_policy: Arc<ConsentPolicy>,
    /// `O365_CONSENT_STARTS_PER_MINUTE`, per client.
    pub limiter: RateLimiter,
    /// `O365_TRUSTED_PROXIES`: whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// `O365_CONTENT_TYPES`, listed on the page.
    pub content_types: Vec<ContentType>,
    /// `O365_LOGIN_URL` (Entra ID's authorize endpoint lives under it).
    pub login_url: BaseUrl,
    /// `O365_MANAGE_URL`: the `resource` consented to, and the `aud` the token must carry.
    pub manage_url: BaseUrl,
    pub client_id: String,
    /// `{O365_PUBLIC_URL}/consent/callback`; `None` without a public URL.
    pub redirect_uri: Option<String>,
    /// `O365_PUBLIC_URL` (the cookie's name, path and whether it is `Secure`).
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
    #[error("Temporarily unavailable. Please try again in a minute.")]
    StateKey(#[source] state::KeyError),
    #[error("Temporarily unavailable. Please try again in a minute.")]
    Signing(#[source] openssl::error::ErrorStack),
    #[error("Too many attempts from your network. Please wait a moment and try again.")]
    TooManyStarts { retry_after: u64 },
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
            ConsentError::StateStore(_) | ConsentError::StateKey(_) | ConsentError::Signing(_) => {
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
            // A flood is not worth a line per request: one client over its budget is debug.
            None if matches!(self, ConsentError::TooManyStarts { .. }) => {
                tracing::debug!(error = %self, "Consent step refused.")
            }
            None => tracing::info!(error = %self, "Consent step refused."),
        }
        match self {
            ConsentError::StateStore(_) | ConsentError::StateKey(_) | ConsentError::Signing(_) => {
                pages::unavailable()
            }
            ConsentError::TooManyStarts { retry_after } => {
                pages::try_later(self.status_code(), &self.to_string(), *retry_after)
            }
            ConsentError::NotServed(tenant) => pages::not_served(tenant),
            other => pages::error_page(other.status_code(), &other.to_string()),
        }
    }
}

async fn page(consent: web::Data<Consent>) -> HttpResponse {
    pages::consent_page(&consent.content_types, consent.consent_policy.mode())
}

/// The name of the nonce cookie: `__Host-` prefixed over https.
fn cookie_name(public_url: Option<&BaseUrl>) -> &'static str {
    if public_url.is_some_and(BaseUrl::is_https) {
        HOST_COOKIE
    } else {
        COOKIE
    }
}

/// The browser's nonce from the `Cookie` header(s): the cookie `name`, if well-formed.
fn nonce_of(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, value)| {
            *n == name
                && value.len() == NONCE_LEN
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|(_, value)| value.to_string())
}

/// `Set-Cookie` for `nonce`; see the module doc for each attribute.
fn set_cookie(public_url: Option<&BaseUrl>, nonce: &str) -> String {
    let max_age = state::LIFETIME.as_secs();
    match public_url {
        Some(u) if u.is_https() => format!(
            "{HOST_COOKIE}={nonce}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax; Secure"
        ),
        _ => {
            let base = public_url.map_or("", |u| u.url().path().trim_end_matches('/'));
            format!(
                "{COOKIE}={nonce}; Path={base}/consent; Max-Age={max_age}; HttpOnly; SameSite=Lax"
            )
        }
    }
}

impl Consent {
    /// Who a request is attributed to for the rate limit ([`crate::http::client_address`]).
    fn client(&self, req: &HttpRequest) -> IpAddr {
        crate::http::client_address::of_request(req, &self.trusted_proxies)
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
    let key = consent
        .keys
        .current()
        .await
        .map_err(ConsentError::StateKey)?;
    // Always a nonce of ours: one the client sent may have been planted by someone else.
    let nonce = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let state =
        state::sign(&key, &Claims::new(&nonce, state::now())).map_err(ConsentError::Signing)?;
    let mut response = HttpResponse::Found()
        .insert_header((
            header::LOCATION,
            consent.authorize_url(redirect_uri, &state),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    let cookie = set_cookie(consent.public_url.as_ref(), &nonce);
    crate::http::with_cookie(&mut response, &cookie);
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
    // The state, and the browser it is bound to, are checked before anything else (errors
    // included) and before Redis is asked anything about it; it is used up only by its own
    // browser.
    let parsed = q
        .state
        .as_deref()
        .ok_or(Refused::Malformed)
        .and_then(state::parse);
    let parsed = match parsed {
        Ok(parsed) => parsed,
        Err(why) => {
            tracing::debug!(reason = %why, "Consent state refused.");
            return Err(ConsentError::InvalidState);
        }
    };
    let key = consent
        .keys
        .current()
        .await
        .map_err(ConsentError::StateKey)?;
    let now = state::now();
    let verified = match parsed.verify(&key, now) {
        Ok(claims) => claims,
        Err(Refused::Crypto(e)) => return Err(ConsentError::Signing(e)),
        Err(why) => {
            tracing::debug!(reason = %why, "Consent state refused.");
            return Err(ConsentError::InvalidState);
        }
    };
    let cookie = cookie_name(consent.public_url.as_ref());
    if !verified.is_bound_to(nonce_of(&req, cookie).as_deref()) {
        return Err(ConsentError::OtherBrowser);
    }
    if !consent
        .store
        .consent()
        .use_once(&verified.id_hex(), verified.remaining(now))
        .await
        .map_err(ConsentError::StateStore)?
    {
        tracing::debug!("Consent state refused: already used.");
        return Err(ConsentError::InvalidState);
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
        .consent_policy
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
            nonce_of(
                &request(&[&format!("other=1; {COOKIE}={nonce}; x=y")]),
                COOKIE
            ),
            Some(nonce.clone())
        );
        assert_eq!(
            nonce_of(&request(&["a=b", &format!("{COOKIE}={nonce}")]), COOKIE),
            Some(nonce.clone()),
            "several Cookie headers (HTTP/2)"
        );
        assert_eq!(
            nonce_of(&request(&[&format!("{HOST_COOKIE}={nonce}")]), HOST_COOKIE),
            Some(nonce.clone())
        );
        for bad in [
            format!("{COOKIE}=short"),
            format!("{COOKIE}={}!", "A".repeat(NONCE_LEN - 1)),
            format!("x{COOKIE}={nonce}"),
            String::new(),
        ] {
            assert_eq!(nonce_of(&request(&[&bad]), COOKIE), None, "{bad}");
        }
        // Over https only the __Host- cookie counts (a sibling host can set the other one).
        assert_eq!(
            nonce_of(&request(&[&format!("{COOKIE}={nonce}")]), HOST_COOKIE),
            None
        );
    }

    #[test]
    fn over_https_the_cookie_is_host_prefixed_secure_and_on_the_whole_site() {
        let https = BaseUrl::parse("https://relay.example.com/o365/").unwrap();
        assert_eq!(cookie_name(Some(&https)), HOST_COOKIE);
        assert_eq!(
            set_cookie(Some(&https), "n"),
            "__Host-o365_consent=n; Path=/; Max-Age=600; HttpOnly; SameSite=Lax; Secure"
        );
        let http = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(cookie_name(Some(&http)), COOKIE);
        assert_eq!(
            set_cookie(Some(&http), "n"),
            "o365_consent=n; Path=/consent; Max-Age=600; HttpOnly; SameSite=Lax"
        );
        let http = BaseUrl::parse("http://127.0.0.1:8080/o365").unwrap();
        assert_eq!(
            set_cookie(Some(&http), "n"),
            "o365_consent=n; Path=/o365/consent; Max-Age=600; HttpOnly; SameSite=Lax"
        );
        assert_eq!(cookie_name(None), COOKIE);
    }
}
