//! Entra ID (v1 endpoints): client-credentials tokens (secret or RS256 client assertion),
//! the admin-consent page and the authorization-code exchange.
//!
//! Rules implemented (Microsoft identity platform, "certificate credentials" and v1 OAuth docs):
//! - the assertion is RS256, its header `x5t` is the base64url SHA-1 thumbprint of a registered
//!   certificate, and its signature verifies with that certificate's key;
//! - `aud` is exactly the token endpoint URL, `iss` == `sub` == client id, `exp` in the future,
//!   `nbf` not in the future (60 s skew), lifetime at most one hour, `jti` never replayed;
//! - v1 token responses carry numbers as strings.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use serde_json::{json, Value};

use super::Inner;

/// The JWT-bearer client assertion type.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// App roles granted to the simulated app in every tenant: what the relay asks for (its
/// consent page and docs/ONBOARDING.md), so the tests prove it needs nothing more.
pub(crate) const ROLES: [&str; 2] = ["ActivityFeed.Read", "ActivityFeed.ReadDlp"];
/// Authorization codes are valid for 10 minutes.
const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Clock skew allowed on the assertion's `nbf`.
const NBF_SKEW: i64 = 60;
/// Longest assertion lifetime accepted (`exp - nbf`).
const MAX_ASSERTION_LIFETIME: i64 = 3600;

pub(crate) fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/common/oauth2/authorize", web::get().to(authorize))
        .route(
            "/common/oauth2/authorize/decision",
            web::post().to(decision),
        )
        .route("/{tenant}/oauth2/token", web::post().to(token));
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An Entra-shaped OAuth error: `{"error":..,"error_description":"AADSTSxxxx: .."}`.
fn oauth_error(
    inner: &Inner,
    status: StatusCode,
    error: &str,
    description: String,
) -> HttpResponse {
    inner.reject(format!("token endpoint: {status} {error}: {description}"));
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    HttpResponse::build(status).json(json!({
        "error": error,
        "error_description": format!("{description}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {now}",
            uuid::Uuid::new_v4(), uuid::Uuid::new_v4()),
        "error_codes": [aadsts_code(&description)],
        "timestamp": now.to_string(),
    }))
}

fn aadsts_code(description: &str) -> u64 {
    description
        .strip_prefix("AADSTS")
        .and_then(|s| s.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Parse a form body into a map (the first value of a repeated key wins).
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

fn is_form(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

/// The resource must be the Management API base URL (the sim's own URL).
fn resource_ok(inner: &Inner, resource: &str) -> bool {
    resource.trim_end_matches('/') == inner.url
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // openssl::memcmp::eq panics on different lengths: compare the lengths first.
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

/// `POST /{tenant}/oauth2/token` and `POST /common/oauth2/token`. Every refusal at a tenant's
/// endpoint is counted for that tenant (`refused_token_requests`), so a test can see that a
/// request reached Entra even when no token was issued.
async fn token(
    inner: web::Data<Inner>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let tenant = path.into_inner().to_ascii_lowercase();
    let resp = answer_token_request(&inner, &req, &tenant, &body);
    if tenant != "common" && !resp.status().is_success() {
        *inner
            .state()
            .refused_token_requests
            .entry(tenant)
            .or_insert(0) += 1;
    }
    resp
}

fn answer_token_request(
    inner: &Inner,
    req: &HttpRequest,
    tenant: &str,
    body: &[u8],
) -> HttpResponse {
    if tenant != "common" && !inner.tenant_known(tenant) {
        return oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    if !is_form(req) {
        return oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must be application/x-www-form-urlencoded.".into(),
        );
    }
    let form = parse_form(body);
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    match (tenant, grant) {
        ("common", "authorization_code") => code_grant(inner, &form),
        ("common", _) => oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("AADSTS70003: The app requested an unsupported grant type '{grant}' on /common (use /{{tenant}} for client_credentials)."),
        ),
        (_, "client_credentials") => client_credentials(inner, tenant, &form),
        (_, "") => oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'.".into(),
        ),
        (_, other) => oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
        ),
    }
}

/// Common checks for both grants: client id, resource, then the client credential.
/// Returns the normalised resource.
#[allow(clippy::result_large_err)]
fn check_client(
    inner: &Inner,
    form: &HashMap<String, String>,
    token_url: &str,
) -> Result<String, HttpResponse> {
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    if client_id.is_empty() {
        return Err(oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'."
                .into(),
        ));
    }
    if !client_id.eq_ignore_ascii_case(&inner.config.client_id) {
        return Err(oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory."),
        ));
    }
    let resource = form.get("resource").map(String::as_str).unwrap_or("");
    if !resource_ok(inner, resource) {
        return Err(oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            format!("AADSTS500011: The resource principal named '{resource}' was not found in the tenant. Expected '{}'.", inner.url),
        ));
    }
    let secret = form.get("client_secret");
    let assertion = form.get("client_assertion");
    match (secret, assertion) {
        (Some(_), Some(_)) => Err(oauth_error(
            inner,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700027: Both client_secret and client_assertion were presented; send exactly one credential.".into(),
        )),
        (Some(secret), None) => match &inner.config.client_secret {
            Some(expected) if constant_time_eq(expected.as_bytes(), secret.as_bytes()) => {
                Ok(inner.url.clone())
            }
            _ => Err(oauth_error(
                inner,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                format!("AADSTS7000215: Invalid client secret provided for app '{client_id}'."),
            )),
        },
        (None, Some(assertion)) => {
            let atype = form.get("client_assertion_type").map(String::as_str).unwrap_or("");
            if atype != ASSERTION_TYPE {
                return Err(invalid_assertion(
                    inner,
                    format!("client_assertion_type must be '{ASSERTION_TYPE}', got '{atype}'"),
                ));
            }
            verify_assertion(inner, assertion, token_url)
                .map_err(|reason| invalid_assertion(inner, reason))?;
            Ok(inner.url.clone())
        }
        (None, None) => Err(oauth_error(
            inner,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
        )),
    }
}

fn invalid_assertion(inner: &Inner, reason: String) -> HttpResponse {
    oauth_error(
        inner,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        format!(
            "AADSTS700027: Client assertion failed signature validation or is invalid: {reason}"
        ),
    )
}

/// Verify a client assertion JWT; `Err(reason)` on any violation.
fn verify_assertion(inner: &Inner, assertion: &str, token_url: &str) -> Result<(), String> {
    use jsonwebtoken::{Algorithm, Validation};
    let header =
        jsonwebtoken::decode_header(assertion).map_err(|e| format!("malformed JWT: {e}"))?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("alg must be RS256, got {:?}", header.alg));
    }
    let x5t = header.x5t.ok_or("header has no x5t")?;
    let cert = inner
        .certs
        .iter()
        .find(|c| c.x5t == x5t)
        .ok_or_else(|| format!("x5t '{x5t}' does not match any registered certificate"))?;
    // Signature only: the claims are checked below with Microsoft's exact rules.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Value>(assertion, &cert.key, &validation)
        .map_err(|e| format!("signature invalid for the certificate with x5t '{x5t}': {e}"))?;
    let claims = data.claims;
    let s = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_string);
    let n = |k: &str| claims.get(k).and_then(Value::as_i64);
    let aud = s("aud").ok_or("aud missing (must be a string)")?;
    if aud != token_url {
        return Err(format!(
            "aud '{aud}' is not the token endpoint '{token_url}'"
        ));
    }
    let client_id = &inner.config.client_id;
    if s("iss").as_deref() != Some(client_id.as_str()) {
        return Err(format!("iss must be the client id '{client_id}'"));
    }
    if s("sub").as_deref() != Some(client_id.as_str()) {
        return Err(format!("sub must be the client id '{client_id}'"));
    }
    let now = now_unix();
    let exp = n("exp").ok_or("exp missing")?;
    if exp <= now {
        return Err(format!("assertion expired (exp {exp} <= now {now})"));
    }
    let nbf = n("nbf").ok_or("nbf missing")?;
    if nbf > now + NBF_SKEW {
        return Err(format!(
            "assertion not yet valid (nbf {nbf} > now {now} + {NBF_SKEW}s)"
        ));
    }
    if exp - nbf > MAX_ASSERTION_LIFETIME {
        return Err(format!("assertion lifetime {}s exceeds 1 hour", exp - nbf));
    }
    let jti = s("jti").filter(|j| !j.is_empty()).ok_or("jti missing")?;
    let mut st = inner.state();
    if !st.seen_jti.insert(jti.clone()) {
        return Err(format!("jti '{jti}' was already used (replay)"));
    }
    Ok(())
}

/// Sign an access token (or id token) with the sim's key.
fn sign(inner: &Inner, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("o365-sim-1".into());
    jsonwebtoken::encode(&header, claims, &inner.signing_key).unwrap_or_else(|e| {
        tracing::error!(target: "o365_sim", "signing failed: {e}");
        String::new()
    })
}

/// Build the access token claims and the v1 token response.
fn token_response(
    inner: &Inner,
    tenant: &str,
    resource: &str,
    upn: Option<&str>,
) -> serde_json::Map<String, Value> {
    let now = now_unix();
    let lifetime = inner.config.token_lifetime.as_secs() as i64;
    let exp = now + lifetime;
    let roles: Vec<&str> = {
        let st = inner.state();
        let revoked = st.revoked_roles.get(&tenant.to_ascii_lowercase());
        ROLES
            .iter()
            .copied()
            .filter(|r| revoked.is_none_or(|set| !set.contains(*r)))
            .collect()
    };
    let mut claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now,
        "nbf": now,
        "exp": exp,
        "appid": inner.config.client_id,
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{tenant}/"),
        "oid": uuid::Uuid::new_v4().to_string(),
        "roles": roles,
        "sub": uuid::Uuid::new_v4().to_string(),
        "tid": tenant,
        "ver": "1.0",
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(upn), Some(obj)) = (upn, claims.as_object_mut()) {
        obj.insert("upn".into(), json!(upn));
        obj.insert("unique_name".into(), json!(upn));
        obj.insert("scp".into(), json!(ROLES.join(" ")));
    }
    let access_token = sign(inner, &claims);
    let mut out = serde_json::Map::new();
    out.insert("token_type".into(), json!("Bearer"));
    out.insert("expires_in".into(), json!(lifetime.to_string()));
    out.insert("ext_expires_in".into(), json!(lifetime.to_string()));
    out.insert("expires_on".into(), json!(exp.to_string()));
    out.insert("not_before".into(), json!(now.to_string()));
    out.insert("resource".into(), json!(resource));
    out.insert("access_token".into(), json!(access_token));
    out
}

fn client_credentials(inner: &Inner, tenant: &str, form: &HashMap<String, String>) -> HttpResponse {
    let token_url = format!("{}/{tenant}/oauth2/token", inner.url);
    let resource = match check_client(inner, form, &token_url) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    // What Entra answers once the tenant's admin removed the app (consent withdrawn): the
    // credential is good, but the tenant has no service principal for it.
    if inner.state().withdrawn.contains(tenant) {
        return oauth_error(
            inner,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            format!(
                "AADSTS7000229: The client application {} is missing service principal in the tenant {tenant}.",
                inner.config.client_id
            ),
        );
    }
    *inner
        .state()
        .token_requests
        .entry(tenant.to_string())
        .or_insert(0) += 1;
    HttpResponse::Ok().json(Value::Object(token_response(
        inner, tenant, &resource, None,
    )))
}

fn code_grant(inner: &Inner, form: &HashMap<String, String>) -> HttpResponse {
    let token_url = format!("{}/common/oauth2/token", inner.url);
    let resource = match check_client(inner, form, &token_url) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let code = form.get("code").map(String::as_str).unwrap_or("");
    let redirect_uri = form.get("redirect_uri").map(String::as_str).unwrap_or("");
    let client_id = form.get("client_id").map(String::as_str).unwrap_or("");
    let grant = {
        let mut st = inner.state();
        match st.codes.get_mut(code) {
            None => Err("AADSTS70008: The provided authorization code is invalid or has expired.".to_string()),
            Some(c) if c.used => {
                Err("AADSTS54005: OAuth2 Authorization code was already redeemed, please retry with a new valid code.".to_string())
            }
            Some(c) => {
                // Single use: the first redemption attempt consumes the code.
                c.used = true;
                if c.expires < Instant::now() {
                    Err("AADSTS70008: The provided authorization code or refresh token has expired due to inactivity.".to_string())
                } else if c.redirect_uri != redirect_uri {
                    Err(format!("AADSTS70008: The redirect_uri '{redirect_uri}' does not match the one the code was issued for."))
                } else if !c.client_id.eq_ignore_ascii_case(client_id) {
                    Err("AADSTS70008: The code was issued to another client.".to_string())
                } else if c.resource.trim_end_matches('/') != resource {
                    Err("AADSTS70008: The code was issued for another resource.".to_string())
                } else {
                    Ok((c.tenant.clone(), c.upn.clone()))
                }
            }
        }
    };
    let (tenant, upn) = match grant {
        Ok(g) => g,
        Err(description) => {
            return oauth_error(inner, StatusCode::BAD_REQUEST, "invalid_grant", description)
        }
    };
    let mut out = token_response(inner, &tenant, &resource, Some(&upn));
    let now = now_unix();
    let id_token = sign(
        inner,
        &json!({
            "aud": inner.config.client_id,
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now, "nbf": now, "exp": now + 3600,
            "tid": tenant, "upn": upn, "unique_name": upn,
            "oid": uuid::Uuid::new_v4().to_string(), "ver": "1.0",
        }),
    );
    out.insert("scope".into(), json!(ROLES.join(" ")));
    out.insert("refresh_token".into(), json!(random_token(48)));
    out.insert("id_token".into(), json!(id_token));
    HttpResponse::Ok().json(Value::Object(out))
}

/// A random URL-safe string of `bytes` random bytes.
pub(crate) fn random_token(bytes: usize) -> String {
    let buf: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

// ------------------------------------------------------------------------------------------
// Consent (authorize) page
// ------------------------------------------------------------------------------------------

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn error_page(inner: &Inner, code: &str, message: &str) -> HttpResponse {
    inner.reject(format!("authorize: {code}: {message}"));
    HttpResponse::BadRequest()
        .content_type("text/html; charset=utf-8")
        .body(format!(
            "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body>\
         <h1>Sorry, but we're having trouble signing you in.</h1>\
         <p id=\"error\">{}: {}</p></body></html>",
            html_escape(code),
            html_escape(message)
        ))
}

/// Validate the authorize parameters; `Err((AADSTS code, message))`.
fn validate_authorize(
    inner: &Inner,
    p: &HashMap<String, String>,
) -> Result<(), (&'static str, String)> {
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
    if get("response_type") != "code" {
        return Err((
            "AADSTS900144",
            format!(
                "response_type must be 'code', got '{}'",
                get("response_type")
            ),
        ));
    }
    if get("client_id").is_empty() {
        return Err((
            "AADSTS900144",
            "The request must contain the parameter 'client_id'.".into(),
        ));
    }
    if !get("client_id").eq_ignore_ascii_case(&inner.config.client_id) {
        return Err((
            "AADSTS700016",
            format!(
                "Application with identifier '{}' was not found in the directory.",
                get("client_id")
            ),
        ));
    }
    if !resource_ok(inner, get("resource")) {
        return Err((
            "AADSTS500011",
            format!(
                "The resource principal named '{}' was not found in the tenant.",
                get("resource")
            ),
        ));
    }
    let redirect = get("redirect_uri");
    if redirect.is_empty() {
        return Err((
            "AADSTS900144",
            "The request must contain the parameter 'redirect_uri'.".into(),
        ));
    }
    match url::Url::parse(redirect) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        _ => Err((
            "AADSTS50011",
            format!("The redirect URI '{redirect}' is not a valid absolute URL."),
        )),
    }
}

/// `GET /common/oauth2/authorize`: the admin-consent page, with a tenant picker (field `tenant`,
/// default the configured consent tenant; the decision refuses an unknown one).
async fn authorize(
    inner: web::Data<Inner>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let p = query.into_inner();
    if let Err((code, msg)) = validate_authorize(&inner, &p) {
        return error_page(&inner, code, &msg);
    }
    let hidden: String = [
        "response_type",
        "client_id",
        "resource",
        "redirect_uri",
        "state",
    ]
    .iter()
    .filter_map(|k| p.get(*k).map(|v| (k, v)))
    .map(|(k, v)| {
        format!(
            "<input type=\"hidden\" name=\"{k}\" value=\"{}\">\n",
            html_escape(v)
        )
    })
    .collect();
    let upn = html_escape(&inner.config.consent_upn);
    let app = html_escape(&inner.config.client_id);
    // The account picker: which of the known tenants the admin signs in to (the configured
    // consent tenant unless another is chosen), so a test can consent as several tenants.
    let chosen = inner.consent_tenant();
    let options: String = inner
        .config
        .tenants
        .iter()
        .map(|t| {
            format!(
                "<option value=\"{0}\"{1}>{0}</option>",
                html_escape(t),
                if t.eq_ignore_ascii_case(&chosen) {
                    " selected"
                } else {
                    ""
                }
            )
        })
        .collect();
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Permissions requested</title></head><body>\n\
         <h1>Permissions requested</h1>\n\
         <p>Signed in as <span id=\"upn\">{upn}</span></p>\n\
         <p>The application <b id=\"app\">{app}</b> (o365-relay) needs permission to:</p>\n\
         <ul id=\"permissions\">\n\
         <li>ActivityFeed.Read — Read activity data for your organization</li>\n\
         <li>ActivityFeed.ReadDlp — Read DLP policy events including detected sensitive data</li>\n\
         </ul>\n\
         <p>Accepting grants these permissions for your entire organization.</p>\n\
         <form method=\"post\" action=\"/common/oauth2/authorize/decision\">\n{hidden}\
         <label>Tenant <select id=\"tenant\" name=\"tenant\">{options}</select></label>\n\
         <button id=\"accept\" name=\"decision\" value=\"accept\">Accept</button>\n\
         <button id=\"cancel\" name=\"decision\" value=\"cancel\">Cancel</button>\n\
         </form>\n</body></html>\n"
    );
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page)
}

/// `POST /common/oauth2/authorize/decision`: Accept -> code, Cancel -> access_denied.
async fn decision(inner: web::Data<Inner>, body: web::Bytes) -> HttpResponse {
    let p = parse_form(&body);
    if let Err((code, msg)) = validate_authorize(&inner, &p) {
        return error_page(&inner, code, &msg);
    }
    let redirect = p.get("redirect_uri").cloned().unwrap_or_default();
    let Ok(mut target) = url::Url::parse(&redirect) else {
        return error_page(&inner, "AADSTS50011", "invalid redirect_uri");
    };
    let state = p.get("state");
    let tenant = match p.get("tenant").filter(|t| !t.is_empty()) {
        None => inner.consent_tenant(),
        Some(t) if inner.tenant_known(t) => t.to_ascii_lowercase(),
        Some(t) => return error_page(&inner, "AADSTS90002", &format!("Tenant '{t}' not found.")),
    };
    match p.get("decision").map(String::as_str) {
        Some("accept") => {
            // Consenting (again) restores the app in the tenant.
            {
                let mut st = inner.state();
                st.withdrawn.remove(&tenant.to_ascii_lowercase());
                st.revoked_roles.remove(&tenant.to_ascii_lowercase());
            }
            let code = random_token(48);
            inner.state().codes.insert(
                code.clone(),
                super::AuthCode {
                    client_id: p.get("client_id").cloned().unwrap_or_default(),
                    redirect_uri: redirect.clone(),
                    resource: p.get("resource").cloned().unwrap_or_default(),
                    tenant,
                    upn: inner.config.consent_upn.clone(),
                    expires: Instant::now() + CODE_LIFETIME,
                    used: false,
                },
            );
            {
                let mut q = target.query_pairs_mut();
                q.append_pair("code", &code);
                if let Some(s) = state {
                    q.append_pair("state", s);
                }
                q.append_pair("session_state", &uuid::Uuid::new_v4().to_string());
            }
        }
        Some("cancel") => {
            let mut q = target.query_pairs_mut();
            q.append_pair("error", "access_denied");
            q.append_pair(
                "error_description",
                "AADSTS65004: User declined to consent to access the app.",
            );
            if let Some(s) = state {
                q.append_pair("state", s);
            }
        }
        _ => {
            return error_page(
                &inner,
                "AADSTS900144",
                "decision must be 'accept' or 'cancel'",
            )
        }
    }
    HttpResponse::Found()
        .insert_header((header::LOCATION, target.to_string()))
        .finish()
}
