//! Text from outside cut to a bound before it is kept or passed on: header values, dead-letter
//! reasons, Microsoft's error text.

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
}
