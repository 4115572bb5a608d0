//! The consent pages: self-contained HTML (no external assets, no script), never cached, never
//! framed. Element ids (`connect`, `tenant`, `error`, `subscriptions`, `pending`, `not-served`)
//! are what the browser tests and an operator's own checks look for.

use crate::config::ConsentMode;
use crate::domain::{ContentType, TenantId};
use crate::http::html::{document, html, page, Forms, Markup};
use crate::tenancy::subscriptions::StartOutcome;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}
main{max-width:36rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08)}
h1{font-size:1.4rem;margin-top:0} ul{padding-left:1.2rem} code{background:#eef1f4;padding:.1rem .3rem;border-radius:4px}
.button{display:inline-block;background:#0f6cbd;color:#fff;border:0;border-radius:8px;padding:.8rem 1.2rem;font-size:1rem;text-decoration:none;cursor:pointer}
.ok{color:#107c10} .err{color:#c50f1f} .wait{color:#8a5a00} small{color:#57606a}
@media (max-width:40rem){main{margin:0;border-radius:0;min-height:100vh}}
"#;

pub(super) fn html_page(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    // The Connect button is a link, not a form: browsers apply `form-action` to the redirect
    // that follows a form submission, and that redirect goes to Entra's origin.
    page(
        status,
        Forms::None,
        document(title, STYLE, html! {}, html! { main { (body) } }),
    )
}

pub(super) fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    html_page(
        status,
        "Tenant not connected",
        html! {
            h1.err { "Your tenant was not connected" }
            p #error { (message) }
            p { a.button href="/consent" { "Start again" } }
        },
    )
}

/// 503 while Redis cannot keep the state.
pub(super) fn unavailable() -> HttpResponse {
    html_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again later",
        html! {
            h1.err { "Temporarily unavailable" }
            p #error { "Please try again in a minute." }
        },
    )
}

/// 429 for a client starting too many consents: the browser is told when to come back
/// (`Retry-After`, seconds).
pub(super) fn try_later(status: StatusCode, message: &str, retry_after: u64) -> HttpResponse {
    let mut page = html_page(
        status,
        "Try again later",
        html! {
            h1.err { "Please try again later" }
            p #error { (message) }
            p { small { "Try again in " (retry_after) " seconds." } }
        },
    );
    page.headers_mut().insert(
        actix_web::http::header::RETRY_AFTER,
        actix_web::http::header::HeaderValue::from(retry_after),
    );
    page
}

/// The permissions the relay uses: `ActivityFeed.Read` for the `Audit.*` content types, and
/// `ActivityFeed.ReadDlp` only when `DLP.All` is subscribed to (tenant admins read permission
/// lists closely; the relay asks for nothing it does not use).
pub fn permissions(content_types: &[ContentType]) -> Vec<(&'static str, &'static str)> {
    let mut p = vec![(
        "ActivityFeed.Read",
        "read your organisation's activity data (the unified audit log)",
    )];
    if content_types.contains(&ContentType::Dlp) {
        p.push((
            "ActivityFeed.ReadDlp",
            "read DLP policy events, including the sensitive data they detected",
        ));
    }
    p
}

/// `GET /consent`: what is asked, what happens after consent in this deployment's
/// `O365_CONSENT_MODE`, and the Connect button.
pub(super) fn consent_page(content_types: &[ContentType], mode: ConsentMode) -> HttpResponse {
    html_page(
        StatusCode::OK,
        "Connect your Microsoft 365 tenant",
        html! {
            h1 { "Connect your Microsoft 365 tenant" }
            p {
                "This service collects your organisation's Office 365 unified audit log through "
                "Microsoft's Office 365 Management Activity API and delivers it to your security "
                "pipeline."
            }
            p {
                "A Global Administrator of your tenant will be asked by Microsoft to grant this "
                "application read-only access to the activity feed:"
            }
            ul #permissions {
                @for (name, what) in permissions(content_types) {
                    li { code { (name) } " — " (what) }
                }
            }
            p { "It cannot change anything in your tenant. After consent we subscribe to these content types:" }
            ul {
                @for c in content_types {
                    li { code { (c.as_str()) } }
                }
            }
            @match mode {
                ConsentMode::Open => {}
                ConsentMode::Allowlist => p { small {
                    "This service connects only the organisations its operator has agreed to "
                    "serve; any other will be told so after signing in, and nothing is collected "
                    "from it."
                } }
                ConsentMode::Approval => p { small {
                    "After your consent, the operator of this service approves your tenant before "
                    "any audit data is collected."
                } }
            }
            p { a.button #connect href="/consent/start" { "Connect your Microsoft 365 tenant" } }
            p { small { "You can revoke access at any time under Enterprise applications in the Microsoft Entra admin center." } }
        },
    )
}

/// The tenant is registered and served: its subscriptions as started.
pub(super) fn connected(
    tenant: &TenantId,
    consented_by: Option<&str>,
    subscriptions: &[StartOutcome],
) -> HttpResponse {
    html_page(
        StatusCode::OK,
        "Tenant connected",
        html! {
            h1.ok { "Your tenant is connected" }
            p {
                "Tenant " code #tenant { (tenant.as_str()) } (by(consented_by))
                " is now served. Subscriptions:"
            }
            ul #subscriptions {
                @for o in subscriptions {
                    li {
                        code { (o.content_type) } ": "
                        span class=(if o.ok { "ok" } else { "err" }) { (o.message) }
                    }
                }
            }
            p { small { "Audit records flow as Microsoft publishes them, often with a delay of up to an hour. You can close this page." } }
        },
    )
}

/// `O365_CONSENT_MODE=approval`: registered, waiting for the operator.
pub(super) fn awaiting_approval(tenant: &TenantId, consented_by: Option<&str>) -> HttpResponse {
    html_page(
        StatusCode::OK,
        "Tenant awaiting approval",
        html! {
            h1.wait { "Your tenant awaits approval" }
            p {
                "Thank you: consent for tenant " code #tenant { (tenant.as_str()) }
                (by(consented_by)) " was received."
            }
            p #pending {
                "The operator of this service approves each new tenant before any audit data is "
                "collected. Until then nothing is read from your tenant; once approved, collection "
                "starts without anything more to do on your side."
            }
            p { small { "You can close this page." } }
        },
    )
}

/// `O365_CONSENT_MODE=allowlist` and the tenant is not listed: nothing registered.
pub(super) fn not_served(tenant: &TenantId) -> HttpResponse {
    html_page(
        StatusCode::FORBIDDEN,
        "Tenant not served",
        html! {
            h1.err { "This service does not serve your tenant" }
            p #not-served {
                "Tenant " code #tenant { (tenant.as_str()) } " is not among the organisations "
                "this service is set up to serve, so it was not connected and no audit data will "
                "be collected from it."
            }
            p { "If you expected to use this service, contact the organisation that operates it." }
            p { small { "Microsoft has recorded your consent for the application; you can remove it under Enterprise applications in the Microsoft Entra admin center." } }
        },
    )
}

fn by(consented_by: Option<&str>) -> Markup {
    html! {
        @if let Some(u) = consented_by { " (consent by " (u) ")" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_support::markup::{assert_same_outline, HOSTILE};

    async fn body(page: HttpResponse) -> String {
        let bytes = actix_web::body::to_bytes(page.into_body()).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// Every page of the consent flow, with `text` in every field that holds outside text (the
    /// tenant id is a parsed GUID and cannot hold any).
    async fn pages(text: &str) -> Vec<String> {
        let tenant = TenantId::parse("11111111-2222-3333-4444-555555555555").unwrap();
        let outcome = StartOutcome {
            content_type: text.into(),
            ok: false,
            message: text.into(),
            detail: text.into(),
        };
        let mut out = Vec::new();
        for page in [
            error_page(StatusCode::BAD_REQUEST, text),
            try_later(StatusCode::TOO_MANY_REQUESTS, text, 60),
            connected(&tenant, Some(text), std::slice::from_ref(&outcome)),
            awaiting_approval(&tenant, Some(text)),
            not_served(&tenant),
            unavailable(),
        ] {
            out.push(body(page).await);
        }
        for mode in [
            ConsentMode::Open,
            ConsentMode::Allowlist,
            ConsentMode::Approval,
        ] {
            out.push(body(consent_page(&ContentType::ALL, mode)).await);
        }
        out
    }

    #[tokio::test]
    async fn outside_text_never_becomes_markup_on_a_consent_page() {
        let (plain, hostile) = (pages("plain text").await, pages(HOSTILE).await);
        for (plain, hostile) in plain.iter().zip(&hostile) {
            assert_same_outline(plain, hostile);
        }
        // The pages that show outside text show it, its control characters visible.
        for shown in &hostile[..4] {
            assert!(
                shown.contains(r"\u{1b}]0;pwned\u{7}\u{0}\u{202e}"),
                "{shown}"
            );
        }
        assert!(hostile[0].contains("&lt;meta http-equiv=&quot;refresh&quot;"));
    }
}
