//! Entra ID: app-only tokens per tenant (client-credentials grant, v1 endpoint) and the
//! authorization-code exchange used by consent. Owns the client assertion and the token cache.
//!
//! Cache: in-process first, then Redis so every replica shares one token per tenant. A token
//! is refreshed once it has less than [`REFRESH_MARGIN`] left (Entra lifetimes are randomised,
//! 60–90 min: `expires_in` is trusted, never assumed). Refreshes are single-flight: one task
//! per process (a per-tenant async mutex) and one replica at a time (`SET NX PX` lock in
//! Redis); the others wait for and read the fresh value.

use crate::config::{Credential, Settings};
use crate::domain::secret::Secret;
use crate::domain::TenantId;
use crate::ops::metrics::Metrics;
use crate::store::Store;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Refresh when less than this is left (MSAL treats < 5 minutes as expired).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// How long a replica may hold the refresh lock.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long a waiter waits for another replica's refresh before fetching itself.
const WAIT_FOR_PEER: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("Entra ID refused the token request ({status}): {error}: {description}")]
    Rejected {
        status: u16,
        error: String,
        description: String,
    },
    /// The cause (with the URL removed) is the source.
    #[error("Entra ID could not be reached: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("Entra ID answered with an unreadable token response: {0}")]
    Malformed(String),
    #[error("cannot build the client assertion: {0}")]
    Assertion(String),
}

impl TokenError {
    /// Whether retrying later may succeed (network, 5xx, throttling) — as opposed to a
    /// configuration or consent problem.
    pub fn is_transient(&self) -> bool {
        match self {
            TokenError::Rejected { status, .. } => *status >= 500 || *status == 429,
            TokenError::Transport(_) | TokenError::Malformed(_) => true,
            TokenError::Assertion(_) => false,
        }
    }
}

/// A bearer token and when it expires (unix seconds).
#[derive(Clone, Serialize, Deserialize)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: i64,
    /// When it was issued (unix seconds): a token shorter-lived than twice the margin is
    /// refreshed at half its life instead, so a short lifetime cannot cause a refresh storm.
    #[serde(default)]
    pub obtained_at: i64,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl AccessToken {
    fn seconds_left(&self) -> i64 {
        self.expires_at - chrono::Utc::now().timestamp()
    }
    fn is_fresh(&self) -> bool {
        let lifetime = (self.expires_at - self.obtained_at).max(0);
        self.seconds_left() > (REFRESH_MARGIN.as_secs() as i64).min(lifetime / 2)
    }
    fn is_usable(&self) -> bool {
        self.seconds_left() > 30
    }
}

/// Entra's v1 token response; numbers arrive as strings.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(deserialize_with = "string_or_number")]
    pub expires_in: i64,
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

/// Builds the RS256 client assertion Entra ID expects (Get started with Office 365 Management
/// APIs, "Request an access token by using client credentials"): header `x5t` = base64url
/// SHA-1 of the DER certificate; `aud` = the exact token URL; `iss` = `sub` = client id;
/// a fresh `jti`; valid for 10 minutes.
pub fn client_assertion(
    cert: &crate::domain::certs::ClientCertificate,
    client_id: &str,
    token_url: &str,
) -> Result<String, TokenError> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("JWT".into());
    header.x5t = Some(cert.x5t.clone());
    let now = chrono::Utc::now().timestamp();
    let claims = AssertionClaims {
        aud: token_url,
        iss: client_id,
        sub: client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: now,
        iat: now,
        exp: now + 600,
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.key_pem.expose())
        .map_err(|e| TokenError::Assertion(e.to_string()))?;
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| TokenError::Assertion(e.to_string()))
}

/// Talks to Entra ID's token endpoints.
#[derive(Clone)]
pub struct EntraClient {
    http: reqwest::Client,
    login_url: String,
    resource: String,
    client_id: String,
    credential: Credential,
}

impl EntraClient {
    pub fn new(settings: &Settings, http: reqwest::Client) -> EntraClient {
        EntraClient {
            http,
            login_url: settings.login_url.to_string(),
            resource: settings.manage_url.to_string(),
            client_id: settings.client_id.clone(),
            credential: settings.credential.clone(),
        }
    }

    /// `{login}/{tenant}/oauth2/token`, or `common` for the code exchange.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{}/oauth2/token", self.login_url, tenant)
    }

    fn credential_form(
        &self,
        token_url: &str,
    ) -> Result<Vec<(&'static str, Secret<String>)>, TokenError> {
        Ok(match &self.credential {
            Credential::Secret(s) => vec![("client_secret", s.clone())],
            Credential::Certificate(c) => vec![
                (
                    "client_assertion_type",
                    Secret::new("urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into()),
                ),
                (
                    "client_assertion",
                    Secret::new(client_assertion(c, &self.client_id, token_url)?),
                ),
            ],
        })
    }

    async fn post(
        &self,
        url: &str,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<serde_json::Value, TokenError> {
        for (k, v) in self.credential_form(url)? {
            form.push((k, v.expose().clone()));
        }
        let resp = self
            .http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Transport(e.without_url()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| TokenError::Transport(e.without_url()))?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| TokenError::Malformed(format!("HTTP {status}, body is not JSON")))?;
        if status != 200 {
            let field = |k: &str| {
                json.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            };
            return Err(TokenError::Rejected {
                status,
                error: field("error"),
                description: field("error_description"),
            });
        }
        Ok(json)
    }

    /// Client-credentials grant for `tenant`.
    pub async fn app_token(&self, tenant: &TenantId) -> Result<AccessToken, TokenError> {
        let url = self.token_url(tenant.as_str());
        let json = self
            .post(
                &url,
                vec![
                    ("grant_type", "client_credentials".into()),
                    ("client_id", self.client_id.clone()),
                    ("resource", self.resource.clone()),
                ],
            )
            .await?;
        let r: TokenResponse =
            serde_json::from_value(json).map_err(|e| TokenError::Malformed(e.to_string()))?;
        let now = chrono::Utc::now().timestamp();
        Ok(AccessToken {
            token: r.access_token,
            expires_at: now + r.expires_in,
            obtained_at: now,
        })
    }

    /// Authorization-code grant at the `common` endpoint (consent). Returns the raw access token.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
    ) -> Result<String, TokenError> {
        let url = self.token_url("common");
        let json = self
            .post(
                &url,
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", code.to_string()),
                    ("client_id", self.client_id.clone()),
                    ("redirect_uri", redirect_uri.to_string()),
                    ("resource", self.resource.clone()),
                ],
            )
            .await?;
        let r: TokenResponse =
            serde_json::from_value(json).map_err(|e| TokenError::Malformed(e.to_string()))?;
        Ok(r.access_token)
    }

    pub fn resource(&self) -> &str {
        &self.resource
    }
}

/// The shared token cache.
pub struct TokenProvider {
    entra: EntraClient,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    memory: Mutex<HashMap<TenantId, AccessToken>>,
    flights: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenProvider {
    pub fn new(entra: EntraClient, store: Arc<Store>, metrics: Arc<Metrics>) -> TokenProvider {
        TokenProvider {
            entra,
            store,
            metrics,
            memory: Mutex::new(HashMap::new()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    pub fn entra(&self) -> &EntraClient {
        &self.entra
    }

    fn cached_in_memory(&self, t: &TenantId) -> Option<AccessToken> {
        self.memory.lock().expect("poisoned").get(t).cloned()
    }

    fn remember(&self, t: &TenantId, tok: &AccessToken) {
        self.memory
            .lock()
            .expect("poisoned")
            .insert(t.clone(), tok.clone());
    }

    async fn cached_in_redis(&self, t: &TenantId) -> Option<AccessToken> {
        let raw = self.store.tokens().get(t).await.ok().flatten()?;
        serde_json::from_str::<AccessToken>(&raw).ok()
    }

    /// A token for `tenant` with at least five minutes left.
    pub async fn get(&self, tenant: &TenantId) -> Result<AccessToken, TokenError> {
        if let Some(t) = self.cached_in_memory(tenant).filter(AccessToken::is_fresh) {
            return Ok(t);
        }
        let flight = self
            .flights
            .lock()
            .expect("poisoned")
            .entry(tenant.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _one_task = flight.lock().await;
        if let Some(t) = self.cached_in_memory(tenant).filter(AccessToken::is_fresh) {
            return Ok(t);
        }
        match self.refresh_shared(tenant).await {
            Ok(t) => {
                self.remember(tenant, &t);
                Ok(t)
            }
            // Keep using a still-valid token when a refresh fails (as MSAL does).
            Err(e) => match self.cached_in_memory(tenant).filter(AccessToken::is_usable) {
                Some(t) => {
                    tracing::warn!(tenant_id = %tenant, error = %e, "Token refresh failed; using the current token until it expires.");
                    Ok(t)
                }
                None => Err(e),
            },
        }
    }

    /// Reads a fresh token from Redis or becomes the one replica that fetches it.
    async fn refresh_shared(&self, tenant: &TenantId) -> Result<AccessToken, TokenError> {
        if let Some(t) = self
            .cached_in_redis(tenant)
            .await
            .filter(AccessToken::is_fresh)
        {
            return Ok(t);
        }
        let me = uuid::Uuid::new_v4().to_string();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_PEER;
        loop {
            match self.store.tokens().try_lock(tenant, &me, LOCK_TTL).await {
                Ok(true) => {
                    // Another replica may have finished between our read and our lock.
                    if let Some(t) = self
                        .cached_in_redis(tenant)
                        .await
                        .filter(AccessToken::is_fresh)
                    {
                        let _ = self.store.tokens().unlock(tenant, &me).await;
                        return Ok(t);
                    }
                    let result = self.fetch(tenant).await;
                    if let Ok(t) = &result {
                        let ttl = Duration::from_secs(t.seconds_left().max(1) as u64);
                        if let Ok(json) = serde_json::to_string(t) {
                            let _ = self.store.tokens().put(tenant, &json, ttl).await;
                        }
                    }
                    let _ = self.store.tokens().unlock(tenant, &me).await;
                    return result;
                }
                Ok(false) => {
                    // A peer is fetching: wait for its value.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(t) = self
                        .cached_in_redis(tenant)
                        .await
                        .filter(AccessToken::is_fresh)
                    {
                        return Ok(t);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(tenant_id = %tenant, "Waited too long for another replica's token refresh; fetching directly.");
                        return self.fetch(tenant).await;
                    }
                }
                // Redis is down: every replica fetches for itself (logged once by the store).
                Err(_) => return self.fetch(tenant).await,
            }
        }
    }

    async fn fetch(&self, tenant: &TenantId) -> Result<AccessToken, TokenError> {
        let result = self.entra.app_token(tenant).await;
        self.metrics
            .token_requests
            .with_label_values(&[if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        match &result {
            Ok(t) => {
                tracing::info!(tenant_id = %tenant, expires_in = t.seconds_left(), "Fetched an app-only token.")
            }
            Err(e) => tracing::warn!(tenant_id = %tenant, error = %e, "Token request failed."),
        }
        result
    }

    /// Drops `token` for `tenant` everywhere (after the Management API answered 401 with it).
    pub async fn invalidate(&self, tenant: &TenantId, token: &str) {
        {
            let mut m = self.memory.lock().expect("poisoned");
            if m.get(tenant).is_some_and(|t| t.token == token) {
                m.remove(tenant);
            }
        }
        if let Some(t) = self.cached_in_redis(tenant).await {
            if t.token == token {
                let _ = self.store.tokens().remove(tenant).await;
            }
        }
    }

    /// Forgets the tenant's token (tenant removed).
    pub async fn forget(&self, tenant: &TenantId) {
        self.memory.lock().expect("poisoned").remove(tenant);
        let _ = self.store.tokens().remove(tenant).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use openssl::hash::MessageDigest;
    use openssl::sign::Verifier;
    use openssl::x509::X509;

    /// Checks the assertion independently of jsonwebtoken: split, decode, verify the RS256
    /// signature with openssl against the certificate, compare `x5t` with our own SHA-1.
    #[test]
    fn client_assertion_is_rs256_signed_with_the_certificate_key_and_names_it() {
        let (key, cert_pem) = crate::domain::certs::generate("assertion test", 10, 2048).unwrap();
        let cert = crate::domain::certs::ClientCertificate::from_pem(&cert_pem, &key).unwrap();
        let url =
            "https://login.microsoftonline.com/41463f53-8812-40f4-890f-865bf6e35190/oauth2/token";
        let jwt = client_assertion(&cert, "a6099727-6b7b-482c-b509-1df309acc563", url).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();

        let x509 = X509::from_pem(&cert_pem).unwrap();
        let expected_x5t = URL_SAFE_NO_PAD.encode(openssl::sha::sha1(&x509.to_der().unwrap()));
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t"], expected_x5t.as_str());

        let pubkey = x509.public_key().unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &pubkey).unwrap();
        v.update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(
            v.verify(&sig).unwrap(),
            "signature must verify with the certificate's key"
        );

        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "a6099727-6b7b-482c-b509-1df309acc563");
        assert_eq!(claims["sub"], claims["iss"]);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
        let (nbf, iat, exp) = (
            claims["nbf"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(nbf, iat);
        assert_eq!(exp - nbf, 600);
        let jwt2 = client_assertion(&cert, "a6099727-6b7b-482c-b509-1df309acc563", url).unwrap();
        assert_ne!(jwt, jwt2, "every assertion carries a fresh jti");
    }

    #[test]
    fn v1_token_responses_with_string_numbers_parse() {
        let r: TokenResponse = serde_json::from_str(
            r#"{"token_type":"Bearer","expires_in":"3599","expires_on":"1431659094","resource":"https://manage.office.com","access_token":"eyJ0"}"#,
        )
        .unwrap();
        assert_eq!(r.expires_in, 3599);
        let r: TokenResponse =
            serde_json::from_str(r#"{"expires_in":4000,"access_token":"x"}"#).unwrap();
        assert_eq!(r.expires_in, 4000);
    }
}
