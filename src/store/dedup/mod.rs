//! De-duplication: blob markers and record claims.
//!
//! Why it is built so: docs/DESIGN.md, "store/dedup".

mod seen;

use super::coalesce::Coalesced;
use super::{Store, StoreError, StoreResult};
use crate::domain::{ContentId, TenantId};
use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(seen::CLAIM));
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(seen::FINISH));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(seen::RELEASE));

/// The value of a published record's own key (records without a compact marker, and the
/// previous version's markers).
const DONE: &str = "d";

/// How long in-flight markers wait in memory to be written together
/// ([`Store::mark_enqueued_soon`]).
pub const ENQUEUED_FLUSH: Duration = Duration::from_millis(5);

/// A blob to mark in flight for a while ([`Store::mark_enqueued_soon`]).
pub(crate) struct InFlight {
    tenant: TenantId,
    content: ContentId,
    ttl: Duration,
}

/// The store's buffer of in-flight markers: written [`ENQUEUED_FLUSH`] after the first of a
/// window, all in one round trip.
pub(super) fn enqueued_buffer() -> Coalesced<InFlight> {
    fn write(store: &Store, batch: Vec<InFlight>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let dedup = store.dedup();
            let marks: Vec<(&TenantId, &ContentId, Duration)> = batch
                .iter()
                .map(|m| (&m.tenant, &m.content, m.ttl))
                .collect();
            dedup.mark_enqueued(&marks).await
        })
    }
    Coalesced::new("in-flight markers", ENQUEUED_FLUSH, write)
}

impl Store {
    /// [`Dedup::mark_enqueued`] for the webhook's answer path: the markers are kept in memory
    /// and written together with every other marker of the next [`ENQUEUED_FLUSH`] (one
    /// pipelined round trip for all the requests of that window instead of one per request),
    /// or at the graceful stop ([`Store::flush_coalesced`]).
    pub fn mark_enqueued_soon(
        self: &Arc<Self>,
        blobs: impl IntoIterator<Item = (TenantId, ContentId)>,
        ttl: Duration,
    ) {
        self.enqueued.push(
            self,
            blobs.into_iter().map(|(tenant, content)| InFlight {
                tenant,
                content,
                ttl,
            }),
        );
    }
}

/// How often records another owner is publishing are asked about again.
const PENDING_POLL: Duration = Duration::from_millis(100);

/// What [`Dedup::publish_once`] knows a record by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKey<'r> {
    /// The record's id (its `message_id`), compared exactly.
    pub id: &'r str,
    /// The record's `CreationTime` as Microsoft wrote it (empty when absent): every copy of a
    /// record carries the same, so it picks the bucket the record is remembered in.
    pub created: &'r str,
}

/// One record of a batch in Redis: its own key (claimed and set to `d` when it has no place;
/// the previous version's marker otherwise), and its place in a bucket.
struct Slot {
    claim: String,
    place: Option<seen::Place>,
}

/// The buckets a batch's records fall in, each named once: what the scripts are handed.
struct Buckets {
    /// Per bucket: its root key, its previous-layout base, and the longest keep (ms) of its
    /// records.
    each: Vec<(String, String, u64)>,
    /// Per record: its bucket (1-based, as the scripts count), 0 when it has none.
    of: Vec<usize>,
}

/// What a claim took, for its finish or release: the batch's buckets, the number of the batch
/// in each (0: none), and the records claimed.
struct Claimed<'a> {
    buckets: &'a Buckets,
    batches: &'a [u64],
    slots: &'a [Slot],
}

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
        self.0.key(&format!("relayed:{}:{c}", self.0.tenant(t)))
    }

    fn enqueued_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.0
            .key(&format!("reconcile-enqueued:{}:{c}", self.0.tenant(t)))
    }

    fn dead_key(&self, t: &TenantId, c: &ContentId) -> String {
        self.0.key(&format!("dead:{}:{c}", self.0.tenant(t)))
    }

    /// `{prefix}rec:{tenant}:{recordId}`, built per record in one allocation.
    fn record_key(&self, t: &TenantId, record_id: &str) -> String {
        let prefix = self.0.prefix();
        let mut k =
            String::with_capacity(prefix.len() + 4 + t.as_str().len() + 3 + record_id.len());
        k.push_str(prefix);
        k.push_str("rec:");
        self.0.tenant(t).push_to(&mut k);
        k.push(':');
        k.push_str(record_id);
        k
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

    /// Marks each blob as in flight (in the work queue, a retry tier, or parked) for its
    /// duration, in one round trip: reconciliation does not queue a second copy meanwhile.
    /// (The key keeps its first name, `reconcile-enqueued`, from when only reconciliation
    /// wrote it: a deployment's markers stay valid across the upgrade.)
    pub async fn mark_enqueued(
        &self,
        blobs: &[(&TenantId, &ContentId, Duration)],
    ) -> StoreResult<()> {
        let writes: Vec<(String, Duration)> = blobs
            .iter()
            .map(|(t, c, ttl)| (self.enqueued_key(t, c), *ttl))
            .collect();
        self.0.set_many_px(&writes, "1").await
    }

    /// Writes the markers [`Store::mark_enqueued_soon`] keeps in memory now.
    pub async fn flush_enqueued(&self) -> StoreResult<()> {
        self.0.enqueued.flush_now(self.0).await
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

    /// A record's claim key, and where it is remembered once published.
    fn slot(&self, t: &TenantId, key: RecordKey<'_>, done_ttl: Duration, now_ms: i64) -> Slot {
        Slot {
            claim: self.record_key(t, key.id),
            place: seen::place(key.id, key.created, done_ttl, now_ms),
        }
    }

    /// The buckets of `slots` (their records are all the same tenant's).
    fn buckets(&self, t: &TenantId, slots: &[Slot]) -> Buckets {
        let mut keys: Vec<(i64, char)> = Vec::new();
        let mut out = Buckets {
            each: Vec::new(),
            of: Vec::with_capacity(slots.len()),
        };
        for s in slots {
            let Some(p) = &s.place else {
                out.of.push(0);
                continue;
            };
            let j = match keys.iter().position(|k| *k == (p.hour, p.kind)) {
                Some(j) => {
                    let keep = &mut out.each[j].2;
                    *keep = (*keep).max(p.keep_ms);
                    j
                }
                None => {
                    let segment = self.0.tenant(t);
                    keys.push((p.hour, p.kind));
                    out.each.push((
                        seen::bucket(self.0.prefix(), &segment, p),
                        seen::previous_bucket(self.0.prefix(), &segment, p),
                        p.keep_ms,
                    ));
                    keys.len() - 1
                }
            };
            out.of.push(j + 1);
        }
        out
    }

    /// The keys a script over `slots` declares: the bucket roots, then the own keys of the
    /// records without a bucket (all one tenant's, so one slot in a cluster).
    fn script_keys(inv: &mut redis::ScriptInvocation<'_>, b: &Buckets, slots: &[Slot]) {
        for (root, _, _) in &b.each {
            inv.key(root);
        }
        for s in slots.iter().filter(|s| s.place.is_none()) {
            inv.key(&s.claim);
        }
    }

    /// Publishes each record of `records` once across blobs, workers and replicas: the one
    /// call for claim → publish → finish. `key` tells a record's id and `CreationTime`.
    ///
    /// Each record is looked up and, unless already published, claimed (`p:{owner}`, expiring
    /// after `claim_ttl` should the owner die), in one round trip for the batch; `publish`
    /// gets the records claimed now. After it succeeds they are remembered as published for
    /// `done_ttl` (see docs/DESIGN.md, "store/dedup" for how) and their claims deleted, in one more round
    /// trip; when it fails their claims are released so a retry publishes them at once, and
    /// the error is returned. Records already published are counted as duplicates and not
    /// published again. Records another owner is publishing right now are asked about again
    /// every 100 ms until they are done (or lapse, and are claimed here), for at most
    /// `give_up_after`: [`PublishOnceError::Busy`].
    ///
    /// Without Redis every record is published (consumers de-duplicate on `message_id`) and
    /// the markers are written when Redis is back ([`Store::flush_deferred`]). With `done_ttl`
    /// zero, record de-duplication is off: every record is published and Redis is not asked.
    pub async fn publish_once<T, E, F, Fut>(
        &self,
        tenant: &TenantId,
        records: Vec<T>,
        key: impl Fn(&T) -> RecordKey<'_>,
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
            let now_ms = chrono::Utc::now().timestamp_millis();
            let slots: Vec<Slot> = todo
                .iter()
                .map(|r| self.slot(tenant, key(r), policy.done_ttl, now_ms))
                .collect();
            let b = self.buckets(tenant, &slots);
            let (mine, mine_slots, pending, batches) =
                match self.claim(&b, &slots, policy.owner, policy.claim_ttl).await {
                    Ok((claims, batches)) => {
                        let (mut mine, mut mine_slots, mut pending) =
                            (Vec::new(), Vec::new(), Vec::new());
                        for ((r, s), c) in todo.into_iter().zip(slots).zip(claims) {
                            match c {
                                Claim::Mine => {
                                    mine.push(r);
                                    mine_slots.push(s);
                                }
                                Claim::Done => done.duplicates += 1,
                                Claim::Pending => pending.push(r),
                            }
                        }
                        (mine, mine_slots, pending, batches)
                    }
                    // Redis is down: publish without de-duplication.
                    Err(_) => (todo, slots, Vec::new(), Vec::new()),
                };
            if !mine.is_empty() {
                let n = mine.len() as u64;
                let claimed = Claimed {
                    buckets: &b,
                    batches: &batches,
                    slots: &mine_slots,
                };
                if let Err(e) = publish(mine).await {
                    let _ = self.release(&claimed, policy.owner).await;
                    return Err(PublishOnceError::Publish(e));
                }
                done.published += n;
                let _ = self.finish(&claimed, policy.owner, policy.done_ttl).await;
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

    /// Looks records up and claims those not published for `owner`, one round trip for the
    /// batch: per record its [`Claim`], and per bucket of `b` the number of the batch its
    /// records were claimed under (0: none), for [`Dedup::finish`] and [`Dedup::release`].
    async fn claim(
        &self,
        b: &Buckets,
        slots: &[Slot],
        owner: &str,
        ttl: Duration,
    ) -> StoreResult<(Vec<Claim>, Vec<u64>)> {
        if slots.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut c = self.0.conn().await?;
        let mut inv = CLAIM.prepare_invoke();
        Self::script_keys(&mut inv, b, slots);
        inv.arg(&*seen::owner_tag(owner))
            .arg(ttl.as_millis().max(1) as u64)
            .arg(format!("p:{owner}"))
            .arg(b.each.len());
        for (_, previous, keep) in &b.each {
            inv.arg(*keep).arg(previous);
        }
        for (s, j) in slots.iter().zip(&b.of) {
            inv.arg(&s.claim).arg(*j);
            match &s.place {
                Some(p) => inv.arg(&p.field[..]),
                None => inv.arg(""),
            };
        }
        let r: Result<Vec<i64>, _> = inv.invoke_async(&mut c).await;
        let mut v = self.0.observe(r)?;
        if v.len() != slots.len() + b.each.len() {
            return Err(StoreError::Command(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "the claim script answered for another number of records",
            ))));
        }
        let batches = v
            .split_off(slots.len())
            .into_iter()
            .map(|n| n.max(0) as u64);
        let claims = v.into_iter().map(|n| match n {
            1 => Claim::Mine,
            0 => Claim::Done,
            _ => Claim::Pending,
        });
        Ok((claims.collect(), batches.collect()))
    }

    /// The keys and arguments [`seen::FINISH`] and [`seen::RELEASE`] share: the roots (and
    /// the own keys, for the cluster's routing) in `KEYS`; per bucket `per_bucket` and its
    /// batch; the own keys again as arguments.
    fn claimed_args(
        inv: &mut redis::ScriptInvocation<'_>,
        c: &Claimed<'_>,
        per_bucket: impl Fn(&mut redis::ScriptInvocation<'_>, &(String, String, u64)),
    ) {
        Self::script_keys(inv, c.buckets, c.slots);
        inv.arg(c.buckets.each.len());
        for (bucket, batch) in c.buckets.each.iter().zip(c.batches) {
            per_bucket(inv, bucket);
            inv.arg(*batch);
        }
        for s in c.slots.iter().filter(|s| s.place.is_none()) {
            inv.arg(&s.claim);
        }
    }

    /// Remembers published records: each batch they were claimed under becomes published in
    /// its bucket, and each record without a bucket gets its own key set to `d` for `ttl`, one
    /// round trip. When that fails (Redis down), each record's own key `d` is written instead,
    /// kept in memory until Redis is back ([`Store::flush_deferred`]) — the claim script reads
    /// it as published.
    async fn finish(&self, c: &Claimed<'_>, owner: &str, ttl: Duration) -> StoreResult<()> {
        if c.slots.is_empty() {
            return Ok(());
        }
        // The claim did not answer (Redis was down): no batch holds these records, so they are
        // remembered in their own keys, as when the finish itself cannot be written.
        let claimed = c.batches.len() == c.buckets.each.len();
        let written = async {
            if !claimed {
                return Err(StoreError::Unavailable("the claim did not answer".into()));
            }
            let mut conn = self.0.conn().await?;
            let mut inv = FINISH.prepare_invoke();
            inv.arg(ttl.as_millis().max(1) as u64)
                .arg(&*seen::owner_tag(owner));
            Self::claimed_args(&mut inv, c, |inv, (_, _, keep)| {
                inv.arg(*keep);
            });
            let r: Result<i64, _> = inv.invoke_async(&mut conn).await;
            self.0.observe(r).map(|_| ())
        }
        .await;
        if written.is_ok() {
            return Ok(());
        }
        let writes = c.slots.iter().map(|s| (s.claim.clone(), DONE)).collect();
        self.0.set_many_or_defer(writes, ttl).await
    }

    /// Gives up claims `owner` still holds (publishing failed), so a retry can take them at
    /// once.
    async fn release(&self, c: &Claimed<'_>, owner: &str) -> StoreResult<()> {
        if c.slots.is_empty() || c.batches.len() != c.buckets.each.len() {
            return Ok(());
        }
        let mut conn = self.0.conn().await?;
        let mut inv = RELEASE.prepare_invoke();
        inv.arg(&*seen::owner_tag(owner)).arg(format!("p:{owner}"));
        Self::claimed_args(&mut inv, c, |_, _| {});
        let r: Result<i64, _> = inv.invoke_async(&mut conn).await;
        self.0.observe(r).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), each test under a prefix of its own that it
    //! purges at the end.
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Mutex;

    const REDIS: &str = "redis://127.0.0.1:6379";

    /// The `CreationTime` of the tests' records, and its hour from the epoch.
    const CREATED: &str = "2024-05-01T10:15:00";
    const HOUR: i64 = 476_266;

    fn store() -> Store {
        let prefix = format!("o365relay:test:dedup:{}:", uuid::Uuid::new_v4().simple());
        Store::new(REDIS, &prefix).expect("valid URL")
    }

    fn tenant() -> TenantId {
        TenantId::parse("0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11").expect("valid tenant id")
    }

    fn slots(store: &Store, ids: &[&str], created: &str) -> Vec<Slot> {
        let now = chrono::Utc::now().timestamp_millis();
        ids.iter()
            .map(|id| {
                let key = RecordKey { id, created };
                store
                    .dedup()
                    .slot(&tenant(), key, Duration::from_secs(60), now)
            })
            .collect()
    }

    /// `owner` claims `slots` for `ttl`: the answer per record, the buckets and their batches.
    async fn claim_as(
        store: &Store,
        slots: &[Slot],
        owner: &str,
        ttl: Duration,
    ) -> (Vec<Claim>, Buckets, Vec<u64>) {
        let b = store.dedup().buckets(&tenant(), slots);
        let claimed = store.dedup().claim(&b, slots, owner, ttl).await;
        let (claims, batches) = claimed.expect("answered");
        (claims, b, batches)
    }

    /// `owner` claims record `id` for `ttl`, as another replica would.
    async fn claimed_elsewhere(store: &Store, id: &str, owner: &str, ttl: Duration) {
        let theirs = slots(store, &[id], CREATED);
        let (claims, _, _) = claim_as(store, &theirs, owner, ttl).await;
        assert_eq!(claims, vec![Claim::Mine]);
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
        async fn publish(&self, records: Vec<(&str, &str)>) -> Result<(), String> {
            let batch = records.into_iter().map(|(id, _)| id.to_string()).collect();
            self.0.lock().expect("poisoned").push(batch);
            Ok(())
        }
        fn calls(&self) -> Vec<Vec<String>> {
            self.0.lock().expect("poisoned").clone()
        }
    }

    /// Records `(id, CreationTime)` through [`Dedup::publish_once`].
    async fn publish_at(
        store: &Store,
        records: &[(&str, &str)],
        policy: ClaimPolicy<'_>,
        sink: &Sink,
    ) -> Result<PublishedOnce, PublishOnceError<String>> {
        store
            .dedup()
            .publish_once(
                &tenant(),
                records.to_vec(),
                |&(id, created)| RecordKey { id, created },
                policy,
                |batch| sink.publish(batch),
            )
            .await
    }

    /// Records created at [`CREATED`] through [`Dedup::publish_once`].
    async fn publish_once(
        store: &Store,
        ids: &[&str],
        policy: ClaimPolicy<'_>,
        sink: &Sink,
    ) -> Result<PublishedOnce, PublishOnceError<String>> {
        let records: Vec<(&str, &str)> = ids.iter().map(|id| (*id, CREATED)).collect();
        publish_at(store, &records, policy, sink).await
    }

    fn published(n: u64, duplicates: u64) -> PublishedOnce {
        PublishedOnce {
            published: n,
            duplicates,
        }
    }

    /// The keys under the store's prefix matching `pattern` (without the prefix).
    async fn keys(store: &Store, pattern: &str) -> BTreeSet<String> {
        let mut c = store.conn().await.expect("Redis answers");
        let found: Vec<String> = c
            .keys(format!("{}{pattern}", store.prefix()))
            .await
            .expect("Redis answers");
        found
            .into_iter()
            .map(|k| k[store.prefix().len()..].to_string())
            .collect()
    }

    /// A leaf's fields and their values.
    type Fields = BTreeMap<Vec<u8>, Vec<u8>>;

    /// What the buckets hold (`dedup:…`, keys without the prefix).
    #[derive(Debug, Default)]
    struct Seen {
        /// Root → (leaves, fields counted, expiry in ms from now).
        roots: BTreeMap<String, (u64, u64, i64)>,
        /// Leaf → (its fields and what each says, the sentinel left out; expiry in ms from
        /// now). A field's value is read through its batch: `""` once published, the claim
        /// `{owner}:{until}` while claimed, `released` when its batch was given up.
        leaves: BTreeMap<String, (Fields, i64)>,
        /// Root → its batches' entries (number → `""` or a claim), found in its leaves.
        batches: BTreeMap<String, Fields>,
    }

    impl Seen {
        /// Every field of the leaves of `dedup:{tenant}:{hour}:{kind}`.
        fn fields(&self, hour: i64, kind: char) -> BTreeSet<Vec<u8>> {
            let base = format!("dedup:{}:{hour}:{kind}:", tenant());
            self.leaves
                .iter()
                .filter(|(k, _)| k.starts_with(&base))
                .flat_map(|(_, (f, _))| f.keys().cloned())
                .collect()
        }

        /// What every field of every leaf says: `""` once published, `{owner}:{until}`
        /// while claimed.
        fn values(&self) -> Vec<Vec<u8>> {
            self.leaves
                .values()
                .flat_map(|(f, _)| f.values().cloned())
                .collect()
        }
    }

    async fn seen(store: &Store) -> Seen {
        let mut c = store.conn().await.expect("Redis answers");
        let mut out = Seen::default();
        let mut entries = Vec::new();
        for k in keys(store, "dedup:*").await {
            let full = format!("{}{k}", store.prefix());
            let ttl: i64 = c.pttl(&full).await.expect("PTTL");
            let kind: String = redis::cmd("TYPE")
                .arg(&full)
                .query_async(&mut c)
                .await
                .expect("TYPE");
            match kind.as_str() {
                "hash" => {
                    let mut f: Fields = c.hgetall(&full).await.expect("HGETALL");
                    assert_eq!(f.remove(&b"\xff"[..]), Some(Vec::new()), "{k}: sentinel");
                    // A batch's entry: `\xfe{number}`, in the leaf its number names.
                    let (root, i) = k.rsplit_once(':').expect("a leaf number");
                    let i: u64 = i.parse().expect("a leaf number");
                    let table = out.batches.entry(root.to_string()).or_default();
                    f.retain(|field, v| match field.strip_prefix(b"\xfe") {
                        Some(no) if field.len() < 16 => {
                            let n = std::str::from_utf8(no).ok().and_then(|n| n.parse().ok());
                            let n: u64 = n.expect("a batch number");
                            table.insert(no.to_vec(), v.clone());
                            entries.push((root.to_string(), n, i));
                            false
                        }
                        _ => true,
                    });
                    out.leaves.insert(k, (f, ttl));
                }
                "string" => {
                    let v: String = c.get(&full).await.expect("GET");
                    let n: Vec<u64> = v.split(' ').map(|x| x.parse().expect("a number")).collect();
                    assert_eq!(n.len(), 4, "{k}: {v}");
                    out.roots.insert(k, (n[0], n[1], ttl));
                }
                other => panic!("{k} is a {other}"),
            }
        }
        // Each entry sits in the leaf its number names.
        for (root, n, i) in entries {
            let leaves = out.roots[&root].0;
            assert_eq!(leaf_index(n, leaves), i, "{root}: the entry of batch {n}");
        }
        // Each field says what its batch says.
        for (leaf, (fields, _)) in out.leaves.iter_mut() {
            let root = &leaf[..leaf.rfind(':').expect("a leaf number")];
            let table = out.batches.get(root);
            // (The first form of this layout wrote the claim, or `""`, into the leaf itself.)
            let numbered = |v: &&mut Vec<u8>| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
            for v in fields.values_mut().filter(numbered) {
                *v = match table.and_then(|t| t.get(v)) {
                    Some(said) => said.clone(),
                    None => b"released".to_vec(),
                };
            }
        }
        out
    }

    #[tokio::test]
    async fn a_record_is_published_once_and_a_second_owner_sees_it_done() {
        let store = store();
        let first = Sink::default();
        let got = publish_once(&store, &["r1", "r2", "r3"], policy("a"), &first).await;
        assert_eq!(got.expect("published"), published(3, 0));
        assert_eq!(first.calls(), vec![vec!["r1", "r2", "r3"]]);
        // The key names other replicas share: the claims are gone, the records are fields of
        // their hour's bucket.
        assert_eq!(keys(&store, "rec:*").await, BTreeSet::new());
        let seen = seen(&store).await;
        let root = format!("dedup:{}:{HOUR}:s", tenant());
        assert_eq!(seen.roots.keys().collect::<Vec<_>>(), vec![&root]);
        assert_eq!(
            seen.roots[&root].0..=seen.roots[&root].1,
            1..=3,
            "one leaf, 3 fields"
        );
        let leaf = format!("{root}:0");
        assert_eq!(seen.leaves.keys().collect::<Vec<_>>(), vec![&leaf]);
        let want: Fields = [b"r1", b"r2", b"r3"]
            .map(|f| (f.to_vec(), Vec::new()))
            .into();
        assert_eq!(seen.leaves[&leaf].0, want, "published: empty values");

        let second = Sink::default();
        let got = publish_once(&store, &["r2", "r4", "r1"], policy("b"), &second).await;
        assert_eq!(got.expect("published"), published(1, 2));
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
                |id| RecordKey {
                    id,
                    created: CREATED,
                },
                policy("a"),
                |_| async { Err::<(), _>("broker down".to_string()) },
            )
            .await;
        assert!(
            matches!(&failing, Err(PublishOnceError::Publish(e)) if e == "broker down"),
            "{failing:?}"
        );
        // The records stay in their leaf, pointed at a batch that is no longer in the table.
        assert_eq!(
            seen(&store).await.values(),
            vec![b"released".to_vec(); 2],
            "claims released"
        );
        assert_eq!(keys(&store, "rec:*").await, BTreeSet::new());

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
        let theirs = || slots(&store, &["r1", "r2"], CREATED);
        let ttl = Duration::from_secs(20);
        let (claims, _, _) = claim_as(&store, &theirs(), "other", ttl).await;
        assert_eq!(claims, vec![Claim::Mine, Claim::Mine]);
        // The same owner asking again still holds them; another sees them pending.
        let slots = theirs();
        let (again, buckets, batches) = claim_as(&store, &slots, "other", ttl).await;
        assert_eq!(again, vec![Claim::Mine, Claim::Mine]);
        let (seen, _, _) = claim_as(&store, &theirs(), "b", ttl).await;
        assert_eq!(seen, vec![Claim::Pending, Claim::Pending]);

        let waiting = Sink::default();
        let claimed = Claimed {
            buckets: &buckets,
            batches: &batches,
            slots: &slots,
        };
        let (got, ()) = tokio::join!(
            publish_once(&store, &["r1", "r3", "r2"], policy("b"), &waiting),
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                dedup
                    .finish(&claimed, "other", Duration::from_secs(60))
                    .await
                    .expect("finished");
            }
        );
        assert_eq!(got.expect("published"), published(1, 2));
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
    async fn guids_are_kept_as_their_16_bytes_and_every_other_id_exactly() {
        let store = store();
        // A GUID whose 16 bytes spell an id of 16 letters, which is another record.
        let guid = "61626364-6566-6768-696a-6b6c6d6e6f70";
        let letters = "abcdefghijklmnop";
        let ids = [
            guid,
            letters,
            "61626364-6566-6768-696A-6B6C6D6E6F70",
            "{61626364-6566-6768-696a-6b6c6d6e6f70}",
            "ab",
            "AB",
            "Ab",
            "ab ",
            "é",
            "",
        ];
        let sink = Sink::default();
        let got = publish_once(&store, &ids, policy("a"), &sink).await;
        assert_eq!(got.expect("published"), published(10, 0), "all different");
        let seen = seen(&store).await;
        let g: BTreeSet<Vec<u8>> = [b"abcdefghijklmnop".to_vec()].into();
        assert_eq!(seen.fields(HOUR, 'g'), g, "the GUID as its bytes");
        let others: BTreeSet<Vec<u8>> = ids[1..].iter().map(|i| i.as_bytes().to_vec()).collect();
        assert_eq!(seen.fields(HOUR, 's'), others, "the rest as themselves");

        let again = Sink::default();
        let got = publish_once(&store, &ids, policy("b"), &again).await;
        assert_eq!(got.expect("answered"), published(0, 10));
        // A GUID in capitals is not the lowercase one (nor is its message_id).
        let got = publish_once(&store, &["ABCDEFGHIJKLMNOP", "aB"], policy("b"), &again).await;
        assert_eq!(got.expect("published"), published(2, 0));
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn long_ids_and_records_without_a_creation_time_keep_a_key_of_their_own() {
        let store = store();
        let longest = "x".repeat(seen::MAX_FIELD);
        let long = "x".repeat(seen::MAX_FIELD + 1);
        // The relay's ids reach 255 bytes; two that differ only in their last byte.
        let a = format!("{}a", "y".repeat(254));
        let b = format!("{}b", "y".repeat(254));
        let records = [
            (longest.as_str(), CREATED),
            (long.as_str(), CREATED),
            (a.as_str(), CREATED),
            (b.as_str(), CREATED),
            ("no-time", ""),
            ("bad-time", "yesterday"),
        ];
        let sink = Sink::default();
        let got = publish_at(&store, &records, policy("a"), &sink).await;
        assert_eq!(got.expect("published"), published(6, 0));

        let own: BTreeSet<String> = [&long, &a, &b, "no-time", "bad-time"]
            .iter()
            .map(|id| format!("rec:{}:{id}", tenant()))
            .collect();
        assert_eq!(keys(&store, "rec:*").await, own);
        let mut c = store.conn().await.expect("Redis answers");
        for k in &own {
            let full = format!("{}{k}", store.prefix());
            assert_eq!(store.get(&full).await.expect("read").as_deref(), Some("d"));
            let ttl: i64 = c.pttl(&full).await.expect("PTTL");
            assert!(ttl > 50_000 && ttl <= 60_000, "{k}: {ttl} ms");
        }
        let compact: BTreeSet<Vec<u8>> = [longest.as_bytes().to_vec()].into();
        assert_eq!(seen(&store).await.fields(HOUR, 's'), compact);

        let again = Sink::default();
        let got = publish_at(&store, &records, policy("b"), &again).await;
        assert_eq!(got.expect("answered"), published(0, 6));
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn a_bucket_is_kept_the_ttl_after_its_hour_and_after_its_last_record() {
        let store = store();
        let sink = Sink::default();
        // An hour long past: kept for the TTL (60 s) from now.
        let got = publish_at(&store, &[("old", CREATED)], policy("a"), &sink).await;
        assert_eq!(got.expect("published"), published(1, 0));
        // An hour yet to end (two hours ahead counts as one): kept until then, then the TTL.
        let later = chrono::Utc::now() + chrono::Duration::hours(2);
        let later = later.format("%Y-%m-%dT%H:%M:%S").to_string();
        let later_hour = seen::creation_hour(&later).expect("an hour");
        let got = publish_at(&store, &[("new", later.as_str())], policy("a"), &sink).await;
        assert_eq!(got.expect("published"), published(1, 0));

        // Root and leaves expire together, at least the keep from now and at most a
        // sixteenth of it later (so that a busy bucket moves its expiry rarely).
        let seen = seen(&store).await;
        assert_eq!(seen.roots.len(), 2, "{seen:?}");
        for (hour, keep) in [(HOUR, 60_000), (later_hour, 60_000 + 3_600_000)] {
            let root = format!("dedup:{}:{hour}:s", tenant());
            let leaf = format!("{root}:0");
            let (root_ttl, leaf_ttl) = (seen.roots[&root].2, seen.leaves[&leaf].1);
            assert!(
                root_ttl > keep - 10_000 && root_ttl <= keep + keep / 16,
                "{root}: {root_ttl} ms"
            );
            assert!((root_ttl - leaf_ttl).abs() < 50, "{leaf}: {leaf_ttl} ms");
        }

        // A copy of the record created at another hour is another record (a duplicate always
        // carries its original's CreationTime).
        let got = publish_at(&store, &[("old", later.as_str())], policy("b"), &sink).await;
        assert_eq!(got.expect("published"), published(1, 0));
        store.purge_prefix().await.expect("purged");
    }

    /// The leaf a field lives in when its bucket has `n` leaves, as the scripts compute it: a
    /// 24-bit spread (a GUID's first three bytes XOR its last three, SHA-1 for any other id),
    /// its low bits by linear hashing.
    fn leaf_of(kind: char, field: &[u8], n: u64) -> u64 {
        let h: [u8; 3] = if kind == 'g' {
            [
                field[0] ^ field[13],
                field[1] ^ field[14],
                field[2] ^ field[15],
            ]
        } else {
            let d = openssl::sha::sha1(field);
            [d[0], d[1], d[2]]
        };
        leaf_index(
            u64::from(h[0]) << 16 | u64::from(h[1]) << 8 | u64::from(h[2]),
            n,
        )
    }

    /// The leaf of hash `h` in a bucket of `n` leaves (linear hashing).
    fn leaf_index(h: u64, n: u64) -> u64 {
        let p = 1u64 << (63 - n.leading_zeros());
        if h % p < n - p {
            h % (2 * p)
        } else {
            h % p
        }
    }

    #[tokio::test]
    async fn a_busy_hour_splits_into_leaves_of_at_most_128_records_and_finds_them_all() {
        let store = store();
        // Time-ordered GUIDs (only their last bytes differ) and ids of another shape.
        let guids: Vec<String> = (0..1500)
            .map(|i| {
                uuid::Uuid::from_u128(0x5eed_0000 + i)
                    .hyphenated()
                    .to_string()
            })
            .collect();
        let others: Vec<String> = (0..600).map(|i| format!("record-{i}")).collect();
        let mut ids: Vec<&str> = guids.iter().chain(&others).map(String::as_str).collect();
        ids.sort_by_key(|id| id.len() % 7);
        // In batches of several sizes, so leaves split both within a batch and across them.
        let sink = Sink::default();
        let mut start = 0;
        for size in [1, 99, 500, 400, 300, 200, 600] {
            let batch = &ids[start..start + size];
            let got = publish_once(&store, batch, policy("a"), &sink).await;
            assert_eq!(got.expect("published"), published(size as u64, 0));
            start += size;
        }
        assert_eq!(start, ids.len());

        let seen = seen(&store).await;
        let mut c = store.conn().await.expect("Redis answers");
        for (kind, want) in [('g', 1500), ('s', 600)] {
            let root = format!("dedup:{}:{HOUR}:{kind}", tenant());
            let (n, count, ttl) = seen.roots[&root];
            assert_eq!(count, want, "{root}: fields counted");
            assert_eq!(
                n,
                want.div_ceil(48),
                "{root}: 48 fields a leaf at most on average"
            );
            assert!(ttl > 50_000 && ttl <= 63_750, "{root}: {ttl} ms");
            for i in 0..n {
                let leaf = format!("{root}:{i}");
                let (fields, leaf_ttl) = &seen.leaves[&leaf];
                assert!((leaf_ttl - ttl).abs() < 50, "{leaf}: {leaf_ttl} ms");
                assert!(fields.len() < 128, "{leaf} holds {}", fields.len());
                let full = format!("{}{leaf}", store.prefix());
                let enc: String = redis::cmd("OBJECT")
                    .arg("ENCODING")
                    .arg(&full)
                    .query_async(&mut c)
                    .await
                    .expect("OBJECT ENCODING");
                assert_eq!(enc, "listpack", "{leaf}");
                // Each field sits in the leaf its hash names.
                for field in fields.keys() {
                    assert_eq!(leaf_of(kind, field, n), i, "{leaf}: {field:?}");
                }
            }
        }
        assert_eq!(
            seen.leaves.len() as u64,
            1500u64.div_ceil(48) + 600u64.div_ceil(48)
        );
        let g: BTreeSet<Vec<u8>> = guids
            .iter()
            .map(|i| seen::guid_bytes(i).expect("a GUID").to_vec())
            .collect();
        assert_eq!(seen.fields(HOUR, 'g'), g, "each GUID once");
        let o: BTreeSet<Vec<u8>> = others.iter().map(|i| i.as_bytes().to_vec()).collect();
        assert_eq!(seen.fields(HOUR, 's'), o, "each other id once");
        let values = seen.values();
        assert_eq!(values.len(), 2100, "nothing twice");
        assert!(values.iter().all(Vec::is_empty), "every claim finished");

        let again = Sink::default();
        let got = publish_once(&store, &ids, policy("b"), &again).await;
        assert_eq!(got.expect("answered"), published(0, 2100));
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_owners_publish_each_record_once() {
        let store = store();
        let ids: Vec<String> = (0..400).map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let sinks: Vec<Sink> = (0..4).map(|_| Sink::default()).collect();
        let owners = ["a", "b", "c", "d"];
        let runs = owners
            .iter()
            .zip(&sinks)
            .enumerate()
            .map(|(n, (owner, sink))| {
                // Each owner meets the same records in another order, in batches of 50.
                let mut mine: Vec<&str> = ids.iter().map(String::as_str).collect();
                mine.rotate_left(n * 100);
                if n % 2 == 1 {
                    mine.reverse();
                }
                let store = &store;
                async move {
                    let mut total = PublishedOnce::default();
                    for batch in mine.chunks(50) {
                        let got = publish_once(store, batch, policy(owner), sink).await;
                        let got = got.expect("published");
                        total.published += got.published;
                        total.duplicates += got.duplicates;
                    }
                    total
                }
            });
        let totals = futures_util::future::join_all(runs).await;
        let published_n: u64 = totals.iter().map(|t| t.published).sum();
        let duplicates: u64 = totals.iter().map(|t| t.duplicates).sum();
        assert_eq!((published_n, duplicates), (400, 1200));
        let mut out: Vec<String> = sinks.iter().flat_map(|s| s.calls()).flatten().collect();
        out.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(out, want, "every record exactly once");
        assert_eq!(
            keys(&store, "rec:*").await,
            BTreeSet::new(),
            "no claim left"
        );
        let values = seen(&store).await.values();
        assert_eq!(values.len(), 400);
        assert!(values.iter().all(Vec::is_empty), "no claim left in a leaf");
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_previous_versions_markers_and_claims_are_honoured() {
        let store = store();
        let t = tenant();
        let (done, claimed) = (
            "8a1b2c3d-0000-4000-8000-000000000001",
            "8a1b2c3d-0000-4000-8000-000000000002",
        );
        // As the previous version left them: `d` once published, `p:{owner}` while publishing.
        let done_key = format!("{}rec:{t}:{done}", store.prefix());
        store
            .set_px(&done_key, "d", Duration::from_secs(60))
            .await
            .expect("set");
        let claimed_key = format!("{}rec:{t}:{claimed}", store.prefix());
        let old_claim = Duration::from_millis(300);
        store
            .set_px(&claimed_key, "p:old", old_claim)
            .await
            .expect("set");

        let sink = Sink::default();
        let fresh = "8a1b2c3d-0000-4000-8000-000000000003";
        let got = publish_once(&store, &[done, claimed, fresh], policy("b"), &sink).await;
        assert_eq!(got.expect("published"), published(2, 1));
        // The fresh record at once, the claimed one once the old claim lapsed.
        assert_eq!(sink.calls(), vec![vec![fresh], vec![claimed]]);
        assert_eq!(
            store.get(&done_key).await.expect("read").as_deref(),
            Some("d")
        );
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn buckets_of_the_first_form_of_this_layout_are_read_and_kept() {
        // The first form: a root `n c e`, and claims (or `""` once published) in the leaf.
        let store = store();
        let mut c = store.conn().await.expect("Redis answers");
        let now = chrono::Utc::now().timestamp_millis();
        let root = format!("{}dedup:{}:{HOUR}:s", store.prefix(), tenant());
        let e = now + 60_000;
        let _: () = redis::cmd("SET")
            .arg(&root)
            .arg(format!("1 3 {e}"))
            .arg("PXAT")
            .arg(e)
            .query_async(&mut c)
            .await
            .expect("SET");
        let leaf = format!("{root}:0");
        let live = format!("other:{}", now + 60_000);
        let lapsed = format!("dead:{}", now - 1_000);
        let _: () = redis::cmd("HSET")
            .arg(&leaf)
            .arg(b"\xff")
            .arg("")
            .arg("done")
            .arg("")
            .arg("busy")
            .arg(&live)
            .arg("dropped")
            .arg(&lapsed)
            .query_async(&mut c)
            .await
            .expect("HSET");
        let _: () = c.pexpire_at(&leaf, e).await.expect("PEXPIREAT");

        let sink = Sink::default();
        let impatient = ClaimPolicy {
            give_up_after: Duration::from_millis(300),
            ..policy("b")
        };
        let records = ["done", "busy", "dropped", "new"];
        let got = publish_once(&store, &records, impatient, &sink).await;
        assert!(matches!(got, Err(PublishOnceError::Busy(1))), "{got:?}");
        assert_eq!(sink.calls(), vec![vec!["dropped", "new"]]);

        let seen = seen(&store).await;
        let key = format!("dedup:{}:{HOUR}:s", tenant());
        assert_eq!(seen.roots[&key].0..=seen.roots[&key].1, 1..=4);
        let want: Fields = [
            ("done", ""),
            ("busy", live.as_str()),
            ("dropped", ""),
            ("new", ""),
        ]
        .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .into();
        assert_eq!(seen.leaves[&format!("{key}:0")].0, want);
        store.purge_prefix().await.expect("purged");
    }

    #[tokio::test]
    async fn the_previous_layouts_buckets_are_still_read() {
        let store = store();
        let mut c = store.conn().await.expect("Redis answers");
        let base = format!("{}seen:{}:{HOUR}", store.prefix(), tenant());
        // GUIDs in a bucket the previous version had split once (a marker at the root, two
        // leaves by the first bit of the spread), another id in a bucket still one leaf.
        let in_tree: Vec<String> = (1..=6)
            .map(|i| format!("8a1b2c3d-0000-4000-8000-00000000000{i}"))
            .collect();
        let _: () = c.set(format!("{base}:g:"), "").await.expect("SET");
        for id in &in_tree {
            let f = seen::guid_bytes(id).expect("a GUID");
            let first_bit = (f[0] ^ f[13]) >> 7;
            let _: () = c
                .hset(format!("{base}:g:{first_bit}"), &f[..], "")
                .await
                .expect("HSET");
        }
        let _: () = c
            .hset(format!("{base}:s:"), "old-record", "")
            .await
            .expect("HSET");

        let sink = Sink::default();
        let fresh = "8a1b2c3d-0000-4000-8000-000000000009";
        let mut ids: Vec<&str> = in_tree.iter().map(String::as_str).collect();
        ids.extend([fresh, "old-record", "new-record"]);
        let got = publish_once(&store, &ids, policy("b"), &sink).await;
        assert_eq!(got.expect("published"), published(2, 7));
        assert_eq!(sink.calls(), vec![vec![fresh, "new-record"]]);
        store.purge_prefix().await.expect("purged");
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
        dedup.mark_enqueued(&[(&t, &b, ttl)]).await.expect("marked");
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
