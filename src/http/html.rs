//! The HTML the relay serves itself (the consent pages, the sign-in and status pages), built
//! with maud's compile-time templates: every value spliced into a template is escaped unless
//! the code says `PreEscaped`, so a new field cannot forget it. One response shape carries the
//! headers every page needs — never cached, never framed, nothing loaded from elsewhere (inline
//! CSS only, no script) — and writes control characters from outside text as visible escapes.

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
pub use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Where a page's forms may submit to: the `form-action` of its Content-Security-Policy.
#[derive(Clone, Copy, Debug)]
pub enum Forms {
    /// No form may submit (browsers also apply `form-action` to the redirect after a submission).
    None,
    /// Forms submit to this origin only.
    SameOrigin,
}

/// A whole HTML document: the head every page shares (charset, viewport, title, inline style)
/// around `body`. `head_extra` is for the status page's refresh.
pub fn document(title: &str, style: &'static str, head_extra: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                (head_extra)
                title { (title) }
                style { (PreEscaped(style)) }
            }
            body { (body) }
        }
    }
}

/// A whole HTML page as a response with the headers every page carries.
pub fn page(status: StatusCode, forms: Forms, document: Markup) -> HttpResponse {
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
        .body(visible_controls(document.into_string()))
}

/// The page with every control character other than whitespace (and every bidi override)
/// written as a visible `\u{…}`: the templates hold none, so any there came from outside text
/// — an invisible one can hide or reorder what the reader sees.
fn visible_controls(page: String) -> String {
    let hidden = |c: char| crate::ops::terminal::is_unsafe(c) && !matches!(c, '\n' | '\r' | '\t');
    match crate::ops::terminal::escape_where(&page, hidden) {
        std::borrow::Cow::Borrowed(_) => page,
        std::borrow::Cow::Owned(shown) => shown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_outside_are_shown_not_obeyed() {
        let doc = document(
            "t\u{7}",
            "",
            html! {},
            html! { p { "a\u{1b}]0;owned\u{7}b\u{202e}c\nd" } },
        );
        let page = visible_controls(doc.into_string());
        assert!(page.contains(r"a\u{1b}]0;owned\u{7}b\u{202e}c"), "{page}");
        assert!(page.contains("c\nd"), "{page}");
        assert!(!page.chars().any(|c| c == '\u{1b}' || c == '\u{7}'));
    }
}
