//! What a page's markup is made of, apart from its text: the outline that hostile text must not
//! change. Two renderings of one page — one with plain values, one with hostile values in the
//! same fields — have the same outline exactly when no value became markup.

/// Hostile text for every field: it closes an attribute (both quote kinds), a tag and the
/// title, injects a refresh to another site and a script, and carries control characters that
/// drive a terminal, a NUL and a right-to-left override.
pub const HOSTILE: &str = "\"'><meta http-equiv=\"refresh\" content=\"0;url=https://evil.example/\"></title></textarea><script>alert(1)</script><b x='\x1b]0;pwned\x07\0\u{202e}";

/// The page's tags in order, each as `<name attr attr…>` (attribute names only) or `</name>`;
/// comments and the doctype as `<!…>`. Quoted attribute values are skipped whole, so a value
/// holding an escaped `>` does not end its tag.
pub fn outline(page: &str) -> Vec<String> {
    let mut tags = Vec::new();
    let mut rest = page;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        if rest.starts_with('!') {
            let end = rest.find('>').unwrap_or(rest.len());
            tags.push("<!>".to_string());
            rest = &rest[end.min(rest.len())..];
            continue;
        }
        let closing = usize::from(rest.starts_with('/'));
        let name_len = closing
            + rest[closing..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(rest.len() - closing);
        let name = &rest[..name_len];
        rest = &rest[name_len..];
        let mut attrs = Vec::new();
        loop {
            rest = rest.trim_start();
            match rest.chars().next() {
                None => break,
                Some('>') => {
                    rest = &rest[1..];
                    break;
                }
                Some('/') => rest = &rest[1..],
                Some(_) => {
                    let n = rest
                        .find(|c: char| c.is_whitespace() || c == '=' || c == '>')
                        .unwrap_or(rest.len());
                    attrs.push(rest[..n].to_string());
                    rest = &rest[n..];
                    if let Some(value) = rest.strip_prefix('=') {
                        rest = skip_value(value);
                    }
                }
            }
        }
        if name.is_empty() || name == "/" {
            // A lone `<` in text (escaped output has none): a tag of no name.
            tags.push("<?>".to_string());
            continue;
        }
        let mut tag = format!("<{name}");
        for a in attrs {
            tag.push(' ');
            tag.push_str(&a);
        }
        tag.push('>');
        tags.push(tag);
    }
    tags
}

/// The rest of the input after one attribute value (quoted or bare).
fn skip_value(s: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(quote) {
            return inner.find(quote).map_or("", |end| &inner[end + 1..]);
        }
    }
    let end = s
        .find(|c: char| c.is_whitespace() || c == '>')
        .unwrap_or(s.len());
    &s[end..]
}

/// Panics, showing both, unless `hostile` has the outline of `plain`; and unless no control
/// character other than whitespace reached the page as it is.
pub fn assert_same_outline(plain: &str, hostile: &str) {
    let (a, b) = (outline(plain), outline(hostile));
    if a != b {
        let at = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "hostile text became markup at tag {at}: plain {:?} vs hostile {:?}\n--- hostile page:\n{hostile}",
            a.get(at),
            b.get(at)
        );
    }
    assert!(
        !hostile.contains("<meta http-equiv=\"refresh\" content=\"0;url"),
        "{hostile}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outline_sees_injected_tags_and_attributes_and_skips_quoted_values() {
        let plain = r#"<p class="a" title="x &gt; y">text</p><br/>"#;
        assert_eq!(outline(plain), ["<p class title>", "</p>", "<br>"]);
        let injected = r#"<p class="a" title="x"><meta http-equiv="refresh">">text</p><br/>"#;
        assert_ne!(outline(plain), outline(injected));
        let broken_out = r#"<p class="a" title="x" onclick="y">text</p><br/>"#;
        assert_ne!(outline(plain), outline(broken_out));
    }
}
