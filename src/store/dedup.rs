//! De-duplication: blob markers and record claims.
//!
//! Blob markers, each `"1"` with an expiry:
//! - `relayed:{tenant}:{contentId}` — every record of the blob was published;
//! - `dead:{tenant}:{contentId}` — the blob was dead-lettered, so reconciliation does not
//!   enqueue it again and again while Microsoft still lists it (an operator requeues dead
//!   letters explicitly);
//! - `reconcile-enqueued:{tenant}:{contentId}` — the blob was enqueued by reconciliation and
//!   waits in the work or retry queue, so the next passes do not enqueue it again.
//!
//! Record claims (`rec:{tenant}:{recordId}`) make a record Microsoft put in several blobs go
//! out once across blobs, workers and replicas: see [`Dedup::publish_once`].

use super::{Store, StoreResult, RELEASE};
use crate::domain::{ContentId, TenantId};
use redis::AsyncCommands;
use std::future::Future;
use std::time::{Duration, Instant};

/// Claims each KEYS[i] with ARGV[1] (PX ARGV[2]) unless taken: 1 = claimed now, 0 = already
/// published (`d`), 2 = claimed by someone else.
const CLAIM: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1
  else
    local v = redis.call('GET', k)
    if v == 'd' then out[i] = 0 elseif v == ARGV[1] then out[i] = 1 else out[i] = 2 end
  end
end
return out
"#;

/// The value of a published record's key.
const DONE: &str = "d";

/// How often records another owner is publishing are asked about again.
const PENDING_POLL: Duration = Duration::from_millis(100);

/// What happened to a record claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// Claimed by us now (or earlier by the same owner): publish it.
    Mine,
    /// Already published.
    Done,
    /// Another owner is publishing it right now: wait, then ask again.
    Pending,
}

/// The markers kept for one blob.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobMarkers {
    pub relayed: bool,
    pub enqueued: bool,
    pub dead: bool,
}

/// How [`Dedup::publish_once`] claims records.
#[derive(Debug, Clone, Copy)]
pub struct ClaimPolicy<'a> {
    /// Who claims: one owner per attempt at a blob.
    pub owner: &'a str,
    /// How long a claim survives an owner that died mid-publish.
    pub claim_ttl: Duration,
    /// How long a published record stays marked; zero turns record de-duplication off.
    pub done_ttl: Duration,
    /// How long records another owner is publishing are waited for.
    pub give_up_after: Duration,
}

/// What [`Dedup::publish_once`] did with a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishedOnce {
    /// Records handed to the publisher (and confirmed by it).
    pub published: u64,
    /// Records already published by someone else, not published again.
    pub duplicates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishOnceError<E> {
    /// The publisher failed; the claims of its records were released.
    #[error(transparent)]
    Publish(E),
    /// Records stayed claimed by another owner longer than the policy waits.
    #[error("{0} records stayed claimed by another worker")]
    Busy(usize),
}

/// Blob markers and record claims, see [`Store::dedup`].
pub struct Dedup<'a>(&'a Store);

impl<'a> Dedup<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Dedup(store)
    }

    // ---- keys --------------------------------------------------------------------------------

    fn relayed_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.0.key(&format!("relayed:{t}:{c}"))
    }

    fn enqueued_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.0.key(&format!("reconcile-enqueued:{t}:{c}"))
    }

    fn dead_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.0.key(&format!("dead:{t}:{c}"))
    }

    fn record_key(&self, t: &TenantId, record_id: &str) -> String {
        self.0.key(&format!("rec:{t}:{record_id}"))
    }

    // ---- blob markers ------------------------------------------------------------------------

    pub async fn is_relayed(&self, t: &TenantId, c: &ContentId) -> StoreResult<bool> {
        let mut conn = self.0.conn().await?;
        let r = conn.exists(self.relayed_key(t, c)).await;
        self.0.observe(r)
    }

    /// Marks the blob relayed for `ttl`; kept in memory while Redis is down and written when it
    /// is back ([`Store::flush_deferred`]).
    pub async fn mark_relayed(
        &self,
        t: &TenantId,
        c: &ContentId,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.0
            .set_many_or_defer(vec![(self.relayed_key(t, c), "1")], ttl)
            .await
    }

    pub async fn mark_dead(&self, t: &TenantId, c: &ContentId, ttl: Duration) -> StoreResult<()> {
        self.0.set_px(&self.dead_key(t, c), "1", ttl).await
    }

    /// Marks the blob enqueued by reconciliation for `ttl`.
    pub async fn mark_enqueued(
        &self,
        t: &TenantId,
        c: &ContentId,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.0.set_px(&self.enqueued_key(t, c), "1", ttl).await
    }

    /// The markers of each blob, in one round trip.
    pub async fn markers(
        &self,
        t: &TenantId,
        blobs: &[&ContentId],
    ) -> StoreResult<Vec<BlobMarkers>> {
        let mut keys = Vec::with_capacity(blobs.len() * 3);
        for c in blobs {
            keys.push(self.relayed_key(t, c));
            keys.push(self.enqueued_key(t, c));
            keys.push(self.dead_key(t, c));
        }
        let found = self.0.exists_many(&keys).await?;
        Ok(found
            .chunks(3)
            .map(|m| BlobMarkers {
                relayed: m.first().copied().unwrap_or(false),
                enqueued: m.get(1).copied().unwrap_or(false),
                dead: m.get(2).copied().unwrap_or(false),
            })
            .collect())
    }

    // ---- records -----------------------------------------------------------------------------

    /// Publishes each record of `records` once across blobs, workers and replicas: the one
    /// call for claim → publish → finish.
    ///
    /// Each record's key is claimed (`p:{owner}`, expiring after `claim_ttl` should the owner
    /// die) in one round trip for the batch; `publish` gets the records claimed now. After it
    /// succeeds they are marked published (`d`, for `done_ttl`); when it fails their claims are
    /// released so a retry publishes them at once, and the error is returned. Records already
    /// published are counted as duplicates and not published again. Records another owner is
    /// publishing right now are asked about again every 100 ms until they are done (or
    /// lapse, and are claimed here), for at most `give_up_after`:
    /// [`PublishOnceError::Busy`].
    ///
    /// Without Redis every record is published (consumers de-duplicate on `message_id`) and
    /// the markers are written when Redis is back ([`Store::flush_deferred`]). With `done_ttl`
    /// zero, record de-duplication is off: every record is published and Redis is not asked.
    pub async fn publish_once<T, E, F, Fut>(
        &self,
        tenant: &TenantId,
        records: Vec<T>,
        id: impl Fn(&T) -> &str,
        policy: ClaimPolicy<'_>,
        mut publish: F,
    ) -> Result<PublishedOnce, PublishOnceError<E>>
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let mut done = PublishedOnce::default();
        if policy.done_ttl.is_zero() {
            let n = records.len() as u64;
            if n > 0 {
                publish(records).await.map_err(PublishOnceError::Publish)?;
            }
            done.published = n;
            return Ok(done);
        }
        let give_up_at = Instant::now() + policy.give_up_after;
        let mut todo = records;
        while !todo.is_empty() {
            let keys: Vec<String> = todo
                .iter()
                .map(|r| self.record_key(tenant, id(r)))
                .collect();
            let (mine, mine_keys, pending) =
                match self.claim(&keys, policy.owner, policy.claim_ttl).await {
                    Ok(claims) => {
                        let (mut mine, mut mine_keys, mut pending) =
                            (Vec::new(), Vec::new(), Vec::new());
                        for ((r, k), c) in todo.into_iter().zip(keys).zip(claims) {
                            match c {
                                Claim::Mine => {
                                    mine.push(r);
                                    mine_keys.push(k);
                                }
                                Claim::Done => done.duplicates += 1,
                                Claim::Pending => pending.push(r),
                            }
                        }
                        (mine, mine_keys, pending)
                    }
                    // Redis is down: publish without de-duplication.
                    Err(_) => (todo, keys, Vec::new()),
                };
            if !mine.is_empty() {
                let n = mine.len() as u64;
                if let Err(e) = publish(mine).await {
                    let _ = self.release(&mine_keys, policy.owner).await;
                    return Err(PublishOnceError::Publish(e));
                }
                done.published += n;
                let _ = self.finish(mine_keys, policy.done_ttl).await;
            }
            todo = pending;
            if !todo.is_empty() {
                if Instant::now() > give_up_at {
                    return Err(PublishOnceError::Busy(todo.len()));
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
        Ok(done)
    }

    /// Claims record keys for `owner`, one round trip for the batch. Each key ends as
    /// `p:{owner}` (claimed, being published) or `d` (published).
    async fn claim(&self, keys: &[String], owner: &str, ttl: Duration) -> StoreResult<Vec<Claim>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = self.0.conn().await?;
        let script = redis::Script::new(CLAIM);
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(k);
        }
        inv.arg(format!("p:{owner}"))
            .arg(ttl.as_millis().max(1) as u64);
        let r: Result<Vec<i64>, _> = inv.invoke_async(&mut c).await;
        self.0.observe(r).map(|v| {
            v.into_iter()
                .map(|n| match n {
                    1 => Claim::Mine,
                    0 => Claim::Done,
                    _ => Claim::Pending,
                })
                .collect()
        })
    }

    /// Marks published records done for `ttl` (deferred while Redis is down).
    async fn finish(&self, keys: Vec<String>, ttl: Duration) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let writes = keys.into_iter().map(|k| (k, DONE)).collect();
        self.0.set_many_or_defer(writes, ttl).await
    }

    /// Gives up claims `owner` still holds (publishing failed), so a retry can take them at
    /// once.
    async fn release(&self, keys: &[String], owner: &str) -> StoreResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut c = self.0.conn().await?;
        let mut pipe = redis::pipe();
        let holder = format!("p:{owner}");
        for k in keys {
            pipe.cmd("EVAL")
                .arg(RELEASE)
                .arg(1)
                .arg(k)
                .arg(&holder)
                .ignore();
        }
        let r: Result<(), _> = pipe.query_async(&mut c).await;
        self.0.observe(r)
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), each test under a prefix of its own that it
    //! purges at the end.
    use super::*;
    use std::sync::Mutex;

    const REDIS: &str = "redis://127.0.0.1:6379";

    fn store() -> Store {
        let prefix = format!("o365relay:test:dedup:{}:", uuid::Uuid::new_v4().simple());
        Store::new(REDIS, &prefix).expect("valid URL")
    }

    fn tenant() -> TenantId {
        TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").expect("valid tenant id")
    }

    /// `owner` claims record `id` for `ttl`, as another replica would.
    async fn claimed_elsewhere(store: &Store, id: &str, owner: &str, ttl: Duration) {
        let dedup = store.dedup();
        let keys = vec![dedup.record_key(&tenant(), id)];
        dedup.claim(&keys, owner, ttl).await.expect("claimed");
    }

    fn policy(owner: &str) -> ClaimPolicy<'_> {
        ClaimPolicy {
            owner,
            claim_ttl: Duration::from_secs(20),
            done_ttl: Duration::from_secs(60),
            give_up_after: Duration::from_secs(5),
        }
    }

    /// What a publisher was handed, call by call.
    #[derive(Default)]
    struct Sink(Mutex<Vec<Vec<String>>>);

    impl Sink {
        async fn publish(&self, records: Vec<&str>) -> Result<(), String> {
            let batch = records.into_iter().map(str::to_string).collect();
            self.0.lock().expect("poisoned").push(batch);
            Ok(())
        }
        fn calls(&self) -> Vec<Vec<String>> {
            self.0.lock().expect("poisoned").clone()
        }
    }

    async fn publish_once(
        store: &Store,
        records: &[&str],
        policy: ClaimPolicy<'_>,
        sink: &Sink,
    ) -> Result<PublishedOnce, PublishOnceError<String>> {
        store
            .dedup()
            .publish_once(
                &tenant(),
                records.to_vec(),
                |r| r,
                policy,
                |batch| sink.publish(batch),
            )
            .await
    }

    #[tokio::test]
    async fn a_record_is_published_once_and_a_second_owner_sees_it_done() {
        let store = store();
        let first = Sink::default();
        let got = publish_once(&store, &["r1", "r2", "r3"], policy("a"), &first)
            .await
            .expect("published");
        assert_eq!(
            got,
            PublishedOnce {
                published: 3,
                duplicates: 0
            }
        );
        assert_eq!(first.calls(), vec![vec!["r1", "r2", "r3"]]);
        // The key names and values other replicas share.
        let key = format!("{}rec:{}:r2", store.prefix(), tenant());
        assert_eq!(
            store.get(&key).await.expect("Redis answers").as_deref(),
            Some("d")
        );

        let second = Sink::default();
        let got = publish_once(&store, &["r2", "r4", "r1"], policy("b"), &second)
            .await
            .expect("published");
        assert_eq!(
            got,
            PublishedOnce {
                published: 1,
                duplicates: 2
            }
        );
        assert_eq!(second.calls(), vec![vec!["r4"]]);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn a_failed_publish_releases_its_claims_so_a_retry_publishes_them() {
        let store = store();
        let failing = store
            .dedup()
            .publish_once(
                &tenant(),
                vec!["r1", "r2"],
                |r| r,
                policy("a"),
                |_| async { Err::<(), _>("broker down".to_string()) },
            )
            .await;
        assert!(
            matches!(&failing, Err(PublishOnceError::Publish(e)) if e == "broker down"),
            "{failing:?}"
        );
        let key = format!("{}rec:{}:r1", store.prefix(), tenant());
        assert_eq!(
            store.get(&key).await.expect("Redis answers"),
            None,
            "claim released"
        );

        // Another owner (the retry) publishes them at once instead of waiting for the claims.
        let retry = Sink::default();
        let started = Instant::now();
        let got = publish_once(&store, &["r1", "r2"], policy("b"), &retry)
            .await
            .expect("published");
        assert_eq!(
            got,
            PublishedOnce {
                published: 2,
                duplicates: 0
            }
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn records_another_owner_is_publishing_are_waited_for_then_counted_done() {
        let store = store();
        let dedup = store.dedup();
        let keys: Vec<String> = ["r1", "r2"]
            .iter()
            .map(|r| dedup.record_key(&tenant(), r))
            .collect();
        let claims = dedup
            .claim(&keys, "other", Duration::from_secs(20))
            .await
            .expect("claimed");
        assert_eq!(claims, vec![Claim::Mine, Claim::Mine]);
        // The same owner asking again still holds them; another sees them pending.
        let again = dedup.claim(&keys, "other", Duration::from_secs(20)).await;
        assert_eq!(again.expect("answered"), vec![Claim::Mine, Claim::Mine]);
        let seen = dedup.claim(&keys, "b", Duration::from_secs(20)).await;
        assert_eq!(
            seen.expect("answered"),
            vec![Claim::Pending, Claim::Pending]
        );

        let waiting = Sink::default();
        let (got, ()) = tokio::join!(
            publish_once(&store, &["r1", "r3", "r2"], policy("b"), &waiting),
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                dedup
                    .finish(keys.clone(), Duration::from_secs(60))
                    .await
                    .expect("finished");
            }
        );
        assert_eq!(
            got.expect("published"),
            PublishedOnce {
                published: 1,
                duplicates: 2
            }
        );
        assert_eq!(
            waiting.calls(),
            vec![vec!["r3"]],
            "r1 and r2 were not published here"
        );
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn records_claimed_by_a_live_owner_for_too_long_fail_the_batch_as_busy() {
        let store = store();
        claimed_elsewhere(&store, "r1", "other", Duration::from_secs(20)).await;
        let sink = Sink::default();
        let impatient = ClaimPolicy {
            give_up_after: Duration::from_millis(300),
            ..policy("b")
        };
        let got = publish_once(&store, &["r1", "r2"], impatient, &sink).await;
        assert!(matches!(got, Err(PublishOnceError::Busy(1))), "{got:?}");
        assert_eq!(sink.calls(), vec![vec!["r2"]]);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_claim_of_an_owner_that_died_lapses_and_is_taken_over() {
        let store = store();
        claimed_elsewhere(&store, "r1", "dead", Duration::from_millis(200)).await;
        let sink = Sink::default();
        let got = publish_once(&store, &["r1"], policy("b"), &sink).await;
        assert_eq!(
            got.expect("published"),
            PublishedOnce {
                published: 1,
                duplicates: 0
            }
        );
        assert_eq!(sink.calls(), vec![vec!["r1"]]);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn with_a_zero_ttl_every_record_is_published_and_nothing_is_written() {
        let store = store();
        let off = ClaimPolicy {
            done_ttl: Duration::ZERO,
            ..policy("a")
        };
        for _ in 0..2 {
            let sink = Sink::default();
            let got = publish_once(&store, &["r1", "r2"], off, &sink).await;
            assert_eq!(
                got.expect("published"),
                PublishedOnce {
                    published: 2,
                    duplicates: 0
                }
            );
            assert_eq!(sink.calls(), vec![vec!["r1", "r2"]]);
        }
        assert_eq!(store.purge_prefix().await.expect("purged"), 0);
    }

    #[tokio::test]
    async fn without_redis_records_are_published_and_their_markers_deferred() {
        // Nothing listens on port 1.
        let store = Store::new("redis://127.0.0.1:1", "o365relay:test:down:").expect("valid URL");
        let sink = Sink::default();
        let got = publish_once(&store, &["r1", "r2"], policy("a"), &sink).await;
        assert_eq!(
            got.expect("published"),
            PublishedOnce {
                published: 2,
                duplicates: 0
            }
        );
        assert_eq!(sink.calls(), vec![vec!["r1", "r2"]]);
        assert!(store.is_down());
        assert_eq!(store.deferred_len(), 2, "both done markers wait for Redis");
    }

    #[tokio::test]
    async fn blob_markers_are_read_per_blob() {
        let store = store();
        let dedup = store.dedup();
        let t = tenant();
        let (a, b, c) = (
            ContentId::parse("a").expect("valid"),
            ContentId::parse("b").expect("valid"),
            ContentId::parse("c").expect("valid"),
        );
        let ttl = Duration::from_secs(60);
        dedup.mark_relayed(&t, &a, ttl).await.expect("marked");
        dedup.mark_enqueued(&t, &b, ttl).await.expect("marked");
        dedup.mark_dead(&t, &b, ttl).await.expect("marked");
        assert!(dedup.is_relayed(&t, &a).await.expect("answered"));
        assert!(!dedup.is_relayed(&t, &b).await.expect("answered"));
        let marks = dedup.markers(&t, &[&a, &b, &c]).await.expect("answered");
        let none = BlobMarkers::default();
        assert_eq!(
            marks,
            vec![
                BlobMarkers {
                    relayed: true,
                    ..none
                },
                BlobMarkers {
                    enqueued: true,
                    dead: true,
                    ..none
                },
                none,
            ]
        );
        for key in [
            format!("relayed:{t}:a"),
            format!("reconcile-enqueued:{t}:b"),
            format!("dead:{t}:b"),
        ] {
            let v = store.get(&format!("{}{key}", store.prefix())).await;
            assert_eq!(v.expect("answered").as_deref(), Some("1"), "{key}");
        }
        store.purge_prefix().await.expect("purged");
    }
}
