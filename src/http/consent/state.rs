//! The consent `state`: self-contained and signed, so that a start keeps nothing on the server.
//!
//! Why it is built so: docs/DESIGN.md, "http/consent/state".

use crate::domain::secret::Secret;
use crate::store::{Store, StoreError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a started consent may take.
pub const LIFETIME: Duration = Duration::from_secs(600);
pub use crate::config::MIN_CONSENT_KEY_LEN as MIN_KEY_LEN;
/// How far ahead of this replica's clock another replica's may be.
const CLOCK_SKEW: u64 = 60;
/// How often a key shared through Redis is read again.
const REFRESH: Duration = Duration::from_secs(60);

const VERSION: u8 = 1;
/// What the MAC covers besides the state's bytes: the key signs consent states only.
const LABEL: &[u8] = b"o365-relay consent state\0";
const ID_LEN: usize = 16;
const HASH_LEN: usize = 32;
const MAC_LEN: usize = 32;
const BODY_LEN: usize = 1 + ID_LEN + 8 + HASH_LEN;
const RAW_LEN: usize = BODY_LEN + MAC_LEN;
/// Length of an encoded state (base64url without padding of its 89 bytes).
pub const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// What a state says, once its MAC is verified (or before it is signed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub id: [u8; ID_LEN],
    /// Unix seconds.
    pub expires: u64,
    /// SHA-256 of the browser's nonce.
    pub nonce_hash: [u8; HASH_LEN],
}

impl Claims {
    /// A new state for the browser holding `nonce`, expiring [`LIFETIME`] after `now`.
    pub fn new(nonce: &str, now: u64) -> Claims {
        Claims {
            id: rand::random(),
            expires: now + LIFETIME.as_secs(),
            nonce_hash: nonce_hash(nonce),
        }
    }

    /// The id as the single-use marker names it (hex).
    pub fn id_hex(&self) -> String {
        crate::domain::text::hex(&self.id)
    }

    /// Whether the browser presenting `nonce` (none: no cookie) is the one the state is bound
    /// to; the hashes are compared in constant time.
    pub fn is_bound_to(&self, nonce: Option<&str>) -> bool {
        nonce.is_some_and(|n| openssl::memcmp::eq(&nonce_hash(n), &self.nonce_hash))
    }

    /// How long the state is still valid at `now`.
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.expires.saturating_sub(now))
    }

    fn body(&self) -> [u8; BODY_LEN] {
        let mut b = [0u8; BODY_LEN];
        b[0] = VERSION;
        b[1..1 + ID_LEN].copy_from_slice(&self.id);
        b[1 + ID_LEN..1 + ID_LEN + 8].copy_from_slice(&self.expires.to_be_bytes());
        b[1 + ID_LEN + 8..].copy_from_slice(&self.nonce_hash);
        b
    }
}

/// SHA-256 of a nonce: what a state carries.
pub fn nonce_hash(nonce: &str) -> [u8; HASH_LEN] {
    openssl::sha::sha256(nonce.as_bytes())
}

/// Now, in Unix seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A MAC key (never shown: `Debug` prints `[redacted]`).
#[derive(Clone)]
pub struct StateKey(PKey<Private>);

impl StateKey {
    pub fn new(bytes: &[u8]) -> Result<StateKey, ErrorStack> {
        PKey::hmac(bytes).map(StateKey)
    }

    fn mac(&self, body: &[u8]) -> Result<Vec<u8>, ErrorStack> {
        let mut signer = Signer::new(MessageDigest::sha256(), &self.0)?;
        signer.update(LABEL)?;
        signer.update(body)?;
        signer.sign_to_vec()
    }
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The encoded, signed state.
pub fn sign(key: &StateKey, claims: &Claims) -> Result<String, ErrorStack> {
    let body = claims.body();
    let mut raw = Vec::with_capacity(RAW_LEN);
    raw.extend_from_slice(&body);
    raw.extend_from_slice(&key.mac(&body)?);
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// Why a state was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("malformed")]
    Malformed,
    #[error("MAC does not verify")]
    Forged,
    #[error("expired, or expiring later than any state issued now")]
    Expired,
    #[error("HMAC failed")]
    Crypto(#[source] ErrorStack),
}

/// A state that is well-formed, its MAC not yet checked.
pub struct Unverified {
    body: [u8; BODY_LEN],
    mac: [u8; MAC_LEN],
}

/// Reads `state` if it has the length, alphabet and version of ours; needs no key.
pub fn parse(state: &str) -> Result<Unverified, Refused> {
    if state.len() != ENCODED_LEN
        || !state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(Refused::Malformed);
    }
    let raw = URL_SAFE_NO_PAD
        .decode(state)
        .map_err(|_| Refused::Malformed)?;
    if raw.len() != RAW_LEN || raw[0] != VERSION {
        return Err(Refused::Malformed);
    }
    let mut parsed = Unverified {
        body: [0; BODY_LEN],
        mac: [0; MAC_LEN],
    };
    parsed.body.copy_from_slice(&raw[..BODY_LEN]);
    parsed.mac.copy_from_slice(&raw[BODY_LEN..]);
    Ok(parsed)
}

impl Unverified {
    /// The claims, if the MAC is `key`'s (compared in constant time) and the state is valid
    /// at `now`.
    pub fn verify(&self, key: &StateKey, now: u64) -> Result<Claims, Refused> {
        let expected = key.mac(&self.body).map_err(Refused::Crypto)?;
        // Equal lengths checked first: memcmp::eq panics on different ones.
        if expected.len() != MAC_LEN || !openssl::memcmp::eq(&expected, &self.mac) {
            return Err(Refused::Forged);
        }
        let b = &self.body;
        let mut claims = Claims {
            id: [0; ID_LEN],
            expires: 0,
            nonce_hash: [0; HASH_LEN],
        };
        claims.id.copy_from_slice(&b[1..1 + ID_LEN]);
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&b[1 + ID_LEN..1 + ID_LEN + 8]);
        claims.expires = u64::from_be_bytes(expires);
        claims.nonce_hash.copy_from_slice(&b[1 + ID_LEN + 8..]);
        if claims.expires <= now || claims.expires > now + LIFETIME.as_secs() + CLOCK_SKEW {
            return Err(Refused::Expired);
        }
        Ok(claims)
    }
}

/// The claims of `state` if it is well-formed, carries a MAC of `key`, and is valid at `now`.
pub fn verify(key: &StateKey, state: &str, now: u64) -> Result<Claims, Refused> {
    parse(state)?.verify(key, now)
}

/// Why no key is available.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the consent state key cannot be read from or written to Redis")]
    Store(#[source] StoreError),
    #[error("the consent state key in Redis is not {MIN_KEY_LEN} or more base64url bytes; delete it and a new one is made (consents in progress start again)")]
    BadStoredKey,
    #[error("HMAC key could not be set up")]
    Crypto(#[source] ErrorStack),
}

struct Cached {
    key: StateKey,
    /// As Redis holds it.
    encoded: String,
    read_at: Instant,
}

/// The deployment's MAC key; see docs/DESIGN.md, "http/consent/state".
pub struct Keys {
    configured: Option<StateKey>,
    store: Arc<Store>,
    cached: Mutex<Option<Arc<Cached>>>,
    refreshing: tokio::sync::Mutex<()>,
    /// [`REFRESH`] (shorter in tests).
    refresh: Duration,
}

impl Keys {
    /// `configured` is `O365_CONSENT_STATE_KEY` (at least [`MIN_KEY_LEN`] bytes, checked by
    /// the configuration); without it the key is shared through `store`.
    pub fn new(configured: Option<&Secret<String>>, store: Arc<Store>) -> Result<Keys, ErrorStack> {
        Ok(Keys {
            configured: configured
                .map(|k| StateKey::new(k.expose().as_bytes()))
                .transpose()?,
            store,
            cached: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            refresh: REFRESH,
        })
    }

    fn cached(&self) -> Option<Arc<Cached>> {
        self.cached.lock().expect("poisoned").clone()
    }

    /// The key to sign and verify with.
    pub async fn current(&self) -> Result<StateKey, KeyError> {
        if let Some(k) = &self.configured {
            return Ok(k.clone());
        }
        let cached = self.cached();
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.read_at.elapsed() < self.refresh)
        {
            return Ok(c.key.clone());
        }
        // One task reads Redis; while it does, the others use the key they have.
        let _guard = match (self.refreshing.try_lock(), &cached) {
            (Ok(guard), _) => guard,
            (Err(_), Some(c)) => return Ok(c.key.clone()),
            (Err(_), None) => self.refreshing.lock().await,
        };
        let cached = self.cached();
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.read_at.elapsed() < self.refresh)
        {
            return Ok(c.key.clone());
        }
        // A Redis that lost the key (restarted without persistence) gets ours back, so the
        // replicas that cached it and those starting now keep one key.
        let candidate = cached.as_ref().map_or_else(
            || URL_SAFE_NO_PAD.encode(rand::random::<[u8; MIN_KEY_LEN]>()),
            |c| c.encoded.clone(),
        );
        let read = match self.store.consent().state_key(&candidate).await {
            Ok(Some(encoded)) => encoded,
            Ok(None) => {
                return self.keep(
                    cached,
                    KeyError::Store(StoreError::Unavailable(
                        "the consent state key vanished while it was read".into(),
                    )),
                )
            }
            Err(e) => return self.keep(cached, KeyError::Store(e)),
        };
        if let Some(c) = cached.as_ref().filter(|c| c.encoded == read) {
            self.put(c.key.clone(), read);
            return Ok(c.key.clone());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(read.as_bytes())
            .ok()
            .filter(|b| b.len() >= MIN_KEY_LEN);
        let Some(bytes) = bytes else {
            return self.keep(cached, KeyError::BadStoredKey);
        };
        let key = StateKey::new(&bytes).map_err(KeyError::Crypto)?;
        if cached.is_some() {
            tracing::warn!("The consent state key in Redis changed (deleted, or Redis lost it): consents started before now with the old key must start again.");
        }
        self.put(key.clone(), read);
        Ok(key)
    }

    fn put(&self, key: StateKey, encoded: String) {
        *self.cached.lock().expect("poisoned") = Some(Arc::new(Cached {
            key,
            encoded,
            read_at: Instant::now(),
        }));
    }

    /// Redis could not be read: the key this replica has, read again in a minute, or `e`.
    fn keep(&self, cached: Option<Arc<Cached>>, e: KeyError) -> Result<StateKey, KeyError> {
        match cached {
            Some(c) => {
                tracing::debug!(error = %e, "Consent state key not read again; the cached one is used.");
                self.put(c.key.clone(), c.encoded.clone());
                Ok(c.key.clone())
            }
            None => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StateKey {
        StateKey::new(&[b; 32]).unwrap()
    }

    fn nonce() -> String {
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    }

    #[test]
    fn a_state_round_trips_and_binds_the_nonce() {
        let now = 1_700_000_000;
        let n = nonce();
        let claims = Claims::new(&n, now);
        let state = sign(&key(1), &claims).unwrap();
        assert_eq!(state.len(), ENCODED_LEN);
        assert_eq!(ENCODED_LEN, 119);
        let back = verify(&key(1), &state, now + 1).unwrap();
        assert_eq!(back, claims);
        assert_eq!(back.expires, now + 600);
        assert!(back.is_bound_to(Some(&n)));
        assert!(!back.is_bound_to(Some(&nonce())));
        assert!(!back.is_bound_to(None));
        assert_eq!(back.id_hex().len(), 32);
        assert_eq!(back.remaining(now + 100), Duration::from_secs(500));
        assert_ne!(
            Claims::new(&n, now).id,
            Claims::new(&n, now).id,
            "random ids"
        );
    }

    #[test]
    fn every_tampered_byte_and_another_key_are_refused() {
        let now = 1_700_000_000;
        let state = sign(&key(1), &Claims::new(&nonce(), now)).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&state).unwrap();
        for i in 1..raw.len() {
            let mut t = raw.clone();
            t[i] ^= 0x01;
            let forged = URL_SAFE_NO_PAD.encode(&t);
            assert!(
                matches!(verify(&key(1), &forged, now), Err(Refused::Forged)),
                "byte {i}"
            );
        }
        let mut v = raw.clone();
        v[0] = 2;
        assert!(matches!(
            verify(&key(1), &URL_SAFE_NO_PAD.encode(&v), now),
            Err(Refused::Malformed)
        ));
        assert!(matches!(verify(&key(2), &state, now), Err(Refused::Forged)));
    }

    #[test]
    fn malformed_states_are_refused_without_panicking() {
        let now = 1_700_000_000;
        let good = sign(&key(1), &Claims::new(&nonce(), now)).unwrap();
        for bad in [
            String::new(),
            "x".into(),
            "A".repeat(ENCODED_LEN - 1),
            "A".repeat(ENCODED_LEN + 1),
            "A".repeat(100_000),
            format!("{}=", &good[..ENCODED_LEN - 1]),
            format!("{}+", &good[..ENCODED_LEN - 1]),
            format!("{}é", &good[..ENCODED_LEN - 2]),
            // The last character carries 2 bits only: a non-canonical ending does not decode.
            format!("{}_", &good[..ENCODED_LEN - 1]),
        ] {
            assert!(
                matches!(
                    verify(&key(1), &bad, now),
                    Err(Refused::Malformed | Refused::Forged)
                ),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn expiry_is_checked_after_the_mac() {
        let now = 1_700_000_000;
        let claims = Claims::new(&nonce(), now);
        let state = sign(&key(1), &claims).unwrap();
        assert!(verify(&key(1), &state, now + 599).is_ok());
        assert!(matches!(
            verify(&key(1), &state, now + 600),
            Err(Refused::Expired)
        ));
        // Signed by a replica whose clock is far ahead: refused too.
        assert!(matches!(
            verify(&key(1), &state, now - 61),
            Err(Refused::Expired)
        ));
        assert!(verify(&key(1), &state, now - 59).is_ok());
    }

    fn store(prefix: &str) -> Arc<Store> {
        Arc::new(Store::new("redis://127.0.0.1:6379", prefix).expect("valid URL"))
    }

    /// Against the real Redis, under a prefix of the test's own.
    #[tokio::test]
    async fn replicas_share_one_key_through_redis_even_after_redis_lost_it() {
        let prefix = format!("o365relay:test:state:{}:", uuid::Uuid::new_v4().simple());
        let (a, b) = (store(&prefix), store(&prefix));
        let mut one = Keys::new(None, a.clone()).unwrap();
        let two = Keys::new(None, b.clone()).unwrap();
        let claims = Claims::new(&nonce(), now());
        let state = sign(&one.current().await.unwrap(), &claims).unwrap();
        // Another replica verifies it: same key.
        let k2 = two.current().await.unwrap();
        assert_eq!(verify(&k2, &state, now()).unwrap(), claims);
        // Redis restarts empty: the next replica to start would make a new key, but the first
        // one puts its own back when it reads again, and the newcomer adopts it.
        assert_eq!(
            a.purge_prefix().await.unwrap(),
            1,
            "one key, the signing key"
        );
        one.refresh = Duration::ZERO;
        let again = one.current().await.unwrap();
        assert_eq!(verify(&again, &state, now()).unwrap(), claims);
        let three = Keys::new(None, store(&prefix)).unwrap();
        assert_eq!(
            verify(&three.current().await.unwrap(), &state, now()).unwrap(),
            claims
        );
        // A configured key never touches Redis.
        a.purge_prefix().await.unwrap();
        let configured = Secret::new("c".repeat(32));
        let fixed = Keys::new(Some(&configured), a.clone()).unwrap();
        let k = fixed.current().await.unwrap();
        assert!(verify(&k, &state, now()).is_err());
        assert_eq!(a.purge_prefix().await.unwrap(), 0, "nothing written");
    }

    #[test]
    fn a_key_never_shows_in_debug_output() {
        assert_eq!(format!("{:?}", key(7)), "[redacted]");
    }
}
