//! The status page's sign-in sessions ([`crate::http::admin::session`]).
//!
//! One key per session, `admin-session:{hash}`: `hash` is the hex SHA-256 of the session id
//! the browser holds in its cookie (Redis never sees the id itself, so reading Redis does not
//! let anyone sign in), the value is the fingerprint of the admin token the session was
//! opened with, and the key expires with the session (`PX`): the expiry is the server's, not
//! the cookie's. Each command touches one key, so nothing needs a hash tag in a cluster; a
//! hash is hex, so it cannot carry a brace that would pick a slot.

use super::{Store, StoreResult};
use std::time::Duration;

/// Sign-in sessions, see [`Store::admin_sessions`].
pub struct AdminSessions<'a>(&'a Store);

impl<'a> AdminSessions<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        AdminSessions(store)
    }

    fn key(&self, id_hash: &str) -> String {
        self.0.key(&format!("admin-session:{id_hash}"))
    }

    /// Keeps a session for `ttl`.
    pub async fn open(&self, id_hash: &str, fingerprint: &str, ttl: Duration) -> StoreResult<()> {
        self.0.set_px(&self.key(id_hash), fingerprint, ttl).await
    }

    /// The fingerprint of a session that exists and has not expired.
    pub async fn fingerprint(&self, id_hash: &str) -> StoreResult<Option<String>> {
        self.0.get(&self.key(id_hash)).await
    }

    /// Ends a session (nothing happens for one that does not exist).
    pub async fn end(&self, id_hash: &str) -> StoreResult<()> {
        self.0.del(&self.key(id_hash)).await
    }
}
