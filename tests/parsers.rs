//! Property tests ("fuzzing") of the parsers that read hostile upstream input: the content-blob
//! splitter and record reader (`records`), the notification / listing-entry checks
//! (`notification`), and the AMQP value cappers (`broker`). Each property runs a bounded number
//! of generated cases so that plain `cargo test` (and so CI) runs them in seconds; proptest
//! shrinks any failing case to a minimal input and stores it under `proptest-regressions/`.

use bytes::Bytes;
use o365_relay::broker::{sha256_id, short_string};
use o365_relay::domain::text::{capped, TRUNCATION_MARKER};
use o365_relay::domain::{ContentType, Source, TenantId, WorkItem};
use o365_relay::microsoft::notification::{parse_notification_body, ContentRules};
use o365_relay::pipeline::records::{ArraySplitter, AuditRecord, RecordsError};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::FileFailurePersistence;
use serde_json::{json, Value};
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// JSON text, written by hand so that whitespace, escapes and number spellings are the nasty
// ones a serialiser would never produce.
// ---------------------------------------------------------------------------------------------

/// JSON whitespace between tokens: usually none, sometimes a run of all four kinds.
fn ws() -> impl Strategy<Value = String> {
    prop_oneof![3 => Just(String::new()), 1 => "[ \t\r\n]{1,4}"]
}

/// `c` as one or two (surrogate pair) `\uXXXX` escapes.
fn unicode_escape(c: char, upper: bool) -> String {
    let mut units = [0u16; 2];
    c.encode_utf16(&mut units)
        .iter()
        .map(|u| {
            if upper {
                format!("\\u{u:04X}")
            } else {
                format!("\\u{u:04x}")
            }
        })
        .collect()
}

/// A piece of a JSON string's contents (between the quotes), valid on its own, so that any
/// concatenation of pieces is valid too.
fn string_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 _.:-]{1,12}",
        3 => select(
            &[
                "]", "}", "{", "[", "],", "},{", "[{", "\\\"", "\\\\", "\\/", "\\b", "\\f",
                "\\n", "\\r", "\\t", "\\\\\\\"", "\\\"}]",
            ][..]
        )
        .prop_map(str::to_owned),
        2 => (any::<char>(), any::<bool>()).prop_map(|(c, upper)| unicode_escape(c, upper)),
        // Raw (unescaped) text: any char JSON allows in a string; those it does not become
        // other awkward ones (DEL, LINE SEPARATOR, a BOM).
        2 => any::<char>()
            .prop_map(|c| match c {
                '\0'..='\u{1f}' => ['\u{7f}', '\u{2028}', '\u{feff}'][c as usize % 3],
                '"' | '\\' => 'é',
                c => c,
            })
            .prop_map(String::from),
    ]
}

/// A JSON string literal whose value is longer than 255 bytes: pieces around a long run.
fn long_json_string() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(string_piece(), 0..12),
        "[a-zA-Z0-9]{256,300}",
        any::<Index>(),
    )
        .prop_map(|(mut pieces, run, at)| {
            pieces.insert(at.index(pieces.len() + 1), run);
            format!("\"{}\"", pieces.concat())
        })
}

/// A JSON string literal (quotes included) of `pieces` pieces.
fn json_string_of(pieces: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(string_piece(), pieces).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn json_string() -> impl Strategy<Value = String> {
    json_string_of(0..8)
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "9223372036854775807",
                "-9223372036854775808",
                "18446744073709551615",
                "18446744073709551616",
                "123456789012345678901234567890",
                "1.0e-7",
                "1E+2",
                "-0",
                "0",
                "0.5",
                "-1.25e-300",
                "1.7976931348623157e308",
                "5e-324",
            ][..]
        )
        .prop_map(str::to_owned),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f}")),
    ]
}

/// Keys: the ones audit records have, and arbitrary strings.
fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "Id",
                "CreationTime",
                "RecordType",
                "Operation",
                "Workload",
                "UserId",
                "ClientIP",
                "ExtendedProperties",
            ][..]
        )
        .prop_map(|k| format!("\"{k}\"")),
        json_string(),
    ]
}

fn json_array_of(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (prop::collection::vec((ws(), value, ws()), 0..5), ws()).prop_map(|(items, empty)| {
        if items.is_empty() {
            return format!("[{empty}]");
        }
        let items: Vec<String> = items
            .into_iter()
            .map(|(a, v, b)| format!("{a}{v}{b}"))
            .collect();
        format!("[{}]", items.join(","))
    })
}

fn json_object_of(value: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (
        prop::collection::vec((ws(), json_key(), ws(), ws(), value, ws()), 0..6),
        ws(),
    )
        .prop_map(|(members, empty)| {
            if members.is_empty() {
                return format!("{{{empty}}}");
            }
            let members: Vec<String> = members
                .into_iter()
                .map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"))
                .collect();
            format!("{{{}}}", members.join(","))
        })
}

/// Any JSON value, nested a few levels deep.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        3 => json_string(),
        2 => json_number(),
        1 => select(&["true", "false", "null"][..]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![json_array_of(inner.clone()), json_object_of(inner)]
    })
}

/// One audit record as Microsoft might write it: a JSON object.
fn record() -> impl Strategy<Value = String> {
    json_object_of(json_value())
}

/// A content blob: an optional BOM, whitespace, and a JSON array of records.
#[derive(Debug, Clone)]
struct Body {
    bytes: Vec<u8>,
    /// Each record exactly as written.
    records: Vec<String>,
    bom: bool,
    /// Offset of the closing bracket.
    close: usize,
}

impl Body {
    /// The body as serde_json reads it (it does not skip a BOM).
    fn json(&self) -> &[u8] {
        &self.bytes[if self.bom { 3 } else { 0 }..]
    }
}

fn body() -> impl Strategy<Value = Body> {
    (
        any::<bool>(),
        ws(),
        prop::collection::vec((ws(), record(), ws()), 0..6),
        ws(),
        ws(),
    )
        .prop_map(|(bom, lead, items, empty, trail)| {
            let mut s = String::new();
            if bom {
                s.push('\u{feff}');
            }
            s += &lead;
            s.push('[');
            if items.is_empty() {
                s += &empty;
            }
            for (i, (a, r, b)) in items.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s += a;
                s += r;
                s += b;
            }
            let close = s.len();
            s.push(']');
            s += &trail;
            Body {
                bytes: s.into_bytes(),
                records: items.into_iter().map(|(_, r, _)| r).collect(),
                bom,
                close,
            }
        })
}

/// How a body arrives: one byte at a time, or cut at random points (empty chunks included).
#[derive(Debug, Clone)]
enum Chunking {
    Bytewise,
    At(Vec<Index>),
}

fn chunking() -> impl Strategy<Value = Chunking> {
    prop_oneof![
        1 => Just(Chunking::Bytewise),
        3 => prop::collection::vec(any::<Index>(), 0..12).prop_map(Chunking::At),
    ]
}

fn chunks<'a>(input: &'a [u8], how: &Chunking) -> Vec<&'a [u8]> {
    match how {
        Chunking::Bytewise => input.chunks(1).collect(),
        Chunking::At(cuts) => {
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            at.sort_unstable();
            let mut out = Vec::with_capacity(at.len() + 1);
            let mut start = 0;
            for end in at {
                out.push(&input[start..end]);
                start = end;
            }
            out.push(&input[start..]);
            out
        }
    }
}

struct Split {
    records: Vec<Bytes>,
    /// The first error of `feed`, else what `finish` said.
    result: Result<(), RecordsError>,
}

/// Feeds `input` as the worker does: chunk by chunk, stopping at the first error.
fn split(input: &[u8], how: &Chunking) -> Split {
    let mut splitter = ArraySplitter::new();
    let mut records = Vec::new();
    for chunk in chunks(input, how) {
        if let Err(e) = splitter.feed(chunk, &mut records) {
            return Split {
                records,
                result: Err(e),
            };
        }
    }
    Split {
        records,
        result: splitter.finish(),
    }
}

/// Bytes that are JSON-ish more often than not: structural bytes, quotes, escapes, BOM bytes.
fn jsonish_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec(
            prop_oneof![
                4 => select(&b"[]{}\",:\\ \n\tab01\xef\xbb\xbf"[..]),
                1 => any::<u8>(),
            ],
            0..96,
        ),
    )
        .prop_map(|(open, mut v)| {
            if open {
                v.insert(0, b'[');
            }
            v
        })
}

/// A valid body with a few bytes overwritten (often by structural bytes).
fn flipped_body() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![select(&b"[]{}\",\\ "[..]), any::<u8>()];
    (body(), prop::collection::vec((any::<Index>(), byte), 1..4)).prop_map(|(b, flips)| {
        let mut v = b.bytes;
        for (at, x) in flips {
            let n = v.len();
            v[at.index(n)] = x;
        }
        v
    })
}

/// A valid body with one bracket swapped for the other kind (`}` for `]`, `{` for `[`, and
/// back): the corruption a bracket-counting splitter must still notice.
fn bracket_swapped_body() -> impl Strategy<Value = Vec<u8>> {
    (body(), any::<Index>()).prop_map(|(b, which)| {
        let mut v = b.bytes;
        let brackets: Vec<usize> = (0..v.len()).filter(|&i| b"{}[]".contains(&v[i])).collect();
        let i = brackets[which.index(brackets.len())];
        v[i] = match v[i] {
            b'{' => b'[',
            b'[' => b'{',
            b'}' => b']',
            _ => b'}',
        };
        v
    })
}

/// Short token soups: `[`, `{`, strings, numbers, separators, in any order.
fn jsonish_tokens() -> impl Strategy<Value = Vec<u8>> {
    let token = select(
        &[
            "[", "]", "{", "}", ",", ":", "\"a\"", "\"]}\"", "1", " ", "\"\\\"",
        ][..],
    );
    prop::collection::vec(token, 0..16).prop_map(|t| format!("[{}", t.concat()).into_bytes())
}

/// A valid body cut short anywhere.
fn truncated_body() -> impl Strategy<Value = Vec<u8>> {
    (body(), any::<Index>()).prop_map(|(b, cut)| {
        let n = cut.index(b.bytes.len() + 1);
        b.bytes[..n].to_vec()
    })
}

/// What a hostile or broken upstream might send as a content blob.
fn hostile_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        jsonish_bytes(),
        jsonish_tokens(),
        flipped_body(),
        bracket_swapped_body(),
        truncated_body(),
    ]
}

/// `{`, then brackets that close in the order they opened (outside strings), ending with the
/// `}` that closes the first one.
fn is_balanced_object(rec: &[u8]) -> bool {
    if rec.first() != Some(&b'{') || rec.last() != Some(&b'}') {
        return false;
    }
    let mut expected_closers = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in rec.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => expected_closers.push(b'}'),
            b'[' => expected_closers.push(b']'),
            b'}' | b']' => {
                if expected_closers.pop() != Some(b) {
                    return false;
                }
                if expected_closers.is_empty() && i + 1 != rec.len() {
                    return false;
                }
            }
            _ => {}
        }
    }
    expected_closers.is_empty()
}

/// Every record is a piece of `input`, in order and without overlap: the splitter never holds
/// more than the input, nor invents bytes.
fn records_are_pieces_of(input: &[u8], records: &[Bytes]) -> Result<(), TestCaseError> {
    let mut from = 0;
    for (i, rec) in records.iter().enumerate() {
        prop_assert!(!rec.is_empty(), "record {} is empty", i);
        let at = input[from..]
            .windows(rec.len())
            .position(|w| w == &rec[..])
            .ok_or_else(|| {
                TestCaseError::fail(format!(
                    "record {i} ({:?}) is not a piece of the input after byte {from}",
                    String::from_utf8_lossy(rec)
                ))
            })?;
        from += at + rec.len();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Notifications and listing entries.
// ---------------------------------------------------------------------------------------------

const CLIENT: &str = "a6099727-6b7b-482c-b509-1df309acc563";
const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const OTHER_TENANT: &str = "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
const NOTIFICATION_KEYS: [&str; 7] = [
    "tenantId",
    "clientId",
    "contentType",
    "contentId",
    "contentUri",
    "contentCreated",
    "contentExpiration",
];
const LONG_CONTENT_ID: &str = "492638008028$492638008028$f28ab78ad40140608012736e373933ebspo2015043022$4a81a7c326fc4aed89c62e6039ab833b$04";

fn manage_url() -> impl Strategy<Value = &'static str> {
    select(&["https://manage.office.com", "http://127.0.0.1:8089"][..])
}

fn rules(manage: &str) -> ContentRules {
    ContentRules::new(manage, CLIENT, &ContentType::ALL).expect("valid manage URL")
}

fn content_type() -> impl Strategy<Value = ContentType> {
    select(ContentType::ALL.to_vec())
}

/// A valid content id (`.` and `..` are valid ids but path dot-segments in a URL, so no URL
/// can name them: they are left out of the ids that must be accepted).
fn valid_content_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9$_.-]{1,255}".prop_filter("not a dot-segment", |c| c != "." && c != "..")
}

/// The content URI of `tenant`'s blob `cid` at `manage`: often exactly it, otherwise off in
/// one of the ways that matter (origin, credentials, query, fragment, path, encodings, another
/// tenant or blob).
fn content_uri(manage: &'static str, tenant: String, cid: String) -> impl Strategy<Value = String> {
    let origin = prop_oneof![
        16 => Just(manage),
        4 => select(
            &[
                "https://manage.office.com",
                "http://127.0.0.1:8089",
                "https://manage.office.com:443",
                "HTTPS://MANAGE.OFFICE.COM",
                "http://manage.office.com",
                "https://manage.office.com.evil.example",
                "https://evil.example",
                "https://user:pw@manage.office.com",
                "https://manage.office.com@evil.example",
                "https://manage.office.com:8443",
                "//manage.office.com",
                " https://manage.office.com",
                "https://manage.office.com\t",
                "http://127.0.0.1:8089@evil.example",
                "http://user@127.0.0.1:8089",
                "http://127.000.000.001:8089",
                "http://0x7f.0.0.1:8089",
                "http://127.0.0.1:80",
                "HTTP://127.0.0.1:8089",
            ][..]
        ),
    ];
    let sep = prop_oneof![60 => Just("/"), 1 => select(&["\\", "//", "/./", "/%2e/", "/\t"][..])];
    let upper = tenant.to_ascii_uppercase();
    let tenant = prop_oneof![
        12 => Just(tenant.clone()),
        1 => Just(OTHER_TENANT.to_string()),
        1 => Just(upper),
        1 => Just(format!("{{{tenant}}}")),
        1 => Just(tenant.replace('-', "")),
        1 => Just(format!("x/../{tenant}")),
        1 => Just(format!("x/%2e%2e/{tenant}")),
        1 => Just(format!("{tenant}%20")),
    ];
    let content_id = prop_oneof![
        12 => Just(cid.clone()),
        1 => Just(cid.replace('$', "%24")),
        1 => Just(cid.replace('$', "%2524")),
        1 => Just(format!("x/../{cid}")),
        1 => Just(format!("{cid}/.")),
        1 => Just(cid.replacen('a', "%61", 1)),
        1 => Just(cid.to_ascii_uppercase()),
        1 => content_id_value(),
    ];
    let suffix = prop_oneof![
        24 => Just(""),
        1 => select(&["/", "?x=1", "#f", "/..", "%00", "\t", "\n", "?", "#", "/x", " "][..]),
    ];
    (
        origin,
        prop::collection::vec(sep, 7),
        tenant,
        content_id,
        suffix,
    )
        .prop_map(|(origin, s, tenant, cid, suffix)| {
            format!(
                "{origin}{}api{}v1.0{}{tenant}{}activity{}feed{}audit{}{cid}{suffix}",
                s[0], s[1], s[2], s[3], s[4], s[5], s[6]
            )
        })
}

/// Content ids: good ones, and ones the alphabet or length forbid.
fn content_id_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(&["a$b", LONG_CONTENT_ID, "x.y_z-1", "A", "$"][..]).prop_map(str::to_owned),
        2 => "[A-Za-z0-9$_.-]{1,40}",
        1 => select(&[".", "..", "a/b", "a?b", "a b", "é", "a%24b", ""][..])
            .prop_map(str::to_owned),
        1 => Just("a$".repeat(128)),
    ]
}

fn time_value() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "2015-05-23T17:35:00.000Z",
                "2015-06-29T20:03:19",
                "2015-06-29T20:03:19.1234567",
                "2015-06-29T20:03:19+14:00",
                "+262143-12-31T23:59:59",
                "-262143-01-01T00:00:00",
                "9999-12-31T23:59:60.999999999Z",
                "0000-01-01T00:00:00Z",
                "not a time",
                "",
            ][..]
        )
        .prop_map(str::to_owned),
        "[0-9T:.Z+-]{0,80}",
    ]
}

/// What a notification field might hold: usually something plausible for the entry's blob
/// (`tenant`, `cid`), sometimes anything.
fn field_value(
    key: &'static str,
    manage: &'static str,
    tenant: &str,
    cid: &str,
) -> impl Strategy<Value = Option<Value>> {
    let plausible: BoxedStrategy<String> = match key {
        "tenantId" => prop_oneof![
            12 => Just(tenant.to_string()),
            1 => Just(OTHER_TENANT.to_string()),
            1 => Just(tenant.to_ascii_uppercase()),
            1 => Just(format!(" {tenant} ")),
            1 => Just(format!("{{{tenant}}}")),
        ]
        .boxed(),
        "clientId" => prop_oneof![
            8 => Just(CLIENT.to_string()),
            1 => Just(CLIENT.to_ascii_uppercase()),
            1 => Just(OTHER_TENANT.to_string()),
        ]
        .boxed(),
        "contentType" => prop_oneof![
            8 => content_type().prop_map(|ct| ct.as_str().to_string()),
            1 => select(&["audit.sharepoint", " Audit.General ", "Audit.Everything"][..])
                .prop_map(str::to_owned),
        ]
        .boxed(),
        "contentId" => Just(cid.to_string()).boxed(),
        "contentUri" => content_uri(manage, tenant.to_string(), cid.to_string()).boxed(),
        _ => time_value().boxed(),
    };
    prop_oneof![
        60 => plausible.prop_map(|s| Some(Value::String(s))),
        4 => any::<String>().prop_map(|s| Some(Value::String(s))),
        2 => Just(None),
        2 => Just(Some(Value::Null)),
        1 => any::<i64>().prop_map(|n| Some(Value::from(n))),
    ]
}

/// An object with the notification keys holding plausible or random strings, numbers, nulls.
fn notification_like(manage: &'static str) -> impl Strategy<Value = Value> {
    let tenant = prop_oneof![4 => Just(TENANT), 1 => Just(OTHER_TENANT)];
    (tenant, content_id_value()).prop_flat_map(move |(tenant, cid)| {
        let fields: Vec<_> = NOTIFICATION_KEYS
            .iter()
            .map(|k| field_value(k, manage, tenant, &cid))
            .collect();
        fields.prop_map(|values| {
            let mut m = serde_json::Map::new();
            for (k, v) in NOTIFICATION_KEYS.iter().zip(values) {
                if let Some(v) = v {
                    m.insert((*k).to_string(), v);
                }
            }
            Value::Object(m)
        })
    })
}

/// Any JSON value, keys often the notification keys.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        let key = prop_oneof![
            select(&NOTIFICATION_KEYS[..]).prop_map(str::to_owned),
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A notification body: an array of notification-like objects, or any JSON value at all.
fn notification_body(manage: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(notification_like(manage), 0..4)
            .prop_map(|v| Value::Array(v).to_string().into_bytes()),
        1 => arbitrary_json().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// An accepted work item names its own blob at the Management API and nothing else.
fn points_at_its_own_blob(manage: &str, item: &WorkItem) -> Result<(), TestCaseError> {
    let id = item.content_id.as_str();
    prop_assert!(
        (1..=255).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"$_.-".contains(&b)),
        "content id {:?} is not 1..=255 bytes of [A-Za-z0-9$_.-]",
        id
    );
    let url = url::Url::parse(&item.content_uri).map_err(|e| {
        TestCaseError::fail(format!(
            "accepted contentUri {:?} is not a URL: {e}",
            item.content_uri
        ))
    })?;
    let manage = url::Url::parse(manage).expect("valid manage URL");
    prop_assert_eq!(url.origin(), manage.origin(), "{:?}", item.content_uri);
    prop_assert!(
        url.username().is_empty()
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none(),
        "accepted contentUri {:?} has credentials, a query or a fragment",
        item.content_uri
    );
    // The relay deliberately accepts two spellings of the same blob (notification.rs): the
    // tenant GUID in upper case (TenantId normalises it), and `$` percent-encoded as `%24`.
    // Apart from those, the path must be exactly the blob's.
    let expected = format!("/api/v1.0/{}/activity/feed/audit/{id}", item.tenant_id);
    let segments: Vec<&str> = url.path().split('/').collect();
    let path = match segments.as_slice() {
        ["", "api", "v1.0", t, "activity", "feed", "audit", c] => format!(
            "/api/v1.0/{}/activity/feed/audit/{}",
            t.to_ascii_lowercase(),
            c.replace("%24", "$")
        ),
        _ => url.path().to_string(),
    };
    prop_assert_eq!(path, expected, "{:?}", item.content_uri);
    Ok(())
}

/// Runs every entry of `body` through both checks; accepted items must name their own blob.
fn check_body(manage: &str, body: &[u8], listed_as: ContentType) -> Result<(), TestCaseError> {
    let rules = rules(manage);
    let tenant = TenantId::parse(TENANT).expect("valid tenant");
    let Ok(entries) = parse_notification_body(body) else {
        return Ok(());
    };
    for raw in entries {
        if let Ok(item) = rules.notification(raw) {
            prop_assert_eq!(item.source, Source::Webhook);
            points_at_its_own_blob(manage, &item)?;
            prop_assert!(rules.recheck(&item).is_ok());
        }
    }
    for raw in parse_notification_body(body).expect("parsed once already") {
        // Listed under the entry's own content type when it names one, as the API does.
        let listed_as = raw
            .content_type
            .as_deref()
            .and_then(|ct| ct.parse().ok())
            .unwrap_or(listed_as);
        if let Ok(item) = rules.listing_entry(&tenant, listed_as, raw) {
            prop_assert_eq!(item.source, Source::Reconcile);
            prop_assert_eq!(&item.tenant_id, &tenant);
            prop_assert_eq!(item.content_type, listed_as);
            points_at_its_own_blob(manage, &item)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Strings for the AMQP cappers.
// ---------------------------------------------------------------------------------------------

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
        "[ -~]{0,400}",
        (any::<char>(), 200usize..300).prop_map(|(c, n)| c.to_string().repeat(n)),
        (0usize..260, any::<char>()).prop_map(|(n, c)| format!("{}{c}", "x".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/parsers.txt",
        ))),
        ..ProptestConfig::default()
    })]

    // ----- records::ArraySplitter -----

    #[test]
    fn the_splitter_yields_each_record_exactly_as_written_however_the_body_is_chunked(
        body in body(),
        how in chunking(),
    ) {
        let Split { records, result } = split(&body.bytes, &how);
        prop_assert_eq!(result, Ok(()));
        let got: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
        let want: Vec<&[u8]> = body.records.iter().map(|r| r.as_bytes()).collect();
        prop_assert_eq!(got, want);
        let values: Vec<Value> = serde_json::from_slice(body.json())
            .map_err(|e| TestCaseError::fail(format!("generator wrote invalid JSON: {e}")))?;
        prop_assert_eq!(values.len(), records.len());
        for (rec, value) in records.iter().zip(&values) {
            let parsed: Value = serde_json::from_slice(rec)
                .map_err(|e| TestCaseError::fail(format!("record is not JSON: {e}")))?;
            prop_assert_eq!(&parsed, value);
        }
    }

    #[test]
    fn a_truncated_body_is_never_reported_whole_unless_its_closing_bracket_arrived(
        body in body(),
        cut in any::<Index>(),
        how in chunking(),
    ) {
        let n = cut.index(body.bytes.len() + 1);
        let Split { records, result } = split(&body.bytes[..n], &how);
        if n > body.close {
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(records.len(), body.records.len());
        } else {
            prop_assert_eq!(result, Err(RecordsError::Truncated));
        }
        prop_assert!(records.len() <= body.records.len());
        for (got, want) in records.iter().zip(&body.records) {
            prop_assert_eq!(&got[..], want.as_bytes());
        }
    }

    #[test]
    fn the_splitter_never_panics_nor_holds_more_than_its_input_whatever_the_bytes(
        input in hostile_input(),
        how in chunking(),
    ) {
        let Split { records, .. } = split(&input, &how);
        let held: usize = records.iter().map(Bytes::len).sum();
        prop_assert!(held <= input.len());
        records_are_pieces_of(&input, &records)?;
    }

    // Found by this property: the splitter once closed a record on any closer (`[{]]`
    // split Ok into the record `{]`); it now tracks which closer each opener expects.
    #[test]
    fn a_successful_split_yields_only_balanced_objects_whatever_the_bytes(
        input in hostile_input(),
        how in chunking(),
    ) {
        let Split { records, result } = split(&input, &how);
        if result.is_ok() {
            for rec in &records {
                prop_assert!(
                    is_balanced_object(rec),
                    "split Ok but yielded {:?}",
                    String::from_utf8_lossy(rec)
                );
            }
        }
    }

    // ----- records::AuditRecord::parse -----

    #[test]
    fn parsing_a_record_never_panics_and_its_message_id_is_1_to_255_bytes(
        raw in prop_oneof![hostile_input(), record().prop_map(String::into_bytes)],
        index in 0usize..100_000,
    ) {
        let utf8 = std::str::from_utf8(&raw).is_ok();
        match AuditRecord::parse(Bytes::from(raw.clone()), index) {
            Ok(r) => {
                prop_assert!(utf8, "accepted invalid UTF-8");
                prop_assert!((1..=255).contains(&r.id.len()), "id {:?}", r.id);
                prop_assert_eq!(&r.raw[..], &raw[..]);
            }
            Err(RecordsError::Invalid(i, _)) => prop_assert_eq!(i, index),
            Err(e) => prop_assert!(false, "unexpected error {:?}", e),
        }
    }

    #[test]
    fn a_json_object_always_parses_and_string_fields_are_read_as_written(
        members in prop::collection::vec((json_key(), json_value()), 0..8),
        index in 0usize..100,
    ) {
        // serde refuses a duplicate of a field the reader reads: keep the first of each.
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::new();
        let mut strings = std::collections::HashMap::new();
        for (k, v) in members {
            let key: String = serde_json::from_str(&k).expect("generator writes JSON strings");
            if ROUTING_KEYS.contains(&key.as_str()) {
                if !seen.insert(key.clone()) {
                    continue;
                }
                if let Ok(Value::String(s)) = serde_json::from_str::<Value>(&v) {
                    strings.insert(key, s);
                }
            }
            kept.push(format!("{k}:{v}"));
        }
        let raw = format!("{{{}}}", kept.join(","));
        let r = AuditRecord::parse(Bytes::from(raw.clone()), index);
        prop_assert!(r.is_ok(), "{:?} refused: {:?}", raw, r.err());
        let r = r.expect("checked");
        prop_assert!((1..=255).contains(&r.id.len()), "id {:?}", r.id);
        for (key, field) in [
            ("RecordType", &r.record_type),
            ("Workload", &r.workload),
            ("Operation", &r.operation),
            ("CreationTime", &r.creation_time),
        ] {
            if let Some(s) = strings.get(key) {
                prop_assert_eq!(field, s, "{}", key);
            }
        }
        match strings.get("Id") {
            Some(id) if (1..=255).contains(&id.len()) => prop_assert_eq!(&r.id, id),
            Some(id) if !id.is_empty() => prop_assert_eq!(&r.id, &sha256_id(id.as_bytes())),
            _ => {}
        }
    }

    #[test]
    fn invalid_utf8_is_always_refused(
        rec in record(),
        at in any::<Index>(),
        bad in select(&INVALID_UTF8[..]),
        inside_a_string in any::<bool>(),
        index in 0usize..100,
    ) {
        let raw: Vec<u8> = if inside_a_string {
            // Otherwise valid JSON: only the bytes of a string are wrong.
            [&br#"{"Id":"x","UserId":"a"#[..], bad, br#"b"}"#].concat()
        } else {
            let mut v = rec.into_bytes();
            let i = at.index(v.len() + 1);
            v.splice(i..i, bad.iter().copied());
            v
        };
        prop_assume!(std::str::from_utf8(&raw).is_err());
        let r = AuditRecord::parse(Bytes::from(raw), index);
        prop_assert!(matches!(r, Err(RecordsError::Invalid(i, _)) if i == index), "{:?}", r);
    }

    #[test]
    fn an_id_string_of_1_to_255_bytes_is_the_message_id(
        id in json_string_of(1..12),
        others in prop::collection::vec((json_key(), json_value()), 0..4),
        at in any::<Index>(),
    ) {
        let decoded: String = serde_json::from_str(&id).expect("generator writes JSON strings");
        prop_assume!((1..=255).contains(&decoded.len()));
        let raw = object_with_id(&id, others, at);
        let r = AuditRecord::parse(Bytes::from(raw.clone()), 0);
        prop_assert!(r.is_ok(), "{:?} refused: {:?}", raw, r.err());
        prop_assert_eq!(r.expect("checked").id, decoded);
    }

    #[test]
    fn an_id_longer_than_255_bytes_becomes_its_sha256(
        id in long_json_string(),
        others in prop::collection::vec((json_key(), json_value()), 0..3),
        at in any::<Index>(),
    ) {
        let decoded: String = serde_json::from_str(&id).expect("generator writes JSON strings");
        prop_assert!(decoded.len() > 255);
        let raw = object_with_id(&id, others, at);
        let r = AuditRecord::parse(Bytes::from(raw), 0).expect("a JSON object parses");
        prop_assert_eq!(&r.id, &sha256_id(decoded.as_bytes()));
        prop_assert!(is_sha256_id(&r.id), "{:?}", r.id);
    }

    #[test]
    fn a_record_without_a_string_id_gets_the_sha256_of_its_bytes(
        id in prop_oneof![
            Just(None),
            select(&["null", "\"\""][..]).prop_map(|s| Some(s.to_string())),
            json_array_of(json_value()).prop_map(Some),
            json_object_of(json_value()).prop_map(Some),
        ],
        others in prop::collection::vec((json_key(), json_value()), 0..4),
        at in any::<Index>(),
    ) {
        let raw = match &id {
            Some(id) => object_with_id(id, others, at),
            None => format!("{{{}}}", without_routing_keys(others).join(",")),
        };
        let r = AuditRecord::parse(Bytes::from(raw.clone()), 0);
        prop_assert!(r.is_ok(), "{:?} refused: {:?}", raw, r.err());
        let r = r.expect("checked");
        prop_assert_eq!(&r.id, &sha256_id(raw.as_bytes()));
        prop_assert!(is_sha256_id(&r.id), "{:?}", r.id);
    }

    // ----- notification -----

    #[test]
    fn notification_bodies_never_panic_and_accepted_items_name_their_own_blob(
        (manage, body) in manage_url().prop_flat_map(|m| (Just(m), notification_body(m))),
        listed_as in content_type(),
    ) {
        check_body(manage, &body, listed_as)?;
    }

    #[test]
    fn notification_bodies_of_arbitrary_bytes_never_panic(
        (manage, body) in manage_url().prop_flat_map(|m| (Just(m), prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            jsonish_bytes(),
            (
                notification_body(m),
                prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
            )
                .prop_map(|(mut b, flips)| {
                    for (at, x) in flips {
                        let n = b.len();
                        b[at.index(n)] = x;
                    }
                    b
                }),
        ])),
        listed_as in content_type(),
    ) {
        check_body(manage, &body, listed_as)?;
    }

    #[test]
    fn well_formed_notifications_are_accepted(
        blobs in prop::collection::vec(
            (
                any::<u128>(),
                valid_content_id(),
                content_type(),
                any::<bool>(),
                0i64..4_102_444_800_000,
            ),
            1..4,
        ),
        manage in manage_url(),
    ) {
        let rules = rules(manage);
        let entries: Vec<Value> = blobs
            .iter()
            .map(|(tenant, cid, ct, upper_client, created_ms)| {
                let tenant = uuid::Uuid::from_u128(*tenant).hyphenated().to_string();
                let created = chrono::DateTime::from_timestamp_millis(*created_ms)
                    .expect("in range")
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                json!({
                    "tenantId": tenant,
                    "clientId": if *upper_client {
                        CLIENT.to_ascii_uppercase()
                    } else {
                        CLIENT.to_string()
                    },
                    "contentType": ct.as_str(),
                    "contentId": cid,
                    "contentUri": format!("{manage}/api/v1.0/{tenant}/activity/feed/audit/{cid}"),
                    "contentCreated": created,
                    "contentExpiration": "not a time",
                })
            })
            .collect();
        let body = Value::Array(entries).to_string();
        let parsed = parse_notification_body(body.as_bytes());
        prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
        let parsed = parsed.expect("checked");
        prop_assert_eq!(parsed.len(), blobs.len());
        for (raw, (tenant, cid, ct, _, created_ms)) in parsed.into_iter().zip(&blobs) {
            let item = rules.notification(raw);
            prop_assert!(item.is_ok(), "{:?}", item.err());
            let item = item.expect("checked");
            let tenant = uuid::Uuid::from_u128(*tenant).hyphenated().to_string();
            prop_assert_eq!(item.tenant_id.as_str(), tenant.as_str());
            prop_assert_eq!(item.content_id.as_str(), cid.as_str());
            prop_assert_eq!(item.content_type, *ct);
            let created = chrono::DateTime::from_timestamp_millis(*created_ms)
                .expect("in range")
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            prop_assert_eq!(item.content_created.as_deref(), Some(created.as_str()));
            prop_assert_eq!(item.content_expiration.as_deref(), None);
            points_at_its_own_blob(manage, &item)?;
        }
        // The same entries listed by the reconciler for their own tenant are accepted too.
        for (raw, (tenant, _, ct, _, _)) in parse_notification_body(body.as_bytes())
            .expect("parsed once already")
            .into_iter()
            .zip(&blobs)
        {
            let tenant = uuid::Uuid::from_u128(*tenant).to_string();
            let tenant = TenantId::parse(&tenant).expect("a GUID");
            let item = rules.listing_entry(&tenant, *ct, raw);
            prop_assert!(item.is_ok(), "{:?}", item.err());
            points_at_its_own_blob(manage, &item.expect("checked"))?;
        }
    }

    // ----- text::capped / broker::short_string -----

    #[test]
    fn a_capped_value_fits_its_cap_and_ends_with_the_marker_when_cut(
        value in any_text(),
        cap in prop_oneof![0usize..32, 0usize..1100],
    ) {
        let out = capped(&value, cap);
        if value.len() <= cap {
            prop_assert!(matches!(out, Cow::Borrowed(_)));
            prop_assert_eq!(&*out, value.as_str());
        } else {
            prop_assert!(
                out.len() <= cap.max(TRUNCATION_MARKER.len()),
                "{} bytes for cap {}",
                out.len(),
                cap
            );
            prop_assert!(out.ends_with(TRUNCATION_MARKER));
            let prefix = &out[..out.len() - TRUNCATION_MARKER.len()];
            prop_assert!(value.starts_with(prefix));
            // Nothing more is cut than the character boundary needs (at most 3 bytes).
            let room = cap.saturating_sub(TRUNCATION_MARKER.len());
            prop_assert!(
                prefix.len() + 3 >= room,
                "kept {} of {} bytes of room",
                prefix.len(),
                room
            );
        }
    }

    #[test]
    fn a_short_string_never_exceeds_255_bytes(value in any_text()) {
        let s = short_string(&value);
        prop_assert!(s.as_str().len() <= 255);
        if value.len() <= 255 {
            prop_assert_eq!(s.as_str(), value.as_str());
        } else {
            let digest = sha256_id(value.as_bytes());
            prop_assert_eq!(s.as_str(), digest.as_str());
            prop_assert!(is_sha256_id(s.as_str()));
        }
    }
}

/// Byte sequences that are never UTF-8: a byte never used, an overlong encoding, a lone
/// continuation byte, a cut sequence, a surrogate, a code point above U+10FFFF.
const INVALID_UTF8: [&[u8]; 6] = [
    b"\xff",
    b"\xc0\x80",
    b"\x80",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
];

/// The record fields `AuditRecord::parse` reads.
const ROUTING_KEYS: [&str; 5] = ["Id", "RecordType", "Workload", "Operation", "CreationTime"];

/// `sha256:` and 64 lower-case hex digits.
fn is_sha256_id(id: &str) -> bool {
    id.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Members whose key is not one of the fields the record reader reads (serde refuses a
/// duplicate of those).
fn without_routing_keys(members: Vec<(String, String)>) -> Vec<String> {
    let mut out = Vec::with_capacity(members.len());
    for (k, v) in members {
        let key: String = serde_json::from_str(&k).expect("generator writes JSON strings");
        if !ROUTING_KEYS.contains(&key.as_str()) {
            out.push(format!("{k}:{v}"));
        }
    }
    out
}

/// A record with `"Id": id` among `others`, at position `at`.
fn object_with_id(id: &str, others: Vec<(String, String)>, at: Index) -> String {
    let mut members = without_routing_keys(others);
    let i = at.index(members.len() + 1);
    members.insert(i, format!("\"Id\" : {id}"));
    format!("{{{}}}", members.join(","))
}
