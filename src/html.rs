//! The HTML the relay serves itself (the consent pages, the status page): escaping, and one
//! response shape carrying the headers every page needs — never cached, never framed, nothing
//! loaded from elsewhere (inline CSS only, no script).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;

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

/// Where a page's forms may submit to: the `form-action` of its Content-Security-Policy.
#[derive(Clone, Copy, Debug)]
pub enum Forms {
    /// No form may submit (browsers also apply `form-action` to the redirect after a submission).
    None,
    /// Forms submit to this origin only.
    SameOrigin,
}

/// A whole HTML page as a response with the headers every page carries.
pub fn page(status: StatusCode, forms: Forms, body: String) -> HttpResponse {
    let csp = match forms {
        Forms::None => {
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'"
        }
        Forms::SameOrigin => {
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Content-Security-Policy", csp))
        .body(body)
}
