//! Text from outside cut to a bound before it is kept or passed on (header values, dead-letter
//! reasons, Microsoft's error text), and bytes written as hex text (digests, ids).

use std::borrow::Cow;

/// Ends a header value that was cut to its cap.
pub const TRUNCATION_MARKER: &str = "…[truncated]";

/// `value` cut to at most `cap` bytes (at a character boundary), ending with
/// [`TRUNCATION_MARKER`] when it was cut.
pub fn capped(value: &str, cap: usize) -> Cow<'_, str> {
    if value.len() <= cap {
        return Cow::Borrowed(value);
    }
    let mut end = cap.saturating_sub(TRUNCATION_MARKER.len());
    while end > 0 && !value.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATION_MARKER}", &value[..end]))
}

/// `bytes` as lower-case hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_capped_at_a_character_boundary_with_a_marker() {
        let v = "é".repeat(1000);
        let c = capped(&v, 101);
        assert!(c.len() <= 101, "{} bytes", c.len());
        assert!(c.ends_with(TRUNCATION_MARKER));
        assert_eq!(capped("short", 101), "short");
    }

    #[test]
    fn hex_writes_two_lower_case_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(hex(&[]), "");
    }
}
