//! What a message carries besides its body: the relay's properties, header values capped so
//! the content header always fits in one frame, and AMQP short strings that cannot panic.
//!
//! The whole content header (properties and headers table) must fit in one frame
//! (`frame_max`, 128 KiB by default) or RabbitMQ closes the *connection*. Header values are
//! therefore capped ([`MAX_HEADER_VALUE`], with [`crate::domain::text::TRUNCATION_MARKER`]), and AMQP
//! short strings (message ids, names) are never built from unchecked data ([`short_string`]).
//! The lapin types a message is made of are re-exported from [`crate::broker`], so the rest of
//! the relay names them through the broker.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

/// The longest header value the relay writes, in bytes. Far below `frame_max` even with every
/// header at its cap.
pub const MAX_HEADER_VALUE: usize = 1024;
/// AMQP short strings (message id, routing key, names) hold at most 255 bytes.
pub const SHORT_STRING_MAX: usize = 255;

/// An AMQP short string that cannot panic: text of more than 255 bytes becomes
/// `sha256:<64 hex digits>` of the text. Callers with a documented derivation of their own
/// (record ids) apply it first; this is the last line of defence.
pub fn short_string(s: &str) -> ShortString {
    if s.len() <= SHORT_STRING_MAX {
        ShortString::from(s)
    } else {
        ShortString::from(sha256_id(s.as_bytes()))
    }
}

/// `sha256:` and the lower-case hex SHA-256 of `bytes` (71 bytes).
pub fn sha256_id(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        crate::domain::text::hex(&openssl::sha::sha256(bytes))
    )
}

/// Persistent JSON message properties shared by every message the relay sends.
pub fn json_properties(message_id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(short_string(message_id))
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_app_id("o365-relay".into())
}

/// Adds a string header, capped at `cap` bytes (never above [`MAX_HEADER_VALUE`]).
pub fn header(table: &mut FieldTable, key: &'static str, value: &str, cap: usize) {
    let v = crate::domain::text::capped(value, cap.min(MAX_HEADER_VALUE));
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
    );
}

/// Adds an integer header (a signed 64-bit field, as the relay writes counts).
pub fn header_int(table: &mut FieldTable, key: &'static str, value: i64) {
    table.insert(ShortString::from(key), AMQPValue::LongLongInt(value));
}

/// Adds a string argument or header, uncapped: for the relay's own names and settings
/// (queue arguments), never for data from outside.
pub fn argument(table: &mut FieldTable, key: &'static str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value.as_bytes().to_vec())),
    );
}

/// Reads a string header.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Reads an integer header (a 64- or 32-bit signed field; anything else is `None`).
pub fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// The message id, as text.
pub fn message_id(props: &BasicProperties) -> Option<String> {
    props.message_id().as_ref().map(|s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_never_exceed_255_bytes() {
        let long = "x".repeat(300);
        let s = short_string(&long);
        assert_eq!(s.as_str().len(), 71);
        assert!(s.as_str().starts_with("sha256:"));
        assert_eq!(short_string("abc").as_str(), "abc");
        assert_eq!(short_string(&long), short_string(&long));
    }

    #[test]
    fn headers_read_back_as_written() {
        let mut t = FieldTable::default();
        header(&mut t, "o365-a", &"y".repeat(5000), 4096);
        header_int(&mut t, "o365-n", 7);
        argument(&mut t, "x-queue-type", "quorum");
        let p = BasicProperties::default().with_headers(t);
        assert!(header_str(&p, "o365-a").unwrap().len() <= MAX_HEADER_VALUE);
        assert_eq!(header_i64(&p, "o365-n"), Some(7));
        assert_eq!(header_str(&p, "o365-n").as_deref(), Some("7"));
        assert_eq!(header_i64(&p, "o365-a"), None);
        assert_eq!(header_str(&p, "x-queue-type").as_deref(), Some("quorum"));
        assert_eq!(header_str(&p, "missing"), None);
    }
}
