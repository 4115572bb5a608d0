//! The compact done markers of [`super::Dedup::publish_once`]: where a record is claimed and
//! remembered, and the three Lua scripts that claim, finish and release a batch in one round
//! trip each.
//!
//! Why it is built so: docs/DESIGN.md, "store/dedup/seen".

use std::time::Duration;

/// An id longer than this (bytes) is not kept in a bucket: Redis's default
/// `hash-max-listpack-value`, above which the hash would become a real hash table.
pub(super) const MAX_FIELD: usize = 64;

/// An owner longer than this is written into a leaf as a hash of it, so that a claim's value
/// (`{owner}:{until_ms}`) stays within `hash-max-listpack-value`.
const MAX_OWNER: usize = 40;

/// An hour ending later than this from now counts as ending this far from now (expiry).
const MAX_AHEAD_MS: i64 = 3_600_000;

/// Longest keep (ms), far above `O365_RECORD_DEDUP_TTL`'s 30 days: the scripts pass it through
/// a Lua number, which must stay an exact integer.
const MAX_KEEP_MS: u64 = 400 * 86_400_000;

/// One record's place, see docs/DESIGN.md, "store/dedup/seen".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Place {
    /// The bucket: the hour of the record's `CreationTime`, from the epoch …
    pub hour: i64,
    /// … and the kind of its id: `g` (a GUID, kept as its 16 bytes) or `s` (any other).
    pub kind: char,
    /// The id, exact: 16 raw bytes for a GUID, else the id itself.
    pub field: Vec<u8>,
    /// How long (ms from now) the bucket's keys are kept at least once this record is in it.
    pub keep_ms: u64,
}

/// Where a record is remembered, or `None` when it keeps a key of its own (no usable
/// `CreationTime`, or an id longer than [`MAX_FIELD`]).
pub(super) fn place(id: &str, created: &str, done_ttl: Duration, now_ms: i64) -> Option<Place> {
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
        hour,
        kind,
        field,
        keep_ms: ttl_ms.saturating_add(ahead).clamp(1, MAX_KEEP_MS),
    })
}

/// The bucket's root key, `{prefix}dedup:{tenant}:{hour}:{kind}` (its leaves append `:{n}`).
pub(super) fn bucket(prefix: &str, segment: &dyn std::fmt::Display, p: &Place) -> String {
    format!("{prefix}dedup:{segment}:{}:{}", p.hour, p.kind)
}

/// The same bucket in the previous version's layout, `{prefix}seen:{tenant}:{hour}:{kind}`,
/// still read for the records it remembers (docs/DESIGN.md, "store/dedup/seen").
pub(super) fn previous_bucket(prefix: &str, segment: &dyn std::fmt::Display, p: &Place) -> String {
    format!("{prefix}seen:{segment}:{}:{}", p.hour, p.kind)
}

/// How `owner` is written into a leaf's claim: itself, or the hex of its SHA-256 (cut to
/// [`MAX_OWNER`]) when longer.
pub(super) fn owner_tag(owner: &str) -> std::borrow::Cow<'_, str> {
    if owner.len() <= MAX_OWNER && !owner.contains(':') {
        return owner.into();
    }
    let digest = openssl::sha::sha256(owner.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..MAX_OWNER].to_string().into()
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

/// The helpers the three scripts share, per script run (one batch). See docs/DESIGN.md,
/// "store/dedup/seen" for the layout they keep.
///
/// - `hash`: a field's 24-bit spread. For a GUID (a bucket of kind `g`) its first three bytes
///   XOR its last three: random in Microsoft's (version 4) GUIDs, and still varied in
///   time-ordered ones, whichever end changes; for other ids the start of SHA-1
///   (`redis.sha1hex`, which costs several µs, so not spent on GUIDs). It only spreads the
///   fields over leaves: a poor spread costs memory, never an answer.
/// - `read`/`open`/`close`: a bucket's root (`n c e b`: leaves, fields, expiry in ms since the
///   epoch, last batch number; a root without `b`, as the first form of this layout wrote it,
///   has numbered none), read once per run and written once if it changed. `open` moves the
///   expiry of the root and every leaf to at least now + keep (plus a
///   sixteenth of it, at most an hour, so a busy bucket moves it rarely), and with `create`
///   creates a missing bucket (leaf 0).
/// - `leaf`: the leaf a hash lives in (linear hashing: `n` leaves, the low bits of the hash),
///   its name built once per run.
/// - `grew`: counts new fields, and splits the next leaf while the bucket holds more than 48
///   fields a leaf, so no leaf passes 128.
/// - `owner_of`: the owner and deadline of a claim (`{owner}:{until_ms}`).
/// - `entry`/`batch_state`: a batch's entry, the field `\xfe{number}` in the leaf its number
///   names (as if it were its hash; a record's field never starts so below 16 bytes: ids are
///   UTF-8, GUID fields are 16 bytes), and what it says (cached per run): `''` published, a
///   claim, or `false` (released, or never written). It is not counted among the fields.
macro_rules! bucket_lua {
    () => {
        r#"
local SENT, PER_LEAF, MAXN = '\255', 48, 16777216
local floor, bxor = math.floor, bit.bxor
local now
do
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end
local function hash(g, f)
  if #f < 16 and string.byte(f) == 254 then return tonumber(string.sub(f, 2)) end
  if g then
    local a1, a2, a3 = string.byte(f, 1, 3)
    local b1, b2, b3 = string.byte(f, 14, 16)
    return bxor(a1, b1) * 65536 + bxor(a2, b2) * 256 + bxor(a3, b3)
  end
  return tonumber(string.sub(redis.sha1hex(f), 1, 6), 16)
end
local function pow2(n)
  local p = 1
  while p * 2 <= n do p = p * 2 end
  return p
end
local function read(root)
  local v = redis.call('GET', root)
  if not v then return nil end
  local n, c, e, b = string.match(v, '^(%d+) (%d+) (%d+) ?(%d*)$')
  if not n then return nil end
  n = tonumber(n)
  return {root = root, g = string.byte(root, -1) == 103, n = n, c = tonumber(c),
    e = tonumber(e), bn = tonumber(b) or 0, p = pow2(n), names = {}, states = {}}
end
local function open(root, keep, create)
  local b = read(root)
  local need = now + keep
  local slack = math.min(floor(keep / 16), 3600000)
  if not b then
    if not create then return nil end
    b = {root = root, g = string.byte(root, -1) == 103, n = 1, c = 0, e = need + slack,
      bn = 0, p = 1, names = {}, states = {}, dirty = true}
    redis.call('HSET', root .. ':0', SENT, '')
    redis.call('PEXPIREAT', root .. ':0', b.e)
  elseif b.e < need then
    b.e, b.dirty = need + slack, true
    for i = 0, b.n - 1 do redis.call('PEXPIREAT', root .. ':' .. i, b.e) end
  end
  return b
end
local function close(b)
  if b and b.dirty then
    redis.call('SET', b.root, b.n .. ' ' .. b.c .. ' ' .. b.e .. ' ' .. b.bn, 'PXAT', b.e)
  end
end
local function leaf(b, h)
  local a = h % b.p
  if a < b.n - b.p then a = h % (2 * b.p) end
  local k = b.names[a]
  if not k then
    k = b.root .. ':' .. a
    b.names[a] = k
  end
  return k
end
local function split(b)
  local p = b.p
  local s = b.n - p
  local from = b.root .. ':' .. s
  local to = b.root .. ':' .. (s + p)
  local all = redis.call('HGETALL', from)
  local stay, move = {SENT, ''}, {SENT, ''}
  for i = 1, #all, 2 do
    local f = all[i]
    if f ~= SENT then
      local side = move
      if hash(b.g, f) % (2 * p) == s then side = stay end
      side[#side + 1] = f
      side[#side + 1] = all[i + 1]
    end
  end
  -- Written afresh rather than thinned with HDEL (which moves the listpack's tail once per
  -- field it deletes).
  redis.call('DEL', from)
  redis.call('HSET', from, unpack(stay))
  redis.call('HSET', to, unpack(move))
  redis.call('PEXPIREAT', from, b.e)
  redis.call('PEXPIREAT', to, b.e)
  b.n = b.n + 1
  b.p = pow2(b.n)
end
local function grew(b)
  b.c, b.dirty = b.c + 1, true
  while b.c > PER_LEAF * b.n and b.n < MAXN do split(b) end
end
local function owner_of(v)
  local o, u = string.match(v, '^(.*):(%d+)$')
  return o, tonumber(u)
end
local function entry(no)
  return '\254' .. no
end
local function batch_state(b, no)
  local s = b.states[no]
  if s == nil then
    s = redis.call('HGET', leaf(b, tonumber(no)), entry(no)) or false
    b.states[no] = s
  end
  return s
end
"#
    };
}

/// The previous version's tree of buckets (`seen:{tenant}:{hour}:{kind}:{path}`), read only:
/// `in_previous(base, g, field)` tells whether it remembers the field. Its leaf is the first
/// node of the field's path (24 bits of the same spread, as `0`/`1`) that is not a split
/// marker (an empty string).
macro_rules! previous_lua {
    () => {
        r#"
local NIB = {'0000','0001','0010','0011','0100','0101','0110','0111','1000','1001','1010',
  '1011','1100','1101','1110','1111'}
local function bits(g, f)
  local h, out = hash(g, f), {}
  for i = 5, 0, -1 do out[#out + 1] = NIB[floor(h / 16 ^ i) % 16 + 1] end
  return table.concat(out)
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
local function in_previous(base, g, f)
  local b = bits(g, f)
  local d = 0
  while d < 24 and is_marker(base .. ':' .. string.sub(b, 1, d)) do d = d + 1 end
  return redis.call('HEXISTS', base .. ':' .. string.sub(b, 1, d), f) == 1
end
"#
    };
}

/// KEYS: the batch's bucket roots, then the own keys of the records without a bucket (for the
/// cluster's routing). ARGV[1] = owner (as [`owner_tag`] writes it), ARGV[2] = claim PX,
/// ARGV[3] = the owner of a claim in an own key (`p:{owner}`), ARGV[4] = the number of buckets;
/// per bucket its keep (ms) and its previous-layout base; per record its own key, its bucket
/// (1-based, 0: none) and its field. Returns per record 0 = already published, 1 = claimed by
/// this owner (now or before), 2 = claimed by another owner whose claim has not lapsed; then
/// per bucket the number of the batch its records were claimed under (0: none).
///
/// A record with a bucket is claimed in its leaf, its value the number of this run's batch in
/// the bucket; the batch's entry (`\xfe{number}`, in the leaf its number names) holds its
/// claim (`{owner}:{until_ms}`), written once for all of them. A record whose batch lapsed or was released is claimed again
/// (pointed at this batch). One without a bucket is claimed in its own key. The previous
/// version's markers are honoured: an own key `d` (or a claim `p:…`), and the previous
/// layout's tree, each asked only when it exists; so is the first form of this layout, a claim
/// written into the leaf itself.
pub(super) const CLAIM: &str = concat!(
    bucket_lua!(),
    previous_lua!(),
    r#"
local owner, ttl, own_claim, nb = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local claim = owner .. ':' .. (now + ttl)
local buckets, previous = {}, {}
for j = 1, nb do
  local b = open(KEYS[j], tonumber(ARGV[3 + 2 * j]), true)
  b.next = tostring(b.bn + 1)
  buckets[j] = b
  local base = ARGV[4 + 2 * j]
  if redis.call('EXISTS', base .. ':') == 1 then previous[j] = base end
end
-- This run's batch in bucket b, its entry written on first use.
local function mine(b)
  if not b.used then
    b.used, b.bn, b.dirty = true, b.bn + 1, true
    redis.call('HSET', leaf(b, b.bn), entry(b.next), claim)
    b.states[b.next] = claim
  end
  return b.next
end
local first = 5 + 2 * nb
local own = {}
for i = first, #ARGV, 3 do
  if ARGV[i + 1] ~= '0' then own[#own + 1] = ARGV[i] end
end
local legacy = false
for i = 1, #own, 500 do
  if redis.call('EXISTS', unpack(own, i, math.min(i + 499, #own))) > 0 then legacy = true end
end
local out = {}
for i = first, #ARGV, 3 do
  local k, j, f = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local r
  if j == 0 or legacy then
    local v
    if j == 0 and redis.call('SET', k, own_claim, 'NX', 'PX', ttl) then
      r = 1
    else
      v = redis.call('GET', k)
      if v == 'd' then r = 0 elseif v == own_claim then r = 1 elseif v or j == 0 then r = 2 end
    end
  end
  if r == nil and previous[j] and in_previous(previous[j], buckets[j].g, f) then r = 0 end
  if r == nil then
    local b = buckets[j]
    local n = leaf(b, hash(b.g, f))
    if redis.call('HSETNX', n, f, b.next) == 1 then
      mine(b)
      r = 1
      grew(b)
    else
      local v = redis.call('HGET', n, f)
      local s = v
      if v ~= '' and not string.find(v, ':', 1, true) then s = batch_state(b, v) end
      if s == '' then
        r = 0
      else
        local o, u
        if s then o, u = owner_of(s) end
        if s and o ~= owner and u and u > now then
          r = 2
        else
          r = 1
          if v ~= b.next or not b.used then
            mine(b)
            redis.call('HSET', n, f, b.next)
          end
        end
      end
    end
  end
  out[#out + 1] = r
end
for j = 1, nb do
  close(buckets[j])
  out[#out + 1] = buckets[j].used and buckets[j].bn or 0
end
return out
"#
);

/// KEYS: as [`CLAIM`]. ARGV[1] = `done_ttl` in ms, ARGV[2] = owner (as [`owner_tag`] writes
/// it), ARGV[3] = the number of buckets; per bucket its keep (ms) and the number of the batch
/// [`CLAIM`] returned for it (0: none); then the own keys of the records without a bucket.
/// Each batch still claimed by this owner becomes published (`''` in its entry), and with
/// it every record pointed at it; each own key is set to `d` for `done_ttl`.
///
/// Should the batch's claim have lapsed and records of it been claimed by another owner
/// meanwhile, those records point at the other owner's batch now and are published by it
/// too (at least once). Should the bucket have expired meanwhile, nothing is recreated: its
/// records are no longer remembered, as after their keep.
pub(super) const FINISH: &str = concat!(
    bucket_lua!(),
    r#"
local ttl, owner, nb = ARGV[1], ARGV[2], tonumber(ARGV[3])
for j = 1, nb do
  local no = ARGV[3 + 2 * j]
  if no ~= '0' then
    local b = open(KEYS[j], tonumber(ARGV[2 + 2 * j]), false)
    if b then
      local s = batch_state(b, no)
      if s and s ~= '' and owner_of(s) == owner then
        redis.call('HSET', leaf(b, tonumber(no)), entry(no), '')
      end
      close(b)
    end
  end
end
for i = 4 + 2 * nb, #ARGV do redis.call('SET', ARGV[i], 'd', 'PX', ttl) end
return 1
"#
);

/// KEYS: as [`CLAIM`]. ARGV[1] = owner (as [`owner_tag`] writes it), ARGV[2] = the owner of a
/// claim in an own key (`p:{owner}`), ARGV[3] = the number of buckets; per bucket the number of
/// the batch [`CLAIM`] returned for it (0: none); then the own keys of the records without a
/// bucket. Gives up the claims the owner still holds (publishing failed) so a retry can take
/// them at once: each batch's entry is deleted, and its records read as unclaimed.
pub(super) const RELEASE: &str = concat!(
    bucket_lua!(),
    r#"
local owner, own_claim, nb = ARGV[1], ARGV[2], tonumber(ARGV[3])
for j = 1, nb do
  local no = ARGV[3 + j]
  local b = no ~= '0' and read(KEYS[j])
  if b then
    local n = leaf(b, tonumber(no))
    local s = redis.call('HGET', n, entry(no))
    if s and owner_of(s) == owner then redis.call('HDEL', n, entry(no)) end
  end
end
for i = 4 + nb, #ARGV do
  if redis.call('GET', ARGV[i]) == own_claim then redis.call('DEL', ARGV[i]) end
end
return 1
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
        let at = "2024-05-01T10:15:00";
        let hour = creation_hour(at).expect("an hour");
        let end_ms = (hour + 1) * 3_600_000;

        // Long after the hour: kept for the TTL from now.
        let p = place("a", at, ttl, end_ms + 5_000).expect("a place");
        assert_eq!((p.hour, p.kind), (hour, 's'));
        assert_eq!(
            bucket("p:", &tenant(), &p),
            format!("p:dedup:{}:{hour}:s", tenant())
        );
        assert_eq!(
            previous_bucket("p:", &tenant(), &p),
            format!("p:seen:{}:{hour}:s", tenant())
        );
        assert_eq!(p.field, b"a");
        assert_eq!(p.keep_ms, 86_400_000);
        // Within the hour: kept until the hour ends, then the TTL.
        let p = place("a", at, ttl, end_ms - 60_000);
        assert_eq!(p.expect("a place").keep_ms, 86_400_000 + 60_000);
        // An hour far in the future counts as one hour ahead.
        let p = place("a", at, ttl, 0);
        assert_eq!(p.expect("a place").keep_ms, 86_400_000 + 3_600_000);

        let guid = "80c76bd2-9d81-4c57-a97a-accfc3443dca";
        let p = place(guid, at, ttl, end_ms).expect("a place");
        assert_eq!(p.kind, 'g');
        assert_eq!(p.field.len(), 16);

        let longest = "x".repeat(MAX_FIELD);
        let p = place(&longest, at, ttl, end_ms);
        assert_eq!(p.expect("a place").field, longest.as_bytes());
        let too_long = "x".repeat(MAX_FIELD + 1);
        assert_eq!(place(&too_long, at, ttl, end_ms), None);
        assert_eq!(place("a", "", ttl, end_ms), None);
    }

    #[test]
    fn an_owner_is_written_into_a_leaf_short_and_without_a_colon() {
        let uuid = "5f0c6d1e2a3b4c5d6e7f8091a2b3c4d5";
        assert_eq!(owner_tag(uuid), uuid);
        for other in ["x".repeat(MAX_OWNER + 1), "a:1".to_string()] {
            let tag = owner_tag(&other);
            assert_eq!(tag.len(), MAX_OWNER, "{other}");
            assert!(!tag.contains(':'));
            assert_ne!(tag, owner_tag(&format!("{other}y")), "one-to-one enough");
        }
    }
}
