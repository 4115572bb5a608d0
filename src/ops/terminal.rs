//! Outside text — Microsoft's error messages, headers, a consenting admin's name — made safe to
//! show on a terminal or in a human-readable log: every control character is written as a
//! visible escape (`\u{1b}`), so a crafted message cannot move the cursor, retitle the
//! terminal (OSC), clear the screen or break a line to print a fake one. Bidirectional
//! overrides are escaped too: they make a terminal show text in another order than it is
//! (CVE-2021-42574, "Trojan Source"). JSON output needs none of this (JSON escapes C0 itself).

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a terminal as it is: C0 (NUL–US, ESC and BEL among them), DEL,
/// C1 (U+0080–U+009F, which some terminals read as CSI/OSC), and the bidi embeddings,
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069).
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character (see [`is_unsafe`]) written as `\u{…}` (its code point in
/// hex); borrowed when there is none.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_where(s, is_unsafe)
}

/// `s` with every character `hidden` picks written as `\u{…}`; borrowed when there is none.
pub fn escape_where(s: &str, hidden: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(&hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Displays a value's text escaped (see [`escape`]): `println!("{}", Shown(&error))`.
pub struct Shown<T>(pub T);

impl<T: fmt::Display> fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0.to_string();
        // Through `pad`, so width and alignment (`{:<40}`) still apply.
        f.pad(&escape(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_sequences_are_shown_escaped_and_plain_text_is_kept() {
        assert_eq!(
            escape("\x1b]0;pwned\x07\x1b[2J ok"),
            "\\u{1b}]0;pwned\\u{7}\\u{1b}[2J ok"
        );
        assert_eq!(escape("a\nb\r\tc\x7f"), "a\\u{a}b\\u{d}\\u{9}c\\u{7f}");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}def\u{2066}"), "abc\\u{202e}def\\u{2066}");
        assert!(matches!(escape("Zoë — ok ✓"), Cow::Borrowed("Zoë — ok ✓")));
        assert_eq!(format!("[{:<6}]", Shown("a\x07")), "[a\\u{7}]");
        assert_eq!(format!("[{:<4}]", Shown("ab")), "[ab  ]");
    }
}
