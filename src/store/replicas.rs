//! Replica heartbeats and lease holders, for the status page.
//!
//! One hash (`replicas`): field = replica id, value = its JSON (host, version, started, last
//! beat). Each running relay beats every few seconds; the replicas alive are those whose last
//! beat is recent, and a reader drops the stale fields — so a killed pod disappears within one
//! expiry without anyone cleaning up, and reading costs one small hash, not a key scan. The
//! reconciler and keeper leases (`lease:{name}`, [`super::leases`]) hold their holder's id,
//! which names the replica.

use super::{Store, StoreResult};
use chrono::{DateTime, Utc};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a replica says of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    pub id: String,
    pub host: String,
    pub version: String,
    pub started_at: String,
    /// Unix milliseconds of the last beat.
    #[serde(default)]
    pub beat_at_ms: i64,
    /// Paused by a full consumer queue (absent when everything flows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream: Option<DownstreamPause>,
}

/// What a replica says of the routing keys a full consumer queue paused on it
/// ([`crate::pipeline::backpressure`]), in its heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownstreamPause {
    pub exchange: String,
    /// When the oldest pause began.
    pub since: DateTime<Utc>,
    /// Routing keys refused now.
    pub routing_keys: usize,
    /// One of them (the oldest), to name in the status line.
    pub example_key: String,
    /// Blobs deferred for a refused key and not relayed since.
    pub waiting_blobs: usize,
}

/// Heartbeats, see [`Store::replicas`].
pub struct Replicas<'a>(&'a Store);

impl<'a> Replicas<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Replicas(store)
    }

    fn key(&self) -> String {
        self.0.key("replicas")
    }

    /// Says "alive, now".
    pub async fn beat(&self, info: &ReplicaInfo) -> StoreResult<()> {
        let info = ReplicaInfo {
            beat_at_ms: Utc::now().timestamp_millis(),
            ..info.clone()
        };
        let json = serde_json::to_string(&info).expect("serialisable");
        let mut c = self.0.conn().await?;
        let r: Result<(), _> = c.hset(self.key(), &info.id, json).await;
        self.0.observe(r)
    }

    /// Says "gone" (a graceful stop).
    pub async fn leave(&self, id: &str) -> StoreResult<()> {
        let mut c = self.0.conn().await?;
        let r: Result<(), _> = c.hdel(self.key(), id).await;
        self.0.observe(r)
    }

    /// The replicas that beat within `alive_for`, sorted by host; older ones are dropped.
    pub async fn alive(&self, alive_for: Duration) -> StoreResult<Vec<ReplicaInfo>> {
        let mut c = self.0.conn().await?;
        let r: Result<Vec<(String, String)>, _> = c.hgetall(self.key()).await;
        let now = Utc::now().timestamp_millis();
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for (id, json) in self.0.observe(r)? {
            match serde_json::from_str::<ReplicaInfo>(&json) {
                Ok(info) if now - info.beat_at_ms <= alive_for.as_millis() as i64 => out.push(info),
                _ => stale.push(id),
            }
        }
        if !stale.is_empty() {
            let r: Result<(), _> = c.hdel(self.key(), stale).await;
            let _ = self.0.observe(r);
        }
        out.sort_by(|a, b| (&a.host, &a.id).cmp(&(&b.host, &b.id)));
        Ok(out)
    }

    /// Who holds the lease `name` (`reconciler`, `keeper`), if anyone.
    pub async fn lease_holder(&self, name: &str) -> StoreResult<Option<String>> {
        self.0.get(&self.0.key(&format!("lease:{name}"))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_that_stops_beating_drops_out() {
        let prefix = format!("o365relay:test:replicas:{}:", uuid::Uuid::new_v4().simple());
        let store = Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL");
        let info = |id: &str| ReplicaInfo {
            downstream: None,
            id: id.into(),
            host: format!("pod-{id}"),
            version: "1".into(),
            started_at: "2026-11-26T00:00:00Z".into(),
            beat_at_ms: 0,
        };
        store.replicas().beat(&info("a")).await.unwrap();
        store.replicas().beat(&info("b")).await.unwrap();
        let alive = store
            .replicas()
            .alive(Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            alive.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        store.replicas().leave("a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let alive = store
            .replicas()
            .alive(Duration::from_millis(10))
            .await
            .unwrap();
        assert!(alive.is_empty(), "{alive:?}");
        store.purge_prefix().await.unwrap();
    }
}
