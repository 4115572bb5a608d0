//! Splits a content blob (a JSON array of audit records) into records *as the bytes Microsoft
//! sent*, incrementally, as the body streams in: nothing is re-serialised (2^63−1 stays
//! 2^63−1, `\u00e9` stays `\u00e9`, key order is kept) and memory stays bounded by the largest
//! single record, not by the blob.

use bytes::Bytes;
use serde::Deserialize;
use std::borrow::Cow;

/// A single record larger than this is refused (a blob is never held whole in memory).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordsError {
    #[error("blob is not a JSON array (found byte {0:#04x} at the start)")]
    NotAnArray(u8),
    #[error("record {0} is not a JSON object")]
    NotAnObject(usize),
    #[error("unexpected byte {0:#04x} between records")]
    Unexpected(u8),
    #[error("blob ended before its closing bracket (truncated)")]
    Truncated,
    #[error("record {0} is larger than {MAX_RECORD_BYTES} bytes")]
    TooLarge(usize),
    #[error("record {0} closes a bracket with {1:#04x} that does not match its opener")]
    Mismatched(usize, u8),
    #[error("record {0} is not valid JSON: {1}")]
    Invalid(usize, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    BeforeArray,
    ExpectValueOrEnd,
    ExpectValue,
    InRecord,
    AfterValue,
    Done,
}

/// Incremental splitter: feed chunks, collect complete records.
pub struct ArraySplitter {
    state: State,
    /// The closers expected inside the current record, innermost last (`}` or `]`): a record
    /// closes only on the bracket that matches its opener.
    open: Vec<u8>,
    in_string: bool,
    escaped: bool,
    buf: Vec<u8>,
    index: usize,
}

impl Default for ArraySplitter {
    fn default() -> Self {
        ArraySplitter::new()
    }
}

impl ArraySplitter {
    pub fn new() -> ArraySplitter {
        ArraySplitter {
            state: State::BeforeArray,
            open: Vec::new(),
            in_string: false,
            escaped: false,
            buf: Vec::new(),
            index: 0,
        }
    }

    /// Consumes `chunk`, appending every record it completes to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<Bytes>) -> Result<(), RecordsError> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            match self.state {
                State::BeforeArray => {
                    if b == b'[' {
                        self.state = State::ExpectValueOrEnd;
                    } else if !is_ws(b) && !is_bom(b) {
                        return Err(RecordsError::NotAnArray(b));
                    }
                }
                State::ExpectValueOrEnd | State::ExpectValue => {
                    if b == b'{' {
                        self.state = State::InRecord;
                        self.open.clear();
                        self.open.push(b'}');
                        self.buf.clear();
                        self.buf.push(b);
                    } else if b == b']' && self.state == State::ExpectValueOrEnd {
                        self.state = State::Done;
                    } else if !is_ws(b) {
                        return Err(if b == b']' {
                            RecordsError::Unexpected(b)
                        } else {
                            RecordsError::NotAnObject(self.index)
                        });
                    }
                }
                State::InRecord => {
                    // Copy the run of bytes up to the record's closing bracket (or the chunk's
                    // end) in one go; inside a string, jump to its next quote or backslash.
                    let start = i;
                    let mut end = chunk.len();
                    let mut closed = false;
                    let mut j = start;
                    while j < chunk.len() {
                        if self.in_string {
                            if self.escaped {
                                self.escaped = false;
                                j += 1;
                                continue;
                            }
                            let Some(k) = memchr::memchr2(b'"', b'\\', &chunk[j..]) else {
                                break;
                            };
                            j += k;
                            if chunk[j] == b'\\' {
                                self.escaped = true;
                            } else {
                                self.in_string = false;
                            }
                            j += 1;
                            continue;
                        }
                        let c = chunk[j];
                        match c {
                            b'"' => self.in_string = true,
                            b'{' => self.open.push(b'}'),
                            b'[' => self.open.push(b']'),
                            b'}' | b']' => {
                                if self.open.pop() != Some(c) {
                                    return Err(RecordsError::Mismatched(self.index, c));
                                }
                                if self.open.is_empty() {
                                    end = j + 1;
                                    closed = true;
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    if self.buf.len() + (end - start) > MAX_RECORD_BYTES {
                        return Err(RecordsError::TooLarge(self.index));
                    }
                    self.buf.extend_from_slice(&chunk[start..end]);
                    if closed {
                        out.push(Bytes::from(std::mem::take(&mut self.buf)));
                        self.index += 1;
                        self.state = State::AfterValue;
                    }
                    i = end;
                    continue;
                }
                State::AfterValue => match b {
                    b',' => self.state = State::ExpectValue,
                    b']' => self.state = State::Done,
                    _ if is_ws(b) => {}
                    _ => return Err(RecordsError::Unexpected(b)),
                },
                State::Done => {
                    if !is_ws(b) {
                        return Err(RecordsError::Unexpected(b));
                    }
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Call at the end of the body: an unfinished array means the blob was truncated.
    pub fn finish(&self) -> Result<(), RecordsError> {
        if self.state == State::Done {
            Ok(())
        } else {
            Err(RecordsError::Truncated)
        }
    }

    /// Records completed so far.
    pub fn count(&self) -> usize {
        self.index
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn is_bom(b: u8) -> bool {
    matches!(b, 0xEF | 0xBB | 0xBF)
}

/// A field read leniently: strings as they are, numbers and booleans as their JSON text, and
/// anything else (null, objects, arrays) as absent. Microsoft's fields change shape ("numbers
/// sometimes arrive as strings"), and a record must never be refused for the shape of a field
/// the relay only uses for routing headers.
#[derive(Debug, Default)]
pub struct Lenient<'a>(pub Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Lenient<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Lenient(Some(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// The few fields of a record the relay routes and labels by; everything else stays opaque.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecordMeta<'a> {
    #[serde(borrow, default)]
    pub id: Lenient<'a>,
    #[serde(borrow, default)]
    pub record_type: Lenient<'a>,
    #[serde(borrow, default)]
    pub workload: Lenient<'a>,
    #[serde(borrow, default)]
    pub operation: Lenient<'a>,
    #[serde(borrow, default)]
    pub creation_time: Lenient<'a>,
}

/// One record: its exact bytes and what we read of it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub raw: Bytes,
    /// The AMQP `message_id` and the de-duplication key: the record's `Id` when it has one of
    /// 1 to 255 bytes (Microsoft's are 36-byte GUIDs); `sha256:<hex>` of the `Id` when it is
    /// longer (a short string holds 255 bytes); `sha256:<hex>` of the record's bytes when it
    /// has none. Consumers de-duplicate on it either way.
    pub id: String,
    pub record_type: String,
    pub workload: String,
    pub operation: String,
    pub creation_time: String,
}

impl AuditRecord {
    /// Reads a record split out of a blob. Refuses only what is not JSON text (invalid UTF-8
    /// included, RFC 8259 §8.1): such a record cannot be relayed as the exact bytes consumers
    /// parse.
    pub fn parse(raw: Bytes, index: usize) -> Result<AuditRecord, RecordsError> {
        let text = match std::str::from_utf8(&raw) {
            Ok(text) => text,
            Err(e) => {
                return Err(RecordsError::Invalid(
                    index,
                    format!("invalid UTF-8 at byte {}", e.valid_up_to()),
                ))
            }
        };
        // From the checked text: serde_json then does not check each string's UTF-8 again.
        let meta: RecordMeta<'_> =
            serde_json::from_str(text).map_err(|e| RecordsError::Invalid(index, e.to_string()))?;
        let owned = |v: Lenient<'_>| v.0.map(|c| c.into_owned()).unwrap_or_default();
        let id = match meta.id.0.filter(|s| !s.is_empty()) {
            Some(id) if id.len() <= crate::broker::SHORT_STRING_MAX => id.into_owned(),
            Some(long) => crate::broker::sha256_id(long.as_bytes()),
            None => crate::broker::sha256_id(&raw),
        };
        Ok(AuditRecord {
            id,
            record_type: owned(meta.record_type),
            workload: owned(meta.workload),
            operation: owned(meta.operation),
            creation_time: owned(meta.creation_time),
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_chunks(body: &[u8], size: usize) -> Result<Vec<Bytes>, RecordsError> {
        let mut s = ArraySplitter::new();
        let mut out = Vec::new();
        for chunk in body.chunks(size) {
            s.feed(chunk, &mut out)?;
        }
        s.finish()?;
        Ok(out)
    }

    #[test]
    fn records_keep_their_exact_bytes_whatever_the_chunking() {
        let r1 = r#"{"Id":"a","Big":9223372036854775807,"U":"\u00e9","S":"br]ace}s \" [{"}"#;
        let r2 = r#"{ "Id" : "b", "Nested": [[1,{"x":[]}], {}], "F": 1.0e-7 }"#;
        let body = format!("\u{feff}[\n  {r1} ,\n{r2}\n]\n");
        for size in [1, 2, 3, 7, 64, 4096] {
            let out = split_in_chunks(body.as_bytes(), size).unwrap();
            assert_eq!(out.len(), 2);
            assert_eq!(&out[0][..], r1.as_bytes());
            assert_eq!(&out[1][..], r2.as_bytes());
        }
    }

    #[test]
    fn empty_arrays_are_fine_and_truncation_is_detected() {
        assert!(split_in_chunks(b" [ ] ", 1).unwrap().is_empty());
        let body = br#"[{"Id":"a"},{"Id":"b""#;
        assert_eq!(
            split_in_chunks(body, 5).unwrap_err(),
            RecordsError::Truncated
        );
        assert_eq!(
            split_in_chunks(br#"[{"Id":"a"}"#, 5).unwrap_err(),
            RecordsError::Truncated
        );
        assert!(matches!(
            split_in_chunks(br#"{"error":{}}"#, 5).unwrap_err(),
            RecordsError::NotAnArray(b'{')
        ));
        assert!(matches!(
            split_in_chunks(br#"[1,2]"#, 5).unwrap_err(),
            RecordsError::NotAnObject(0)
        ));
        assert!(matches!(
            split_in_chunks(br#"[{"a":1}}"#, 5).unwrap_err(),
            RecordsError::Unexpected(b'}')
        ));
        assert!(matches!(
            split_in_chunks(b"[{]]", 1).unwrap_err(),
            RecordsError::Mismatched(0, b']')
        ));
    }

    #[test]
    fn metadata_reads_odd_shapes() {
        let raw = Bytes::from_static(br#"{"CreationTime":"2015-06-29T20:03:19","Id":"80c7","Operation":"Op","RecordType":9,"Workload":"AzureActiveDirectory","ClientIP":null}"#);
        let r = AuditRecord::parse(raw.clone(), 0).unwrap();
        assert_eq!(
            (r.id.as_str(), r.record_type.as_str(), r.workload.as_str()),
            ("80c7", "9", "AzureActiveDirectory")
        );
        assert_eq!(r.raw, raw);
        let r = AuditRecord::parse(
            Bytes::from_static(br#"{"RecordType":"261","Workload":"MicrosoftTeams"}"#),
            0,
        )
        .unwrap();
        assert_eq!(r.record_type, "261");
        assert!(r.id.starts_with("sha256:"));
        assert!(AuditRecord::parse(Bytes::from_static(br#"{"Id":"a",}"#), 3).is_err());
    }

    #[test]
    fn over_long_and_odd_ids_get_a_derived_message_id() {
        let long = format!(
            r#"{{"Id":"{}","Workload":{{"x":1}},"Operation":7}}"#,
            "x".repeat(300)
        );
        let r = AuditRecord::parse(Bytes::from(long), 0).unwrap();
        assert!(r.id.starts_with("sha256:") && r.id.len() == 71);
        assert_eq!((r.workload.as_str(), r.operation.as_str()), ("", "7"));
        let r = AuditRecord::parse(Bytes::from_static(br#"{"Id":12}"#), 0).unwrap();
        assert_eq!(r.id, "12");
        let bad = Bytes::from_static(b"{\"Id\":\"a\",\"UserId\":\"\xff\"}");
        assert!(matches!(
            AuditRecord::parse(bad, 4),
            Err(RecordsError::Invalid(4, _))
        ));
    }
}
