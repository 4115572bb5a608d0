//! The consent pages: self-contained HTML (no external assets, no script), never cached, never
//! framed. Element ids (`connect`, `tenant`, `error`, `subscriptions`, `pending`, `not-served`)
//! are what the browser tests and an operator's own checks look for.

use crate::domain::{ContentType, TenantId};
pub use crate::html::esc;
use crate::html::{page, Forms};
use crate::subscriptions::StartOutcome;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

pub(super) fn html(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    let page_html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;color:#1b1f23}}
main{{max-width:36rem;margin:3rem auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08)}}
h1{{font-size:1.4rem;margin-top:0}} ul{{padding-left:1.2rem}} code{{background:#eef1f4;padding:.1rem .3rem;border-radius:4px}}
.button{{display:inline-block;background:#0f6cbd;color:#fff;border:0;border-radius:8px;padding:.8rem 1.2rem;font-size:1rem;text-decoration:none;cursor:pointer}}
.ok{{color:#107c10}} .err{{color:#c50f1f}} .wait{{color:#8a5a00}} small{{color:#57606a}}
@media (max-width:40rem){{main{{margin:0;border-radius:0;min-height:100vh}}}}
</style></head><body><main>{body}</main></body></html>"#,
        title = esc(title),
        body = body
    );
    // The Connect button is a link, not a form: browsers apply `form-action` to the redirect
    // that follows a form submission, and that redirect goes to Entra's origin.
    page(status, Forms::None, page_html)
}

pub(super) fn error_page(status: StatusCode, message: &str) -> HttpResponse {
    html(
        status,
        "Tenant not connected",
        &format!(
            r#"<h1 class="err">Your tenant was not connected</h1><p id="error">{}</p><p><a class="button" href="/consent">Start again</a></p>"#,
            esc(message)
        ),
    )
}

/// 503 while Redis cannot keep the state.
pub(super) fn unavailable() -> HttpResponse {
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again later",
        "<h1 class=\"err\">Temporarily unavailable</h1><p id=\"error\">Please try again in a minute.</p>",
    )
}

/// 429 for a client starting too many consents, or 503 when too many are in progress
/// overall; either way the browser is told when to come back (`Retry-After`, seconds).
pub(super) fn try_later(status: StatusCode, message: &str, retry_after: u64) -> HttpResponse {
    let mut page = html(
        status,
        "Try again later",
        &format!(
            r#"<h1 class="err">Please try again later</h1><p id="error">{}</p><p><small>Try again in {retry_after} seconds.</small></p>"#,
            esc(message)
        ),
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

/// `GET /consent`: what is asked, and the Connect button.
pub(super) fn consent_page(content_types: &[ContentType], mode_note: &str) -> HttpResponse {
    let types: String = content_types
        .iter()
        .map(|c| format!("<li><code>{}</code></li>", esc(c.as_str())))
        .collect();
    let perms: String = permissions(content_types)
        .iter()
        .map(|(name, what)| format!("<li><code>{name}</code> — {what}</li>"))
        .collect();
    html(
        StatusCode::OK,
        "Connect your Microsoft 365 tenant",
        &format!(
            r#"<h1>Connect your Microsoft 365 tenant</h1>
<p>This service collects your organisation's Office 365 unified audit log through Microsoft's
Office 365 Management Activity API and delivers it to your security pipeline.</p>
<p>A Global Administrator of your tenant will be asked by Microsoft to grant this application
read-only access to the activity feed:</p><ul id="permissions">{perms}</ul>
<p>It cannot change anything in your tenant. After consent we subscribe to these content
types:</p><ul>{types}</ul>{mode_note}
<p><a class="button" id="connect" href="/consent/start">Connect your Microsoft 365 tenant</a></p>
<p><small>You can revoke access at any time under Enterprise applications in the Microsoft Entra admin center.</small></p>"#
        ),
    )
}

/// The tenant is registered and served: its subscriptions as started.
pub(super) fn connected(
    tenant: &TenantId,
    consented_by: Option<&str>,
    subscriptions: &[StartOutcome],
) -> HttpResponse {
    let rows: String = subscriptions
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
    html(
        StatusCode::OK,
        "Tenant connected",
        &format!(
            r#"<h1 class="ok">Your tenant is connected</h1><p>Tenant <code id="tenant">{}</code>{} is now served. Subscriptions:</p><ul id="subscriptions">{rows}</ul>
<p><small>Audit records flow as Microsoft publishes them, often with a delay of up to an hour. You can close this page.</small></p>"#,
            esc(tenant.as_str()),
            by(consented_by)
        ),
    )
}

/// `O365_CONSENT_MODE=approval`: registered, waiting for the operator.
pub(super) fn awaiting_approval(tenant: &TenantId, consented_by: Option<&str>) -> HttpResponse {
    html(
        StatusCode::OK,
        "Tenant awaiting approval",
        &format!(
            r#"<h1 class="wait">Your tenant awaits approval</h1><p>Thank you: consent for tenant <code id="tenant">{}</code>{} was received.</p>
<p id="pending">The operator of this service approves each new tenant before any audit data is collected. Until then nothing is read from your tenant; once approved, collection starts without anything more to do on your side.</p>
<p><small>You can close this page.</small></p>"#,
            esc(tenant.as_str()),
            by(consented_by)
        ),
    )
}

/// `O365_CONSENT_MODE=allowlist` and the tenant is not listed: nothing registered.
pub(super) fn not_served(tenant: &TenantId) -> HttpResponse {
    html(
        StatusCode::FORBIDDEN,
        "Tenant not served",
        &format!(
            r#"<h1 class="err">This service does not serve your tenant</h1><p id="not-served">Tenant <code id="tenant">{}</code> is not among the organisations this service is set up to serve, so it was not connected and no audit data will be collected from it.</p>
<p>If you expected to use this service, contact the organisation that operates it.</p>
<p><small>Microsoft has recorded your consent for the application; you can remove it under Enterprise applications in the Microsoft Entra admin center.</small></p>"#,
            esc(tenant.as_str())
        ),
    )
}

fn by(consented_by: Option<&str>) -> String {
    consented_by
        .map(|u| format!(" (consent by {})", esc(u)))
        .unwrap_or_default()
}
