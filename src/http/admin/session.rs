//! The status page's sign-in sessions. A browser cannot send a bearer token on a plain page
//! load, so `POST /admin/login` exchanges the admin token for a session, and
//! `POST /admin/logout` ends it.
//!
//! Why it is built so: docs/DESIGN.md, "http/admin/session".

use crate::domain::secret::{constant_time_eq, Secret};
use crate::store::{Store, StoreResult};
use actix_web::http::header;
use actix_web::HttpRequest;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use std::time::Duration;

/// The cookie that holds the session id.
pub const COOKIE: &str = "o365_admin";
/// How long a session lasts, on the server (the key's expiry) and in the browser (`Max-Age`).
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A session id: 32 random bytes, base64url without padding.
const ID_LEN: usize = 43;

/// A session id as the browser holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionId(String);

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionId([redacted])")
    }
}

impl SessionId {
    fn random() -> SessionId {
        SessionId(URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>()))
    }

    /// The session id in the request's cookie, if one is well-formed.
    pub fn of(req: &HttpRequest) -> Option<SessionId> {
        req.headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, value)| {
                *name == COOKIE
                    && value.len() == ID_LEN
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(|(_, value)| SessionId(value.to_string()))
    }

    /// What Redis knows the session by: the hex SHA-256 of the id.
    fn hash(&self) -> String {
        crate::domain::text::hex(&openssl::sha::sha256(self.0.as_bytes()))
    }

    /// The fingerprint of `token` for this session: HMAC-SHA256 keyed by the id.
    fn fingerprint(&self, token: &Secret<String>) -> String {
        let key = PKey::hmac(self.0.as_bytes()).expect("an HMAC key of 43 bytes");
        let mut signer = Signer::new(MessageDigest::sha256(), &key).expect("HMAC-SHA256");
        let mut message = b"o365-relay admin session v2\n".to_vec();
        message.extend_from_slice(token.expose().as_bytes());
        crate::domain::text::hex(&signer.sign_oneshot_to_vec(&message).expect("HMAC-SHA256"))
    }
}

/// Opens a session for whoever just gave `token` (the admin token in force).
pub async fn open(store: &Store, token: &Secret<String>) -> StoreResult<SessionId> {
    let id = SessionId::random();
    store
        .admin_sessions()
        .open(&id.hash(), &id.fingerprint(token), LIFETIME)
        .await?;
    Ok(id)
}

/// Whether `id` names a session that exists, has not expired and was opened with `token`.
pub async fn is_open(store: &Store, id: &SessionId, token: &Secret<String>) -> StoreResult<bool> {
    let kept = store.admin_sessions().fingerprint(&id.hash()).await?;
    Ok(
        kept.is_some_and(|kept| {
            constant_time_eq(kept.as_bytes(), id.fingerprint(token).as_bytes())
        }),
    )
}

/// Ends the session `id` names (if it still exists).
pub async fn end(store: &Store, id: &SessionId) -> StoreResult<()> {
    store.admin_sessions().end(&id.hash()).await
}

/// Whether the request came over https, to the listener or to an ingress in front of it.
pub fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme().eq_ignore_ascii_case("https")
}

/// `Set-Cookie` for a new session; see docs/DESIGN.md, "http/admin/session" for each attribute.
pub fn set_cookie(id: &SessionId, secure: bool) -> String {
    cookie(&id.0, LIFETIME.as_secs(), secure)
}

/// `Set-Cookie` that makes the browser forget its session cookie.
pub fn clear_cookie(secure: bool) -> String {
    cookie("", 0, secure)
}

fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn token(s: &str) -> Secret<String> {
        Secret::new(s.to_string())
    }

    #[test]
    fn ids_are_random_and_fingerprints_depend_on_the_id_and_the_token() {
        let (a, b) = (SessionId::random(), SessionId::random());
        assert_ne!(a, b);
        assert_eq!(a.0.len(), ID_LEN);
        let t = token("admin-token-0123456789");
        assert_eq!(a.fingerprint(&t), a.fingerprint(&t));
        assert_ne!(a.fingerprint(&t), b.fingerprint(&t), "salted by the id");
        assert_ne!(
            a.fingerprint(&t),
            a.fingerprint(&token("another-token-0123"))
        );
        assert_ne!(a.hash(), a.0);
        assert!(!a.fingerprint(&t).contains(&a.hash()));
    }

    #[test]
    fn only_a_well_formed_cookie_of_ours_names_a_session() {
        let id = SessionId::random();
        let with = |cookie: &str| {
            TestRequest::default()
                .insert_header((header::COOKIE, cookie))
                .to_http_request()
        };
        assert_eq!(
            SessionId::of(&with(&format!("a=b; {COOKIE}={}", id.0))),
            Some(id.clone())
        );
        for bad in [
            format!("{COOKIE}={}x", id.0),
            format!("{COOKIE}={}", &id.0[1..]),
            format!("{COOKIE}={}!", &id.0[1..]),
            format!("other={}", id.0),
            format!("{COOKIE}="),
        ] {
            assert_eq!(SessionId::of(&with(&bad)), None, "{bad}");
        }
        assert_eq!(
            SessionId::of(&TestRequest::default().to_http_request()),
            None
        );
    }

    #[test]
    fn the_cookie_is_httponly_strict_limited_to_admin_and_secure_over_https() {
        let id = SessionId::random();
        assert_eq!(
            set_cookie(&id, false),
            format!(
                "o365_admin={}; Path=/admin; Max-Age=43200; HttpOnly; SameSite=Strict",
                id.0
            )
        );
        assert!(set_cookie(&id, true).ends_with("; Secure"));
        assert_eq!(
            clear_cookie(false),
            "o365_admin=; Path=/admin; Max-Age=0; HttpOnly; SameSite=Strict"
        );
        let over_https = TestRequest::default()
            .insert_header(("X-Forwarded-Proto", "https"))
            .to_http_request();
        assert!(is_https(&over_https));
        assert!(!is_https(&TestRequest::default().to_http_request()));
    }
}
