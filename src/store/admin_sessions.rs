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

#[cfg(test)]
mod tests {

    use crate::store::tests::{keys, store};
    use redis::AsyncCommands;

    use std::time::Duration;

    #[tokio::test]
    async fn an_admin_session_lives_until_it_expires_or_ends() {
        let store = store();
        let sessions = store.admin_sessions();
        sessions
            .open("a", "fp-a", Duration::from_secs(60))
            .await
            .expect("opened");
        sessions
            .open("b", "fp-b", Duration::from_millis(50))
            .await
            .expect("opened");
        assert_eq!(
            sessions.fingerprint("a").await.expect("read").as_deref(),
            Some("fp-a")
        );
        let mut c = store.conn().await.expect("Redis answers");
        let ttl: i64 = c
            .pttl(format!("{}admin-session:a", store.prefix()))
            .await
            .expect("answered");
        assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(sessions.fingerprint("b").await.expect("read"), None);
        sessions.end("a").await.expect("ended");
        sessions.end("never-opened").await.expect("nothing to end");
        assert_eq!(sessions.fingerprint("a").await.expect("read"), None);
        assert_eq!(keys(&store).await, Vec::<String>::new());
        store.purge_prefix().await.expect("purged");
    }
}
