//! What the relay serves over HTTP besides the webhook and the consent pages: the admin
//! listener ([`admin`]), the pages' templates ([`html`]), and who a request comes from
//! ([`client_address`]).

pub mod admin;
pub mod client_address;
pub mod consent;
pub mod html;
pub mod status;

use actix_web::http::header::{HeaderValue, SET_COOKIE};
use actix_web::HttpResponse;

/// Sets `cookie` (a whole `Set-Cookie` value) on a built response. The cookies are the relay's
/// own — a session id in hex, a nonce in base64url, fixed attributes — so header-safe.
pub fn with_cookie(response: &mut HttpResponse, cookie: &str) {
    let value = HeaderValue::from_str(cookie).expect("a cookie is header-safe");
    response.headers_mut().insert(SET_COOKIE, value);
}
