//! What each tenant's data did lately, for the status page (`/admin/status`, `o365-relay status`):
//! counts per hour and the latest events, written on the data path by every replica.
//!
//! Why it is built so: docs/DESIGN.md, "store/activity".

use super::coalesce::Coalesced;
use super::{Batch, Store, StoreResult};
use crate::domain::{ContentType, TenantId};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an hour's counters are kept: a day and the hour in progress.
const BUCKET_TTL: Duration = Duration::from_secs(25 * 3600);
/// How long five minutes' counters are kept: an hour and the slice in progress.
const SLICE_TTL: Duration = Duration::from_secs(70 * 60);
/// Five-minute slices in "the last hour".
const SLICES: i64 = 12;
/// Hours in "the last day".
const HOURS: i64 = 24;
/// The longest dead-letter reason kept.
const REASON_CAP: usize = 512;

/// How long the webhook's notification counts stay in memory before they are written (one
/// pipelined round trip per tenant and flush instead of one per request).
pub const NOTIFIED_FLUSH: Duration = Duration::from_secs(1);

/// `n` blobs of a tenant's content type notified, counted in memory ([`Store::count_notified`]).
pub(crate) struct Notified {
    tenant: TenantId,
    content_type: ContentType,
    n: u64,
}

/// The store's buffer of notification counts: written [`NOTIFIED_FLUSH`] after the first count
/// of a window, one round trip per tenant ([`Activity::write_notified`]).
pub(super) fn notified_buffer() -> Coalesced<Notified> {
    fn write(store: &Store, batch: Vec<Notified>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move { store.activity().write_notified(batch).await })
    }
    Coalesced::new("notification counts", NOTIFIED_FLUSH, write)
}

impl Store {
    /// Counts `n` blobs of `ct` notified, in memory (the webhook's answer path: no Redis round
    /// trip, no task per request). They are written at most [`NOTIFIED_FLUSH`] later, when the
    /// status page is read, or at the graceful stop ([`Store::flush_coalesced`]).
    pub fn count_notified(self: &Arc<Self>, t: TenantId, ct: ContentType, n: u64) {
        self.notified.push(
            self,
            [Notified {
                tenant: t,
                content_type: ct,
                n,
            }],
        );
    }
}

/// One tenant's counters over a period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Blobs Microsoft notified.
    pub notified: u64,
    /// Blobs relayed whole.
    pub blobs: u64,
    /// Records published.
    pub records: u64,
    /// Blobs relayed that reconciliation found (notifications Microsoft never delivered).
    pub recovered: u64,
    /// Blobs dead-lettered.
    pub dead: u64,
}

impl Counts {
    fn add_fields(&mut self, fields: &HashMap<String, u64>) {
        let get = |k: &str| fields.get(k).copied().unwrap_or(0);
        self.notified += get("notified");
        self.blobs += get("blobs");
        self.records += get("records");
        self.recovered += get("recovered");
        self.dead += get("dead");
    }
}

/// A tenant's recent activity as the status page shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantActivity {
    pub last_hour: Counts,
    pub last_day: Counts,
    /// The latest events (`notified:{ct}`, `relayed:{ct}`, `dead_*`, `subscription:{ct}`).
    pub last: HashMap<String, String>,
}

/// Per-tenant activity, see [`Store::activity`].
pub struct Activity<'a>(&'a Store);

impl<'a> Activity<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Activity(store)
    }

    fn bucket_key(&self, t: &TenantId, at: DateTime<Utc>) -> String {
        self.0.key(&format!(
            "activity:{}:{}",
            self.0.tenant(t),
            at.format("%Y%m%d%H")
        ))
    }

    fn slice_key(&self, t: &TenantId, at: DateTime<Utc>) -> String {
        use chrono::Timelike;
        let minute = at.minute() - at.minute() % 5;
        self.0.key(&format!(
            "activity5:{}:{}{minute:02}",
            self.0.tenant(t),
            at.format("%Y%m%d%H")
        ))
    }

    fn last_key(&self, t: &TenantId) -> String {
        self.0.key(&format!("activity-last:{}", self.0.tenant(t)))
    }

    /// Counts `increments` in the current hour's bucket and sets `latest` fields, one round trip.
    async fn record(
        &self,
        t: &TenantId,
        increments: &[(&str, u64)],
        latest: &[(String, String)],
    ) -> StoreResult<()> {
        let mut c = self.0.conn().await?;
        let mut pipe = redis::pipe();
        let now = Utc::now();
        let counted = increments.iter().filter(|(_, n)| *n > 0);
        for (bucket, ttl) in [
            (self.bucket_key(t, now), BUCKET_TTL),
            (self.slice_key(t, now), SLICE_TTL),
        ] {
            for (field, n) in counted.clone() {
                pipe.hincr(&bucket, *field, *n).ignore();
            }
            if counted.clone().next().is_some() {
                pipe.pexpire(&bucket, ttl.as_millis() as i64).ignore();
            }
        }
        if !latest.is_empty() {
            pipe.hset_multiple(self.last_key(t), latest).ignore();
        }
        let r: Result<(), _> = pipe.query_async(&mut c).await;
        self.0.observe(r)
    }

    /// `n` blobs of `ct` notified by Microsoft.
    pub async fn notified(&self, t: &TenantId, ct: ContentType, n: u64) -> StoreResult<()> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.record(t, &[("notified", n)], &[(format!("notified:{ct}"), now)])
            .await
    }

    /// Writes the counts [`Store::count_notified`] keeps in memory now.
    pub async fn flush_notified(&self) -> StoreResult<()> {
        self.0.notified.flush_now(self.0).await
    }

    /// Writes counts kept in memory: one round trip per tenant. Counts whose write fails are
    /// dropped (a stale status figure, never a record).
    async fn write_notified(&self, batch: Vec<Notified>) -> StoreResult<()> {
        let mut per_tenant: HashMap<TenantId, HashMap<ContentType, u64>> = HashMap::new();
        for Notified {
            tenant,
            content_type,
            n,
        } in batch
        {
            *per_tenant
                .entry(tenant)
                .or_default()
                .entry(content_type)
                .or_default() += n;
        }
        let mut result = Ok(());
        for (t, per_type) in per_tenant {
            let total: u64 = per_type.values().sum();
            let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let latest: Vec<(String, String)> = per_type
                .keys()
                .map(|ct| (format!("notified:{ct}"), now.clone()))
                .collect();
            if let Err(e) = self.record(&t, &[("notified", total)], &latest).await {
                result = Err(e);
            }
        }
        result
    }

    /// A blob of `ct` relayed whole with `records` records; `recovered` when reconciliation
    /// found it.
    pub async fn relayed(
        &self,
        t: &TenantId,
        ct: ContentType,
        records: u64,
        recovered: bool,
    ) -> StoreResult<()> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.record(
            t,
            &[
                ("blobs", 1),
                ("records", records),
                ("recovered", u64::from(recovered)),
            ],
            &[(format!("relayed:{ct}"), now)],
        )
        .await
    }

    /// A blob dead-lettered with `code` and `reason`.
    pub async fn dead(&self, t: &TenantId, code: &str, reason: &str) -> StoreResult<()> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.record(
            t,
            &[("dead", 1)],
            &[
                ("dead_at".into(), now),
                (
                    "dead_code".into(),
                    crate::domain::text::capped(code, 64).into_owned(),
                ),
                (
                    "dead_reason".into(),
                    crate::domain::text::capped(reason, REASON_CAP).into_owned(),
                ),
            ],
        )
        .await
    }

    /// The keeper's last observation of a subscription (JSON).
    pub async fn subscription_seen(
        &self,
        t: &TenantId,
        ct: ContentType,
        json: &str,
    ) -> StoreResult<()> {
        self.record(t, &[], &[(format!("subscription:{ct}"), json.to_string())])
            .await
    }

    /// Each tenant's activity, in one round trip for all of them.
    pub async fn read(&self, tenants: &[TenantId]) -> StoreResult<Vec<TenantActivity>> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        // What this process still holds in memory first (the status page of a single replica
        // is then exact at once; other replicas' counts arrive within NOTIFIED_FLUSH).
        let _ = self.flush_notified().await;
        let now = Utc::now();
        let slices: Vec<DateTime<Utc>> = (0..SLICES)
            .map(|i| now - ChronoDuration::minutes(5 * i))
            .collect();
        let hours: Vec<DateTime<Utc>> =
            (0..HOURS).map(|h| now - ChronoDuration::hours(h)).collect();
        // One tenant's keys share a slot; tenants do not (a cluster gets a pipeline each).
        let mut batch = Batch::default();
        for t in tenants {
            let mut keys = vec![self.last_key(t)];
            keys.extend(slices.iter().map(|at| self.slice_key(t, *at)));
            keys.extend(hours.iter().map(|at| self.bucket_key(t, *at)));
            for k in keys {
                batch.push(&k, redis::Cmd::hgetall(&k));
            }
        }
        let replies: Vec<redis::Value> = self.0.run(batch).await?;
        let per_tenant = 1 + slices.len() + hours.len();
        let mut out = Vec::with_capacity(tenants.len());
        for chunk in replies.chunks(per_tenant) {
            let mut activity = TenantActivity::default();
            if let Some(first) = chunk.first() {
                activity.last = redis::from_redis_value(first).unwrap_or_default();
            }
            for (i, v) in chunk.iter().skip(1).enumerate() {
                let fields: HashMap<String, u64> = redis::from_redis_value(v).unwrap_or_default();
                if i < slices.len() {
                    activity.last_hour.add_fields(&fields);
                } else {
                    activity.last_day.add_fields(&fields);
                }
            }
            out.push(activity);
        }
        Ok(out)
    }

    /// Forgets a tenant's latest events (its hourly counters expire by themselves).
    pub async fn forget(&self, t: &TenantId) -> StoreResult<()> {
        self.0.del(&self.last_key(t)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_counted_per_hour_and_the_latest_kept_per_tenant() {
        let prefix = format!("o365relay:test:activity:{}:", uuid::Uuid::new_v4().simple());
        let store = Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL");
        let a = TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap();
        let b = TenantId::parse("1b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap();
        let activity = store.activity();
        activity
            .notified(&a, ContentType::Exchange, 3)
            .await
            .unwrap();
        activity
            .relayed(&a, ContentType::Exchange, 40, false)
            .await
            .unwrap();
        activity
            .relayed(&a, ContentType::Exchange, 2, true)
            .await
            .unwrap();
        activity.dead(&a, "AF20051", "expired").await.unwrap();
        activity
            .subscription_seen(&b, ContentType::General, r#"{"status":"enabled"}"#)
            .await
            .unwrap();
        let got = activity.read(&[a.clone(), b.clone()]).await.unwrap();
        let want = Counts {
            notified: 3,
            blobs: 2,
            records: 42,
            recovered: 1,
            dead: 1,
        };
        assert_eq!((got[0].last_hour, got[0].last_day), (want, want));
        assert_eq!(got[0].last["dead_code"], "AF20051");
        assert!(got[0].last.contains_key("relayed:Audit.Exchange"));
        assert_eq!(got[1].last_day, Counts::default());
        assert_eq!(
            got[1].last["subscription:Audit.General"],
            r#"{"status":"enabled"}"#
        );
        // Each hour's counters expire after a day and an hour, each slice's after 70 minutes.
        let slice_ttl: i64 = redis::cmd("PTTL")
            .arg(activity.slice_key(&a, Utc::now()))
            .query_async(&mut store.conn().await.unwrap())
            .await
            .unwrap();
        assert!(
            slice_ttl > 60 * 60_000 && slice_ttl <= 70 * 60_000,
            "{slice_ttl}"
        );
        let mut c = store.conn().await.unwrap();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(activity.bucket_key(&a, Utc::now()))
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(ttl > 24 * 3_600_000 && ttl <= 25 * 3_600_000, "{ttl}");
        store.purge_prefix().await.unwrap();
    }

    #[tokio::test]
    async fn counts_kept_in_memory_are_written_per_tenant_and_read_at_once() {
        let prefix = format!("o365relay:test:activity:{}:", uuid::Uuid::new_v4().simple());
        let store = Arc::new(Store::new("redis://127.0.0.1:6379", &prefix).expect("valid URL"));
        let a = TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap();
        let b = TenantId::parse("1b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").unwrap();
        store.count_notified(a.clone(), ContentType::Exchange, 1);
        store.count_notified(a.clone(), ContentType::Exchange, 2);
        store.count_notified(a.clone(), ContentType::General, 1);
        store.count_notified(b.clone(), ContentType::Dlp, 5);
        // Reading the status writes this process's counts first (no wait for the window).
        let got = store
            .activity()
            .read(&[a.clone(), b.clone()])
            .await
            .unwrap();
        assert_eq!(got[0].last_hour.notified, 4);
        assert_eq!(got[1].last_day.notified, 5);
        assert!(got[0].last.contains_key("notified:Audit.Exchange"));
        assert!(got[0].last.contains_key("notified:Audit.General"));
        assert!(got[1].last.contains_key("notified:DLP.All"));
        // Nothing is counted twice when the scheduled flush comes.
        tokio::time::sleep(NOTIFIED_FLUSH + Duration::from_millis(200)).await;
        let got = store.activity().read(&[a, b]).await.unwrap();
        assert_eq!((got[0].last_day.notified, got[1].last_day.notified), (4, 5));
        store.purge_prefix().await.unwrap();
    }
}
