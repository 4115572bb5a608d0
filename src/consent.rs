//! Tenant onboarding through admin consent (Get started with Office 365 Management APIs, "Get
//! Office 365 tenant admin consent" and "Request an access token using the authorization code";
//! docs/ONBOARDING.md, "3. Onboard a customer tenant"). `GET /consent` shows a page with a
//! button; `GET /consent/start` creates a single-use `state` (kept 10 minutes in Redis) and
//! redirects to Entra's authorize URL; `GET /consent/callback` verifies and consumes the state,
//! exchanges the code at the `common` endpoint, reads `tid` from the token (never from the query
//! string), registers the tenant and starts its subscriptions.

use crate::config::BaseUrl;
use crate::domain::{ContentType, TenantId};
use crate::onboarding::{AddRequest, Onboarding};
use crate::store::{Store, StoreError};
use crate::tenants::{AddedBy, NewTenant, TenantError};
use crate::tokens::{TokenError, TokenProvider};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

const STATE_TTL: Duration = Duration::from_secs(600);

/// What the consent pages need.
pub struct Consent {
    /// Keeps the single-use `state`s.
    pub store: Arc<Store>,
    /// Exchanges the authorization code at Entra ID.
    pub tokens: Arc<TokenProvider>,
    pub onboarding: Arc<Onboarding>,
    /// `O365_CONTENT_TYPES`, listed on the page.
    pub content_types: Vec<ContentType>,
    /// `O365_LOGIN_URL` (Entra ID's authorize endpoint lives under it).
    pub login_url: BaseUrl,
    /// `O365_MANAGE_URL`: the `resource` consented to, and the `aud` the token must carry.
    pub manage_url: BaseUrl,
    pub client_id: String,
    /// `{O365_PUBLIC_URL}/consent/callback`; `None` without a public URL.
    pub redirect_uri: Option<String>,
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
    #[error("This sign-in link is invalid, expired or was already used. Start again from the consent page.")]
    InvalidState,
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
    #[error("The tenant could not be registered right now. Please try again in a minute.")]
    Register(#[source] TenantError),
}

impl ResponseError for ConsentError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsentError::StateStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match std::error::Error::source(self) {
            Some(cause) => {
                tracing::warn!(error = %self, cause = %cause, "Consent step failed.")
            }
            None => tracing::info!(error = %self, "Consent step refused."),
        }
        match self {
            ConsentError::StateStore(_) => html(
                self.status_code(),
                "Try again later",
                "<h1 class=\"err\">Temporarily unavailable</h1><p>Please try again in a minute.</p>",
            ),
            other => error_page(other.status_code(), &other.to_string()),
        }
    }
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn html(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}}
main{{max-width:36rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08)}}
h1{{font-size:1.4rem;margin-top:0}} ul{{padding-left:1.2rem}} code{{background:#eef1f4;padding:.1rem .3rem;border-radius:4px}}
.button{{display:inline-block;background:#0f6cbd;color:#fff;border:0;border-radius:8px;padding:.8rem 1.2rem;font-size:1rem;text-decoration:none;cursor:pointer}}
.ok{{color:#107c10}} .err{{color:#c50f1f}} small{{color:#57606a}}
@media (max-width:40rem){{main{{margin:0;border-radius:0;min-height:100vh}}}}
</style></head><body><main>{body}</main></body></html>"#,
        title = esc(title),
        body = body
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header((
            "Content-Security-Policy",
            // The Connect button is a link, not a form: browsers apply `form-action` to the
            // redirect that follows a form submission, and that redirect goes to Entra's origin.
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'",
        ))
        .body(page)
}

fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    html(
        status,
        "Tenant not connected",
        &format!(
            r#"<h1 class="err">Your tenant was not connected</h1><p id="error">{}</p><p><a class="button" href="/consent">Start again</a></p>"#,
            esc(message)
        ),
    )
}

async fn page(consent: web::Data<Consent>) -> HttpResponse {
    let types: String = consent
        .content_types
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c.as_str())))
        .collect();
    html(
        StatusCode::OK,
        "Connect your Microsoft 365 tenant",
        &format!(
            r#"<h1>Connect your Microsoft 365 tenant</h1>
<p>This service collects your organisation's Office 365 unified audit log through Microsoft's
Office 365 Management Activity API and delivers it to your security pipeline.</p>
<p>A Global Administrator of your tenant will be asked by Microsoft to grant this application
read-only access to the activity feed (<code>ActivityFeed.Read</code>,
<code>ActivityFeed.ReadDlp</code>, <code>ServiceHealth.Read</code>). It cannot change anything in
your tenant. After consent we subscribe to these content types:</p><ul>{types}</ul>
<p><a class="button" id="connect" href="/consent/start">Connect your Microsoft 365 tenant</a></p>
<p><small>You can revoke access at any time under Enterprise applications in the Microsoft Entra admin center.</small></p>"#
        ),
    )
}

impl Consent {
    /// Creates a random single-use `state`, kept in Redis for 10 minutes.
    async fn issue_state(&self) -> Result<String, StoreError> {
        let state = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        self.store.consent().issue(&state, STATE_TTL).await?;
        Ok(state)
    }

    /// The authorize URL with a fresh state: what `/consent/start` redirects to and what
    /// `o365-relay consent-url` prints (single use, valid 10 minutes).
    pub async fn link(&self) -> Result<String, ConsentError> {
        let redirect_uri = self
            .redirect_uri
            .as_deref()
            .ok_or(ConsentError::NoPublicUrl)?;
        let state = self.issue_state().await.map_err(ConsentError::StateStore)?;
        Ok(self.authorize_url(redirect_uri, &state))
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

    /// Verifies and consumes `state`: single use, whatever follows.
    async fn consume_state(&self, state: Option<&str>) -> bool {
        match state.filter(|s| !s.is_empty() && s.len() <= 128) {
            Some(s) => matches!(self.store.consent().take(s).await, Ok(true)),
            None => false,
        }
    }
}

async fn start(consent: web::Data<Consent>) -> Result<HttpResponse, ConsentError> {
    let url = consent.link().await?;
    Ok(HttpResponse::Found()
        .insert_header(("Location", url))
        .insert_header(("Cache-Control", "no-store"))
        .finish())
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
    q: web::Query<Callback>,
    consent: web::Data<Consent>,
) -> Result<HttpResponse, ConsentError> {
    // The state is checked (and consumed) before anything else, errors included.
    if !consent.consume_state(q.state.as_deref()).await {
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
    let added = consent
        .onboarding
        .add(
            &tenant,
            AddRequest {
                added_by: AddedBy::Consent,
                consented_by: upn.clone(),
                start_subscriptions: true,
                state: NewTenant::Healthy,
            },
        )
        .await
        .map_err(ConsentError::Register)?;
    let rows: String = added
        .subscriptions
        .iter()
        .map(|o| {
            format!(
                "<li><code>{}</code>: <span class=\"{}\">{}</span></li>",
                esc(&o.content_type),
                if o.ok { "ok" } else { "err" },
                esc(&o.message)
            )
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        "Tenant connected",
        &format!(
            r#"<h1 class="ok">Your tenant is connected</h1><p>Tenant <code id="tenant">{}</code>{} is now served. Subscriptions:</p><ul id="subscriptions">{rows}</ul>
<p><small>Audit records flow as Microsoft publishes them, often with a delay of up to an hour. You can close this page.</small></p>"#,
            esc(tenant.as_str()),
            upn.map(|u| format!(" (consent by {})", esc(&u)))
                .unwrap_or_default()
        ),
    ))
}
