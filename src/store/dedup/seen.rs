//! The compact done markers of [`super::Dedup::publish_once`]: where a published record is
//! remembered, and the two Lua scripts that claim and finish a batch in one round trip each.
//!
//! Why it is built so: docs/DESIGN.md, "store/dedup/seen".

use std::time::Duration;

/// An id longer than this (bytes) is not kept in a bucket: Redis's default
/// `hash-max-listpack-value`, above which the hash would become a real hash table.
pub(super) const MAX_FIELD: usize = 64;

/// An hour ending later than this from now counts as ending this far from now (expiry).
const MAX_AHEAD_MS: i64 = 3_600_000;

/// Longest keep (ms), far above `O365_RECORD_DEDUP_TTL`'s 30 days: the scripts pass it through
/// a Lua number, which must stay an exact integer.
const MAX_KEEP_MS: u64 = 400 * 86_400_000;

/// One record's place in a bucket, see docs/DESIGN.md, "store/dedup/seen".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    /// `{prefix}seen:{tenant}:{hour}:{kind}`; the script appends `:{path}`.
    pub bucket: String,
    /// The id, exact: 16 raw bytes for a GUID, else the id itself.
    pub field: Vec<u8>,
    /// How long (ms from now) the bucket's keys are kept at least once this record is in it.
    pub keep_ms: u64,
}

/// Where a record is remembered, or `None` when it keeps a key of its own (no usable
/// `CreationTime`, or an id longer than [`MAX_FIELD`]).
pub(super) fn place(
    prefix: &str,
    // The tenant as its keys carry it (`Store::tenant`: a hash tag in a cluster).
    segment: &dyn std::fmt::Display,
    id: &str,
    created: &str,
    done_ttl: Duration,
    now_ms: i64,
) -> Option<Place> {
    let hour = creation_hour(created)?;
    let (kind, field) = match guid_bytes(id) {
        Some(g) => ('g', g.to_vec()),
        None if id.len() <= MAX_FIELD => ('s', id.as_bytes().to_vec()),
        None => return None,
    };
    let hour_end_ms = (hour + 1).saturating_mul(3_600_000);
    let ahead = hour_end_ms.saturating_sub(now_ms).clamp(0, MAX_AHEAD_MS) as u64;
    let ttl_ms = u64::try_from(done_ttl.as_millis()).unwrap_or(u64::MAX);
    Some(Place {
        bucket: format!("{prefix}seen:{segment}:{hour}:{kind}"),
        field,
        keep_ms: ttl_ms.saturating_add(ahead).clamp(1, MAX_KEEP_MS),
    })
}

/// The 16 bytes of a GUID written as Microsoft writes them (36 characters, lowercase hex,
/// hyphens after 8, 12, 16 and 20 digits); `None` for anything else, capitals included, so
/// the encoding is one-to-one.
pub(super) fn guid_bytes(id: &str) -> Option<[u8; 16]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = id.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b[i] != b'-' {
                return None;
            }
            i += 1;
            continue;
        }
        out[n] = (nibble(b[i])? << 4) | nibble(b[i + 1])?;
        n += 1;
        i += 2;
    }
    Some(out)
}

/// The hour (from the Unix epoch) of a `CreationTime` such as `2015-06-29T20:03:19`: only
/// its first 13 characters are read (`YYYY-MM-DDTHH`), so a fraction or a zone after them
/// does not matter, and a long value costs nothing. `None` when they are not a valid date
/// and hour.
pub(super) fn creation_hour(created: &str) -> Option<i64> {
    let b = created.as_bytes().get(..13)?;
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let at = date.and_hms_opt(num(11..13)?, 0, 0)?;
    Some(at.and_utc().timestamp().div_euclid(3600))
}

/// The helpers both scripts share, per script run (one batch):
///
/// - `bits`: a field's path, 24 characters `0`/`1`. For a GUID (bucket kind `g`) its first
///   three bytes XOR its last three: random in Microsoft's (version 4) GUIDs, and still varied
///   in time-ordered ones, whichever end changes; for other ids the start of SHA-1
///   (`redis.sha1hex`, which costs several µs, so not spent on GUIDs). It only spreads the
///   fields over leaves: a poor spread costs memory, never an answer.
/// - `leaf`: the depth of a path's leaf, walking from the depth of the last leaf found in the
///   same bucket (a batch's records share a few buckets whose leaves sit at about the same
///   depth: one or two steps). A node is a leaf when it is not a marker and its parent is.
///   Whether a node is a marker is asked of Redis once per run: nothing else changes the
///   tree while a script runs, and `split` records what it changes.
macro_rules! tree_lua {
    () => {
        r#"
local MAXD, LEAF = 24, 128
local HEX = {['0']='0000',['1']='0001',['2']='0010',['3']='0011',['4']='0100',['5']='0101',
  ['6']='0110',['7']='0111',['8']='1000',['9']='1001',a='1010',b='1011',c='1100',d='1101',
  e='1110',f='1111'}
local NIB = {'0000','0001','0010','0011','0100','0101','0110','0111','1000','1001','1010',
  '1011','1100','1101','1110','1111'}
local BYTE = {}
for x = 0, 255 do BYTE[x] = NIB[bit.rshift(x, 4) + 1] .. NIB[bit.band(x, 15) + 1] end
local bxor = bit.bxor
local function bits(guid, field)
  if guid then
    local a1, a2, a3 = string.byte(field, 1, 3)
    local b1, b2, b3 = string.byte(field, 14, 16)
    return BYTE[bxor(a1, b1)] .. BYTE[bxor(a2, b2)] .. BYTE[bxor(a3, b3)]
  end
  return (string.gsub(string.sub(redis.sha1hex(field), 1, MAXD / 4), '.', HEX))
end
local function is_guid(bucket)
  return string.byte(bucket, -1) == 103
end
local function node(bucket, b, d)
  return bucket .. ':' .. string.sub(b, 1, d)
end
local marker = {}
local function is_marker(k)
  local m = marker[k]
  if m == nil then
    m = redis.call('TYPE', k)['ok'] == 'string'
    marker[k] = m
  end
  return m
end
local last = {}
local function leaf(bucket, b)
  local d = last[bucket] or 0
  if is_marker(node(bucket, b, d)) then
    repeat d = d + 1 until d >= MAXD or not is_marker(node(bucket, b, d))
  else
    while d > 0 and not is_marker(node(bucket, b, d - 1)) do d = d - 1 end
  end
  last[bucket] = d
  return d
end
"#
    };
}

/// KEYS: the records' claim keys. ARGV[1] = `p:{owner}`, ARGV[2] = claim PX, then per record
/// its bucket (empty: no compact marker) and field. Per record: 0 = already published (a field
/// in its bucket, or a claim key `d`), 1 = claimed by this owner (now or before), 2 = claimed
/// by another owner.
pub(super) const CLAIM: &str = concat!(
    tree_lua!(),
    r#"
local out = {}
for i, k in ipairs(KEYS) do
  local bucket, field = ARGV[2 * i + 1], ARGV[2 * i + 2]
  local done = false
  if bucket ~= '' then
    local b = bits(is_guid(bucket), field)
    done = redis.call('HEXISTS', node(bucket, b, leaf(bucket, b)), field) == 1
  end
  if done then
    out[i] = 0
  elseif redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    local v = redis.call('GET', k)
    if v == 'd' then out[i] = 0 elseif v == ARGV[1] then out[i] = 1 else out[i] = 2 end
  end
end
return out
"#
);

/// KEYS: the records' claim keys. ARGV[1] = `done_ttl` in ms, then per record its bucket,
/// field and keep (ms). A record with a bucket is written to its leaf (split at 128 fields),
/// the expiry of the leaf and the markers above it is extended to at least its keep (once per
/// leaf and run), and its claim is deleted; a record without one gets its claim key set to
/// `d` for `done_ttl`.
///
/// The claim is deleted whoever holds it: should ours have lapsed and another owner claimed
/// the record meanwhile, the record is published and in its bucket, which every later claim
/// reads first; the other owner's finish or release then finds no claim, which is fine.
pub(super) const FINISH: &str = concat!(
    tree_lua!(),
    r#"
local kept, size, claims = {}, {}, {}
local function keep(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end
local function split(n, d, guid, ms)
  local t = redis.call('PTTL', n)
  if t < ms then t = ms end
  local fields = redis.call('HKEYS', n)
  redis.call('DEL', n)
  redis.call('SET', n, '', 'PX', t)
  marker[n], size[n] = true, nil
  local to = {['0'] = {}, ['1'] = {}}
  for _, f in ipairs(fields) do
    local side = to[string.sub(bits(guid, f), d + 1, d + 1)]
    side[#side + 1] = f
    side[#side + 1] = ''
  end
  for c, args in pairs(to) do
    c = n .. c
    marker[c], size[c] = false, #args / 2
    if #args > 0 then
      redis.call('HSET', c, unpack(args))
      redis.call('PEXPIRE', c, t)
    end
  end
end
for i, k in ipairs(KEYS) do
  local bucket, field, ms = ARGV[3 * i - 1], ARGV[3 * i], tonumber(ARGV[3 * i + 1])
  if bucket == '' then
    redis.call('SET', k, 'd', 'PX', ARGV[1])
  else
    local guid = is_guid(bucket)
    local b = bits(guid, field)
    local d = leaf(bucket, b)
    local n = node(bucket, b, d)
    if redis.call('HSET', n, field, '') == 1 then
      local s = size[n]
      if s == nil then s = redis.call('HLEN', n) else s = s + 1 end
      size[n] = s
      if s >= LEAF and d < MAXD then
        split(n, d, guid, ms)
        d = d + 1
        n = node(bucket, b, d)
      end
    end
    if not kept[n] then
      for j = 0, d do
        local up = node(bucket, b, j)
        if not kept[up] then keep(up, ms); kept[up] = true end
      end
    end
    claims[#claims + 1] = k
  end
end
for i = 1, #claims, 500 do
  redis.call('DEL', unpack(claims, i, math.min(i + 499, #claims)))
end
return #KEYS
"#
);

#[cfg(test)]
mod tests {
    use super::*;

    use crate::domain::TenantId;

    fn tenant() -> TenantId {
        TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").expect("valid tenant id")
    }

    #[test]
    fn only_lowercase_guids_become_their_16_bytes() {
        let id = "80c76bd2-9d81-4c57-a97a-accfc3443dca";
        let g = guid_bytes(id).expect("a GUID");
        assert_eq!(
            g,
            *uuid::Uuid::parse_str(id).expect("valid").as_bytes(),
            "the GUID's own bytes"
        );
        for other in [
            "80C76BD2-9D81-4C57-A97A-ACCFC3443DCA",
            "80c76bd2-9d81-4c57-a97a-accfc3443dc",
            "80c76bd2-9d81-4c57-a97a-accfc3443dcaa",
            "80c76bd29d814c57a97aaccfc3443dca",
            "{80c76bd2-9d81-4c57-a97a-accfc3443dca}",
            "80c76bd2-9d81-4c57-a97a+accfc3443dca",
            "80c76bd2-9d81-4c57-a97a-accfc3443dcg",
            "80c76bd2-9d81-4c57-a97-aaccfc3443dca",
        ] {
            assert_eq!(guid_bytes(other), None, "{other}");
        }
    }

    #[test]
    fn the_creation_hour_reads_only_the_date_and_hour() {
        let h = creation_hour("2015-06-29T20:03:19").expect("an hour");
        assert_eq!(h * 3600, 1_435_608_000, "2015-06-29T20:00:00Z");
        for same in [
            "2015-06-29T20:59:59.9999999",
            "2015-06-29T20:00:00Z",
            "2015-06-29T20",
        ] {
            assert_eq!(creation_hour(same), Some(h), "{same}");
        }
        for bad in [
            "",
            "2015-06-29",
            "2015-06-29 20:03:19",
            "2015-13-29T20:03:19",
            "2015-02-30T20:03:19",
            "2015-06-29T24:03:19",
            "2015/06/29T20:03:19",
            "+015-06-29T20:03:19",
            "20150629T200319",
            "2015-06-29T2é:03",
        ] {
            assert_eq!(creation_hour(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_place_keeps_the_id_exact_and_the_bucket_for_at_least_the_ttl() {
        let ttl = Duration::from_secs(86_400);
        let hour = creation_hour("2024-05-01T10:15:00").expect("an hour");
        let end_ms = (hour + 1) * 3_600_000;

        // Long after the hour: kept for the TTL from now.
        let p = place(
            "p:",
            &tenant(),
            "a",
            "2024-05-01T10:15:00",
            ttl,
            end_ms + 5_000,
        )
        .expect("a place");
        assert_eq!(p.bucket, format!("p:seen:{}:{hour}:s", tenant()));
        assert_eq!(p.field, b"a");
        assert_eq!(p.keep_ms, 86_400_000);
        // Within the hour: kept until the hour ends, then the TTL.
        let p = place(
            "p:",
            &tenant(),
            "a",
            "2024-05-01T10:15:00",
            ttl,
            end_ms - 60_000,
        );
        assert_eq!(p.expect("a place").keep_ms, 86_400_000 + 60_000);
        // An hour far in the future counts as one hour ahead.
        let p = place("p:", &tenant(), "a", "2024-05-01T10:15:00", ttl, 0);
        assert_eq!(p.expect("a place").keep_ms, 86_400_000 + 3_600_000);

        let guid = "80c76bd2-9d81-4c57-a97a-accfc3443dca";
        let p = place("p:", &tenant(), guid, "2024-05-01T10:15:00", ttl, end_ms);
        let p = p.expect("a place");
        assert!(p.bucket.ends_with(":g"), "{}", p.bucket);
        assert_eq!(p.field.len(), 16);

        let longest = "x".repeat(MAX_FIELD);
        let p = place(
            "p:",
            &tenant(),
            &longest,
            "2024-05-01T10:15:00",
            ttl,
            end_ms,
        );
        assert_eq!(p.expect("a place").field, longest.as_bytes());
        let too_long = "x".repeat(MAX_FIELD + 1);
        assert_eq!(
            place(
                "p:",
                &tenant(),
                &too_long,
                "2024-05-01T10:15:00",
                ttl,
                end_ms
            ),
            None
        );
        assert_eq!(place("p:", &tenant(), "a", "", ttl, end_ms), None);
    }
}
