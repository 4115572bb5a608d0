//! Fairness between tenants: which blob may take a worker now, and when the others come back.
//!
//! Why it is built so: docs/DESIGN.md, "pipeline/scheduling".

use crate::domain::TenantId;
use crate::store::quota::{Ask, Booking};
use crate::store::Store;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest a job back at its turn waits on the worker for its budget to free up (docs/DESIGN.md, "pipeline/scheduling"): longer waits are booked again.
pub const SHORT_WAIT: Duration = Duration::from_secs(1);
/// How far ahead at least a job over its tenant's share is booked: about the time a running job
/// of the tenant takes to finish.
pub const BUSY_BACKOFF: Duration = Duration::from_secs(1);
/// A job is back at its turn up to this long before it (clocks of replicas differ a little;
/// RabbitMQ never returns a deferred job early).
const EARLY: Duration = Duration::from_secs(1);
/// A turn further ahead than Microsoft keeps content is not one the relay booked: the header is
/// ignored.
const MAX_TURN: Duration = Duration::from_secs(7 * 86_400);
/// How often a job back at its turn asks again for budget before it is booked again.
const SHORT_TRIES: usize = 3;

/// Why a job was deferred: the label of `o365_deferred_total{reason}`.
pub const REASON_QUOTA: &str = "quota";
/// See [`REASON_QUOTA`].
pub const REASON_TENANT_BUSY: &str = "tenant_busy";

/// What a job may do now.
#[derive(Debug)]
pub enum Dispatch {
    /// Run: the fetch is counted in the tenant's budget; the permit holds the job's place in its
    /// tenant's share until dropped.
    Run(Permit),
    /// Come back after `delay` (`reason` is [`REASON_QUOTA`] or [`REASON_TENANT_BUSY`]).
    Defer {
        delay: Duration,
        reason: &'static str,
    },
}

/// Jobs running on this replica, in all and per tenant.
#[derive(Debug, Default)]
struct Running {
    total: usize,
    per_tenant: HashMap<TenantId, usize>,
}

impl Running {
    /// Takes a place for `tenant` when it is below its `share`, or when more than one of the
    /// `workers` would stay free for others.
    fn try_take(&mut self, tenant: &TenantId, share: usize, workers: usize) -> bool {
        let mine = self.per_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= share && self.total + 1 >= workers {
            return false;
        }
        self.total += 1;
        *self.per_tenant.entry(tenant.clone()).or_insert(0) += 1;
        true
    }

    fn release(&mut self, tenant: &TenantId) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_tenant.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(tenant);
            }
        }
    }
}

/// A job's place in its tenant's share of this replica's workers; given back when dropped
/// (also when the job panics).
#[derive(Debug)]
pub struct Permit {
    running: Arc<Mutex<Running>>,
    tenant: TenantId,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(&self.tenant);
    }
}

/// Admits content fetches: one per replica, shared by its workers.
pub struct Scheduler {
    store: Arc<Store>,
    /// `O365_QUOTA_PER_MINUTE`.
    quota_per_minute: u32,
    /// `O365_TENANT_CONCURRENCY`.
    share: usize,
    /// `O365_WORKER_CONCURRENCY`.
    workers: usize,
    running: Arc<Mutex<Running>>,
}

impl Scheduler {
    pub fn new(store: Arc<Store>, quota_per_minute: u32, share: usize, workers: usize) -> Self {
        Scheduler {
            store,
            quota_per_minute,
            share: share.max(1),
            workers: workers.max(1),
            running: Arc::new(Mutex::new(Running::default())),
        }
    }

    /// Whether a job of `tenant` may fetch now. `turn` is the time it was deferred to, when it
    /// was (the work queue's `o365-not-before`).
    pub async fn admit(
        &self,
        tenant: &TenantId,
        turn: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Dispatch {
        let due = match turn_state(turn, chrono::Utc::now()) {
            Turn::Ahead(delay) => {
                // Deferred further than a retry tier holds: back early, not yet its turn.
                return Dispatch::Defer {
                    delay,
                    reason: REASON_QUOTA,
                };
            }
            Turn::Due => true,
            Turn::None => false,
        };
        let Some(permit) = self.try_start(tenant) else {
            return self.busy(tenant).await;
        };
        for attempt in 1..=SHORT_TRIES {
            let ask = if due {
                Ask::Due {
                    wait_up_to: if attempt < SHORT_TRIES {
                        SHORT_WAIT
                    } else {
                        Duration::ZERO
                    },
                }
            } else {
                Ask::Fresh
            };
            match self
                .store
                .quota()
                .book(tenant, self.quota_per_minute, ask)
                .await
            {
                Ok(Booking::Admitted) => return Dispatch::Run(permit),
                Ok(Booking::Booked(delay)) => {
                    return Dispatch::Defer {
                        delay,
                        reason: REASON_QUOTA,
                    }
                }
                Ok(Booking::Shortly(wait)) => tokio::time::sleep(wait.min(SHORT_WAIT)).await,
                // Without Redis the budget cannot be shared; Microsoft's AF429 still backs us
                // off (as for every other Management API call).
                Err(_) => return Dispatch::Run(permit),
            }
        }
        Dispatch::Run(permit)
    }

    /// A place in the tenant's share, when it has one free (or the replica has room to spare).
    fn try_start(&self, tenant: &TenantId) -> Option<Permit> {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(tenant, self.share, self.workers);
        taken.then(|| Permit {
            running: self.running.clone(),
            tenant: tenant.clone(),
        })
    }

    /// The tenant has its share of a busy replica: book its next slot, at least
    /// [`BUSY_BACKOFF`] ahead.
    async fn busy(&self, tenant: &TenantId) -> Dispatch {
        let ask = Ask::Busy {
            not_before: BUSY_BACKOFF,
        };
        let delay = match self
            .store
            .quota()
            .book(tenant, self.quota_per_minute, ask)
            .await
        {
            Ok(Booking::Booked(delay)) => delay.max(BUSY_BACKOFF),
            Ok(_) | Err(_) => BUSY_BACKOFF + Duration::from_millis(rand::random_range(0..=2_000)),
        };
        Dispatch::Defer {
            delay,
            reason: REASON_TENANT_BUSY,
        }
    }
}

/// Where a job stands against the turn it was deferred to.
#[derive(Debug, PartialEq, Eq)]
enum Turn {
    /// Never deferred, or a turn the relay cannot have given (further than Microsoft keeps
    /// content).
    None,
    /// Its turn has come.
    Due,
    /// Its turn is still this far ahead.
    Ahead(Duration),
}

fn turn_state(
    turn: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Turn {
    let Some(turn) = turn else {
        return Turn::None;
    };
    match (turn - now).to_std() {
        // In the past: due.
        Err(_) => Turn::Due,
        Ok(ahead) if ahead <= EARLY => Turn::Due,
        Ok(ahead) if ahead > MAX_TURN => Turn::None,
        Ok(ahead) => Turn::Ahead(ahead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(n: u8) -> TenantId {
        TenantId::parse(&format!("00000000-0000-0000-0000-0000000000{n:02}")).unwrap()
    }

    #[test]
    fn a_tenant_below_its_share_always_gets_a_worker_while_one_is_free() {
        let mut r = Running::default();
        let (a, b) = (tenant(1), tenant(2));
        for _ in 0..2 {
            assert!(r.try_take(&a, 2, 4));
        }
        assert!(r.try_take(&b, 2, 4), "b is below its share");
        assert!(r.try_take(&b, 2, 4), "b is below its share");
        assert_eq!(r.total, 4);
    }

    #[test]
    fn a_tenant_over_its_share_uses_spare_workers_but_leaves_the_last_one() {
        let mut r = Running::default();
        let a = tenant(1);
        // Alone on 16 workers with a share of 4: it may use 15, never the last.
        for i in 0..15 {
            assert!(r.try_take(&a, 4, 16), "job {i}");
        }
        assert!(!r.try_take(&a, 4, 16));
        // The last worker goes to another tenant below its share.
        assert!(r.try_take(&tenant(2), 4, 16));
        // When one of a's jobs ends, a is still over its share on a full replica.
        r.release(&a);
        assert!(!r.try_take(&a, 4, 16));
    }

    #[test]
    fn places_are_given_back_and_idle_tenants_forgotten() {
        let mut r = Running::default();
        let a = tenant(1);
        assert!(
            r.try_take(&a, 1, 1),
            "a tenant below its share runs even on one worker"
        );
        assert!(!r.try_take(&a, 1, 1));
        r.release(&a);
        assert_eq!(r.total, 0);
        assert!(r.per_tenant.is_empty());
        assert!(r.try_take(&a, 1, 1));
    }

    #[test]
    fn a_share_at_or_above_the_workers_never_limits_a_tenant() {
        let mut r = Running::default();
        let a = tenant(1);
        for _ in 0..8 {
            assert!(r.try_take(&a, 8, 8));
        }
    }

    #[test]
    fn a_permit_gives_its_place_back_when_dropped() {
        let s = Scheduler::new(
            Arc::new(Store::new("redis://127.0.0.1:6379", "unused:").unwrap()),
            600,
            1,
            2,
        );
        let a = tenant(1);
        let p = s.try_start(&a).expect("a place");
        assert!(
            s.try_start(&a).is_none(),
            "a has its share, one worker left"
        );
        drop(p);
        assert!(s.try_start(&a).is_some());
    }

    #[test]
    fn a_job_is_due_at_its_turn_and_ahead_before_it() {
        let now = chrono::Utc::now();
        let secs = chrono::Duration::seconds;
        assert_eq!(turn_state(None, now), Turn::None);
        assert_eq!(turn_state(Some(now - secs(30)), now), Turn::Due);
        assert_eq!(turn_state(Some(now), now), Turn::Due);
        assert_eq!(
            turn_state(Some(now + chrono::Duration::milliseconds(500)), now),
            Turn::Due,
            "replica clocks differ a little"
        );
        assert_eq!(
            turn_state(Some(now + secs(7 * 3600)), now),
            Turn::Ahead(Duration::from_secs(7 * 3600))
        );
        assert_eq!(
            turn_state(Some(now + secs(30 * 86_400)), now),
            Turn::None,
            "a turn the relay cannot have given is ignored"
        );
    }
}
