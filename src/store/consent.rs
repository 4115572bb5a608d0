//! Consent states (`consent-state:{state}`): the single-use `state` of an admin-consent link,
//! issued when the link is made and consumed by the callback (so a link works once).

use super::{Store, StoreResult};
use std::time::Duration;

/// Single-use consent states, see [`Store::consent`].
pub struct ConsentStates<'a>(&'a Store);

impl<'a> ConsentStates<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        ConsentStates(store)
    }

    fn key(&self, state: &str) -> String {
        self.0.key(&format!("consent-state:{state}"))
    }

    /// Keeps `state` valid for `ttl`.
    pub async fn issue(&self, state: &str, ttl: Duration) -> StoreResult<()> {
        self.0.set_px(&self.key(state), "1", ttl).await
    }

    /// Consumes `state`: true when it was issued, unexpired and not used before.
    pub async fn take(&self, state: &str) -> StoreResult<bool> {
        Ok(self.0.take(&self.key(state)).await?.is_some())
    }
}
