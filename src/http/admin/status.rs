//! The status page (`/admin/`), its JSON (`/admin/status`), and signing in and out of the
//! page's session ([`super::session`]).

use super::error::logged;
use super::guard::{Reader, Viewer};
use super::session::{self, SessionId};
use super::throttle::{Route, Verdict};
use super::{AdminApi, AdminError};
use crate::domain::secret::constant_time_eq;
use crate::http::html::{self, Forms};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/", web::get().to(status_page))
        .route("/admin", web::get().to(status_page))
        .route("/admin/login", web::post().to(login))
        .route("/admin/logout", web::post().to(logout))
        .route("/admin/status", web::get().to(status_json));
}

async fn status_json(_: Reader, api: web::Data<AdminApi>) -> Result<HttpResponse, AdminError> {
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
async fn status_page(viewer: Result<Viewer, AdminError>, api: web::Data<AdminApi>) -> HttpResponse {
    match viewer {
        Ok(Viewer) => {}
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
            crate::http::with_cookie(&mut response, &cookie);
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
    crate::http::with_cookie(&mut response, &cookie);
    response
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
}
