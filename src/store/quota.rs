//! The per-tenant Management API budget shared by every replica (`quota:{tenant}:0`).
//!
//! Why it is built so: docs/DESIGN.md, "store/quota".

use super::{Batch, Store, StoreResult};
use crate::domain::TenantId;
use std::time::Duration;

/// Admits the request stamped ARGV[1] (ms) as member ARGV[3] if fewer than ARGV[2] were
/// admitted in the last 61 s: 0 = admitted, otherwise the milliseconds until a slot frees up.
const QUOTA_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 61000)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], 62000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + 61000 - now + 1
"#;

/// [`QUOTA_SCRIPT`] with a calendar (times in microseconds; the log keeps milliseconds).
/// KEYS: the log, the calendar. ARGV: now, limit, pace (between two slots), mode (`fresh`,
/// `due` or `busy`), the earliest slot of a `busy` booking, the longest a `due` fetch is told to
/// ask again after, the log member.
/// Answers {0, 0} admitted (counted in the log), {1, µs} booked that far ahead, {2, µs} ask
/// again after that long.
const BOOK_SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local pace = tonumber(ARGV[3])
local mode = ARGV[4]
local next_free = tonumber(redis.call('GET', KEYS[2]) or 0) or 0
local function book(earliest)
  local slot = math.max(next_free, earliest)
  local after = slot + pace
  redis.call('SET', KEYS[2], string.format('%.0f', after), 'PX',
    string.format('%.0f', math.floor((after - now) / 1000) + 61000))
  return {1, slot - now}
end
if mode == 'busy' then
  return book(tonumber(ARGV[5]))
end
if mode == 'fresh' and next_free - pace > now then
  return book(now)
end
local now_ms = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - 61000)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now_ms, ARGV[7])
  redis.call('PEXPIRE', KEYS[1], 62000)
  return {0, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = (tonumber(oldest[2]) + 61000 - now_ms + 1) * 1000
if mode == 'due' and wait <= tonumber(ARGV[6]) then
  return {2, wait}
end
return book(now + wait)
"#;

/// The answer to one request for budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hit {
    /// The request was counted: send it.
    Admitted,
    /// The budget is spent: ask again after this long.
    Wait(Duration),
}

/// Who asks [`Quota::book`] for budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A fetch not booked before: admitted when the log has room and none of the tenant's
    /// bookings is still ahead (it does not overtake them), else booked after the last one.
    Fresh,
    /// A fetch back at the slot it was booked for: admitted when the log has room. When the log
    /// frees room within `wait_up_to` (the request a minute before has not quite aged out), it
    /// is told to ask again then; otherwise it is booked again after the last booking.
    Due { wait_up_to: Duration },
    /// A fetch that cannot run here yet for another reason (its tenant has its share of the
    /// workers): booked no earlier than `not_before` from now, without asking the log.
    Busy { not_before: Duration },
}

/// The answer to [`Quota::book`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// Counted in the budget: send it now.
    Admitted,
    /// Booked: come back after this long.
    Booked(Duration),
    /// Ask again after this long (only a [`Ask::Due`] fetch hears this).
    Shortly(Duration),
}

/// The distance between two slots of a tenant's calendar: the log's window over the budget.
pub fn pace(per_minute: u32) -> Duration {
    Duration::from_micros(61_000_000 / u64::from(per_minute.max(1)))
}

/// The shared request budget, see [`Store::quota`].
pub struct Quota<'a>(&'a Store);

impl<'a> Quota<'a> {
    pub(super) fn new(store: &'a Store) -> Self {
        Quota(store)
    }

    /// One key per tenant; the `:0` suffix is part of the key name replicas share.
    fn key(&self, t: &TenantId) -> String {
        self.0.key(&format!("quota:{}:0", self.0.tenant(t)))
    }

    /// Requests counted for each tenant in the last minute (as [`Quota::hit`] counts them), in
    /// one round trip.
    pub async fn used_many(&self, tenants: &[TenantId]) -> StoreResult<Vec<u64>> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let since = chrono::Utc::now().timestamp_millis() - 61_000;
        let mut batch = Batch::default();
        for t in tenants {
            let k = self.key(t);
            batch.push(&k, redis::Cmd::zcount(&k, since, "+inf"));
        }
        self.0.run(batch).await
    }

    fn calendar_key(&self, t: &TenantId) -> String {
        self.0.key(&format!("quota:{}:calendar", self.0.tenant(t)))
    }

    /// Counts one content fetch for `tenant` now, or books its turn on the tenant's calendar
    /// (see docs/DESIGN.md, "store/quota" and [`Ask`]).
    pub async fn book(&self, tenant: &TenantId, per_minute: u32, ask: Ask) -> StoreResult<Booking> {
        let now = chrono::Utc::now().timestamp_micros();
        self.book_at(tenant, per_minute, ask, now).await
    }

    /// [`Quota::book`] at `now` (microseconds since the epoch): tests move the clock.
    pub(crate) async fn book_at(
        &self,
        tenant: &TenantId,
        per_minute: u32,
        ask: Ask,
        now: i64,
    ) -> StoreResult<Booking> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4);
        let (mode, earliest, wait_up_to) = match ask {
            Ask::Fresh => ("fresh", now, 0),
            Ask::Due { wait_up_to } => ("due", now, micros(wait_up_to)),
            Ask::Busy { not_before } => ("busy", now.saturating_add(micros(not_before)), 0),
        };
        let member = format!("{}-{}", now / 1000, uuid::Uuid::new_v4().simple());
        let mut c = self.0.conn().await?;
        let r: Result<(i64, i64), _> = redis::Script::new(BOOK_SCRIPT)
            .key(self.key(tenant))
            .key(self.calendar_key(tenant))
            .arg(now.to_string())
            .arg(per_minute.max(1).to_string())
            .arg(micros(pace(per_minute)).to_string())
            .arg(mode)
            .arg(earliest.to_string())
            .arg(wait_up_to.to_string())
            .arg(member)
            .invoke_async(&mut c)
            .await;
        self.0.observe(r).map(|(answer, us)| {
            let after = Duration::from_micros(us.max(0) as u64);
            match answer {
                0 => Booking::Admitted,
                2 => Booking::Shortly(after),
                _ => Booking::Booked(after),
            }
        })
    }

    /// Counts one request for `tenant` if fewer than `per_minute` were counted in the last
    /// minute.
    pub async fn hit(&self, tenant: &TenantId, per_minute: u32) -> StoreResult<Hit> {
        let now = chrono::Utc::now().timestamp_millis();
        let member = format!("{now}-{}", uuid::Uuid::new_v4().simple());
        let mut c = self.0.conn().await?;
        let r: Result<i64, _> = redis::Script::new(QUOTA_SCRIPT)
            .key(self.key(tenant))
            .arg(now.to_string())
            .arg(per_minute.to_string())
            .arg(member)
            .invoke_async(&mut c)
            .await;
        self.0.observe(r).map(|ms| match ms {
            0 => Hit::Admitted,
            ms => Hit::Wait(Duration::from_millis(ms.max(0) as u64)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{store, tenant};

    use crate::domain::TenantId;
    use crate::store::Store;

    use std::time::Duration;

    #[tokio::test]
    async fn the_quota_admits_its_budget_then_says_how_long_to_wait() {
        let store = store();
        let t = tenant();
        for _ in 0..3 {
            let admitted = store.quota().hit(&t, 3).await.expect("answered");
            assert_eq!(admitted, Hit::Admitted);
        }
        match store.quota().hit(&t, 3).await.expect("answered") {
            Hit::Wait(w) => {
                assert!(
                    w > Duration::from_secs(59) && w <= Duration::from_secs(62),
                    "{w:?}"
                )
            }
            other => panic!("the fourth request was {other:?}"),
        }
        store.purge_prefix().await.expect("purged");
    }

    /// The calendar, with the clock moved by hand (microseconds).
    mod calendar {
        use super::super::{Ask, Booking};
        use super::*;

        const T0: i64 = 1_800_000_000_000_000;
        const SEC: i64 = 1_000_000;
        /// 61 s over a budget of 3.
        const PACE: i64 = 61 * SEC / 3;

        fn booked(b: Booking) -> i64 {
            match b {
                Booking::Booked(d) => d.as_micros() as i64,
                other => panic!("not booked: {other:?}"),
            }
        }

        async fn ask(store: &Store, t: &TenantId, ask: Ask, at: i64) -> Booking {
            store
                .quota()
                .book_at(t, 3, ask, at)
                .await
                .expect("answered")
        }

        fn due() -> Ask {
            Ask::Due {
                wait_up_to: Duration::from_secs(1),
            }
        }

        #[tokio::test]
        async fn a_tenant_over_its_budget_is_booked_a_pace_apart_from_when_the_budget_frees_up() {
            let store = store();
            let t = tenant();
            for _ in 0..3 {
                assert_eq!(ask(&store, &t, Ask::Fresh, T0).await, Booking::Admitted);
            }
            // The oldest request leaves the 61 s window 61 s (and a millisecond) from now.
            let first = 61 * SEC + 1_000;
            assert_eq!(booked(ask(&store, &t, Ask::Fresh, T0).await), first);
            assert_eq!(booked(ask(&store, &t, Ask::Fresh, T0).await), first + PACE);
            // Later asks book later slots, the same slots whoever asks when.
            let later = T0 + 10 * SEC;
            assert_eq!(
                booked(ask(&store, &t, Ask::Fresh, later).await),
                T0 + first + 2 * PACE - later
            );
            // Another tenant's budget and calendar are its own.
            let other = TenantId::parse("7f3a1b2c-0000-4000-8000-000000000001").expect("valid");
            assert_eq!(ask(&store, &other, Ask::Fresh, T0).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_booked_blob_is_admitted_at_its_turn_and_a_fresh_one_does_not_overtake_it() {
            let store = store();
            let t = tenant();
            for _ in 0..3 {
                ask(&store, &t, Ask::Fresh, T0).await;
            }
            let turns: Vec<i64> = [
                ask(&store, &t, Ask::Fresh, T0).await,
                ask(&store, &t, Ask::Fresh, T0).await,
            ]
            .into_iter()
            .map(|b| T0 + booked(b))
            .collect();
            // At the first turn the window has room: the booked blob goes, and a fresh blob
            // arriving then books after the last booking instead of taking the room.
            assert_eq!(ask(&store, &t, due(), turns[0]).await, Booking::Admitted);
            assert_eq!(
                booked(ask(&store, &t, Ask::Fresh, turns[0]).await),
                turns[1] + PACE - turns[0]
            );
            assert_eq!(ask(&store, &t, due(), turns[1]).await, Booking::Admitted);
            // Once every booking has had its turn, a fresh blob goes at once again.
            let idle = turns[1] + 3 * PACE;
            assert_eq!(ask(&store, &t, Ask::Fresh, idle).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_blob_at_its_turn_a_moment_early_for_the_window_asks_again_shortly() {
            let store = store();
            let t = tenant();
            for _ in 0..3 {
                ask(&store, &t, Ask::Fresh, T0).await;
            }
            let early = T0 + 61 * SEC - 200_000;
            assert_eq!(
                ask(&store, &t, due(), early).await,
                Booking::Shortly(Duration::from_millis(201))
            );
            // Told not to wait, it is booked again instead.
            let no_wait = Ask::Due {
                wait_up_to: Duration::ZERO,
            };
            assert_eq!(booked(ask(&store, &t, no_wait, early).await), 201_000);
            store.purge_prefix().await.expect("purged");
        }

        #[tokio::test]
        async fn a_busy_tenant_is_booked_ahead_without_spending_its_budget() {
            let store = store();
            let t = tenant();
            let busy = Ask::Busy {
                not_before: Duration::from_secs(1),
            };
            assert_eq!(booked(ask(&store, &t, busy, T0).await), SEC);
            assert_eq!(booked(ask(&store, &t, busy, T0).await), SEC + PACE);
            // The budget is untouched: the booked blobs are admitted at their turns, all three.
            for turn in [T0 + SEC, T0 + SEC + PACE] {
                assert_eq!(ask(&store, &t, due(), turn).await, Booking::Admitted);
            }
            let idle = T0 + SEC + 3 * PACE;
            assert_eq!(ask(&store, &t, Ask::Fresh, idle).await, Booking::Admitted);
            store.purge_prefix().await.expect("purged");
        }
    }
}
