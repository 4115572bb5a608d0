//! Reconciliation checkpoints (`checkpoint:{tenant}:{contentType}`): the end of the last
//! listing window that was listed to its last page and fully enqueued, as RFC 3339.

use super::{Store, StoreResult};
use crate::domain::{ContentType, TenantId};
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Reconciliation checkpoints, see [`Store::checkpoints`].
pub struct Checkpoints<'a>(&'a Store);

impl<'a> Checkpoints<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Checkpoints(store)
    }

    fn key(&self, t: &TenantId, ct: ContentType) -> String {
        self.0.key(&format!("checkpoint:{}:{ct}", self.0.tenant(t)))
    }

    /// The checkpoint, if one is kept and reads as a time.
    pub async fn get(&self, t: &TenantId, ct: ContentType) -> StoreResult<Option<DateTime<Utc>>> {
        let raw = self.0.get(&self.key(t, ct)).await?;
        Ok(raw.and_then(|raw| {
            DateTime::parse_from_rfc3339(&raw)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }))
    }

    /// Saves the checkpoint for `ttl`.
    pub async fn set(
        &self,
        t: &TenantId,
        ct: ContentType,
        end: DateTime<Utc>,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.0
            .set_px(&self.key(t, ct), &end.to_rfc3339(), ttl)
            .await
    }
}
