//! Who may call an admin route, as extractors a handler names in its signature — the one place
//! the admin token and the sign-in sessions are checked:
//!
//! - [`Operator`]: `Authorization: Bearer {O365_ADMIN_TOKEN}` (every route that reads or changes
//!   tenants, the allowlist or dead letters);
//! - [`Reader`]: the bearer token or a signed-in session ([`super::session`]) — `GET
//!   /admin/status`;
//! - [`Viewer`]: the same for the status page, where a browser without any credential is shown
//!   the sign-in form, which is no failed sign-in.
//!
//! Without `O365_ADMIN_TOKEN` every guard lets everyone in. A wrong or missing token counts
//! against its client, and a client over its budget is refused (429) without its token being
//! compared ([`super::throttle`]). A session cookie that opens nothing (ended, expired,
//! revoked) is refused without counting as a failure: a session id is not a guess at the
//! token. Redis unreachable is a 503, never a session.

use super::error::logged;
use super::session::{self, SessionId};
use super::throttle::{Route, Verdict};
use super::{AdminApi, AdminError};
use crate::domain::secret::constant_time_eq;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use std::future::{ready, Ready};

/// A caller with the admin token.
pub struct Operator;

/// A caller with the admin token or a signed-in session.
pub struct Reader;

/// A browser with a signed-in session (or a caller with the token), for the status page.
pub struct Viewer;

fn api(req: &HttpRequest) -> web::Data<AdminApi> {
    req.app_data::<web::Data<AdminApi>>()
        .expect("the admin listener registers its AdminApi")
        .clone()
}

/// The bearer token of `req`, if it sent one.
fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn token(req: &HttpRequest, api: &AdminApi) -> Result<(), AdminError> {
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

/// The session, else the token. `page`: a request with no credential at all is refused
/// without counting as a failed sign-in.
async fn session_or_token(req: &HttpRequest, api: &AdminApi, page: bool) -> Result<(), AdminError> {
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
    if bearer(req).is_none() && (cookie.is_some() || page) {
        return Err(AdminError::Unauthorized);
    }
    token(req, api)
}

impl FromRequest for Operator {
    type Error = AdminError;
    type Future = Ready<Result<Self, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(token(req, &api(req)).map(|()| Operator))
    }
}

/// The session-or-token check of `req`, as the future an extractor returns.
fn session_or_token_of<T: 'static>(
    req: &HttpRequest,
    page: bool,
    then: T,
) -> LocalBoxFuture<'static, Result<T, AdminError>> {
    let req = req.clone();
    Box::pin(async move {
        session_or_token(&req, &api(&req), page)
            .await
            .map(|()| then)
    })
}

impl FromRequest for Reader {
    type Error = AdminError;
    type Future = LocalBoxFuture<'static, Result<Self, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        session_or_token_of(req, false, Reader)
    }
}

impl FromRequest for Viewer {
    type Error = AdminError;
    type Future = LocalBoxFuture<'static, Result<Self, AdminError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        session_or_token_of(req, true, Viewer)
    }
}
