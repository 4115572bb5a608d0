//! Hostile records and blob bodies: what Microsoft's shapes promise not to contain, but what a
//! relay must survive anyway. Each maker starts from the simulator's ordinary record (the same
//! builder `publish` uses, content type `Audit.General`) and breaks exactly one thing, so a test
//! failure points at that one thing.

use chrono::Utc;

use super::records::{build_record, js};

/// Content type whose record shapes the makers borrow; the relay does not key on it.
const CONTENT_TYPE: &str = "Audit.General";

/// `len` bytes of GUID-like text (hex and dashes), fresh per call.
fn guidish(len: usize) -> String {
    let mut s = String::with_capacity(len + 36);
    while s.len() < len {
        s.push_str(&uuid::Uuid::new_v4().to_string());
    }
    s.truncate(len);
    s
}

/// `bytes` bytes of plain ASCII text (no escapes, so the JSON string holds exactly that many).
fn filler(bytes: usize) -> String {
    const TEXT: &[u8] = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
    TEXT.iter()
        .cycle()
        .take(bytes)
        .map(|&b| char::from(b))
        .collect()
}

/// A realistic audit record whose `Id` is `id_len` bytes long (0 gives `"Id":""`).
pub fn record_with_long_id(tenant: &str, id_len: usize) -> String {
    let (mut r, _) = build_record(tenant, CONTENT_TYPE, 0, &Utc::now());
    r.set("Id", js(&guidish(id_len)));
    r.render()
}

/// A realistic record with a normal GUID `Id` whose `field` (e.g. "Operation", "Workload", or a
/// new field name) is a string of `bytes` bytes.
pub fn record_with_huge_field(tenant: &str, field: &str, bytes: usize) -> String {
    let (mut r, _) = build_record(tenant, CONTENT_TYPE, 0, &Utc::now());
    r.set(field, js(&filler(bytes)));
    r.render()
}

/// A realistic record with a normal GUID `Id` whose `UserId` value holds a raw 0xFF byte, so
/// the record is not valid UTF-8 (and therefore not valid JSON text).
pub fn record_with_invalid_utf8(tenant: &str) -> Vec<u8> {
    // A marker that cannot occur elsewhere in a record, replaced once rendered: Rec holds text.
    const MARKER: &str = "@@INVALID-UTF8@@";
    let (mut r, _) = build_record(tenant, CONTENT_TYPE, 0, &Utc::now());
    r.set(
        "UserId",
        js(&format!("alex{MARKER}@contoso.onmicrosoft.com")),
    );
    let text = r.render();
    let mut out = Vec::with_capacity(text.len());
    match text.split_once(MARKER) {
        Some((before, after)) => {
            out.extend_from_slice(before.as_bytes());
            out.push(0xFF);
            out.extend_from_slice(after.as_bytes());
        }
        None => out.extend_from_slice(text.as_bytes()),
    }
    out
}

/// A blob body `[r1,r2,...]` of the given record bytes, taken verbatim.
pub fn blob_body(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(r);
    }
    out.push(b']');
    out
}

/// `n` records that all carry ONE fresh GUID `Id` but otherwise differ (operation, time, user,
/// odd shapes), i.e. not the byte-identical duplicates Microsoft sends by design.
pub fn duplicate_id_records(tenant: &str, n: usize) -> Vec<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let created = Utc::now();
    (0..n)
        .map(|i| {
            let (mut r, _) = build_record(tenant, CONTENT_TYPE, i, &created);
            r.set("Id", js(&id));
            r.render()
        })
        .collect()
}
