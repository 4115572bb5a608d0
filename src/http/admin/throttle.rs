//! Failed sign-ins on the admin listener, per client: every comparison of a credential with
//! `O365_ADMIN_TOKEN` — the sign-in form (`POST /admin/login`) and the admin API's bearer
//! token — goes through [`SignInThrottle::attempt`].
//!
//! Why it is built so: docs/DESIGN.md, "http/admin/throttle".

use crate::config::IpNet;
use crate::http::client_address::{budget_key, of_request};
use crate::ops::metrics::Metrics;
use crate::ops::telemetry::LimitedWarnings;
use actix_web::HttpRequest;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{HashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Clients remembered per replica (about 50 bytes each: 5 MB).
pub const MAX_CLIENTS: usize = 100_000;
/// The shortest time between two sweeps of a full table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

static FAILURE_WARNINGS: LimitedWarnings = LimitedWarnings::new();
static THROTTLE_WARNINGS: LimitedWarnings = LimitedWarnings::new();

/// Where a credential was given: the label of the failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /admin/login`.
    Login,
    /// A bearer token on the admin API.
    Api,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Login => "login",
            Route::Api => "api",
        }
    }
}

/// The outcome of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The credential was compared and is right.
    Passed,
    /// The credential was compared and is wrong (or missing): one failure spent.
    Failed,
    /// The client is over its budget: nothing was compared; try again after this long.
    Throttled(Duration),
}

/// The key of one look at the [`Ledger`]: a client, and whether the look spends a cell.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Look {
    client: IpAddr,
    spend: bool,
}

/// governor's `HashMap` state store, keyed by client, through which a look may also leave
/// the state as it was (see docs/DESIGN.md, "http/admin/throttle").
struct Ledger(Arc<HashMapStateStore<IpAddr>>);

impl StateStore for Ledger {
    type Key = Look;

    fn measure_and_replace<T, F, E>(&self, look: &Look, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if look.spend {
            return self.0.measure_and_replace(&look.client, f);
        }
        // The same decision, its new state discarded: an unknown client is not added, a
        // known one's state is written back as it was.
        let clients = self.0.lock();
        match clients.get(&look.client) {
            None => f(None).map(|(decision, _)| decision),
            Some(state) => state.measure_and_replace(&NotKeyed::NonKey, |tat| {
                f(tat).map(|(decision, _)| (decision, tat.unwrap_or_default()))
            }),
        }
    }
}

impl ShrinkableKeyedStateStore<Look> for Ledger {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&*self.0, drop_below)
    }

    fn shrink_to_fit(&self) {
        ShrinkableKeyedStateStore::shrink_to_fit(&*self.0)
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// Failed sign-ins per client; see docs/DESIGN.md, "http/admin/throttle".
pub struct SignInThrottle<C: Clock = DefaultClock> {
    limiter: RateLimiter<Look, Ledger, C, NoOpMiddleware<C::Instant>>,
    /// The limiter's store, to ask whether a client is remembered.
    clients: Arc<HashMapStateStore<IpAddr>>,
    /// One attempt at a time: look, compare, spend.
    turn: Mutex<()>,
    last_sweep: Mutex<Option<Instant>>,
    max_clients: usize,
    /// How long a refused client waits when the table is full: one cell's refill.
    refill: Duration,
    trusted_proxies: Vec<IpNet>,
    metrics: Arc<Metrics>,
}

impl SignInThrottle {
    /// `failures_per_minute` = `O365_ADMIN_LOGIN_FAILURES_PER_MINUTE`, `trusted_proxies` =
    /// `O365_TRUSTED_PROXIES`.
    pub fn new(
        failures_per_minute: u32,
        trusted_proxies: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> SignInThrottle {
        SignInThrottle::with_clock(
            failures_per_minute,
            MAX_CLIENTS,
            DefaultClock::default(),
            trusted_proxies,
            metrics,
        )
    }
}

impl<C: Clock> SignInThrottle<C> {
    fn with_clock(
        failures_per_minute: u32,
        max_clients: usize,
        clock: C,
        trusted_proxies: Vec<IpNet>,
        metrics: Arc<Metrics>,
    ) -> SignInThrottle<C> {
        let per_minute = NonZeroU32::new(failures_per_minute).unwrap_or(NonZeroU32::MIN);
        let clients: Arc<HashMapStateStore<IpAddr>> = Arc::default();
        SignInThrottle {
            limiter: RateLimiter::new(
                Quota::per_minute(per_minute),
                Ledger(clients.clone()),
                clock,
            ),
            clients,
            turn: Mutex::new(()),
            last_sweep: Mutex::new(None),
            max_clients: max_clients.max(1),
            refill: Duration::from_secs(60).div_f64(f64::from(per_minute.get())),
            trusted_proxies,
            metrics,
        }
    }

    /// One attempt of `req`'s client at `route`: `right` compares the credential (it is not
    /// called when the client is over its budget). Counts and logs what failed.
    pub fn attempt(
        &self,
        req: &HttpRequest,
        route: Route,
        right: impl FnOnce() -> bool,
    ) -> Verdict {
        let client = of_request(req, &self.trusted_proxies);
        let verdict = self.attempt_by(client, right);
        match verdict {
            Verdict::Passed => {}
            Verdict::Failed => {
                self.metrics
                    .admin_auth_failures
                    .with_label_values(&[route.label()])
                    .inc();
                if let Some(suppressed) = FAILURE_WARNINGS.allow() {
                    tracing::warn!(
                        client = %client,
                        route = route.label(),
                        path = %req.path().chars().take(200).collect::<String>(),
                        suppressed,
                        "Admin sign-in failed: wrong or missing admin token (one line per 10 s at most; suppressed = those not logged since)."
                    );
                }
            }
            Verdict::Throttled(wait) => {
                self.metrics.admin_auth_throttled.inc();
                if let Some(suppressed) = THROTTLE_WARNINGS.allow() {
                    tracing::warn!(
                        client = %client,
                        route = route.label(),
                        retry_after_s = wait.as_secs(),
                        suppressed,
                        "Admin sign-in refused without comparing the token: this client failed too often (O365_ADMIN_LOGIN_FAILURES_PER_MINUTE; one line per 10 s at most)."
                    );
                }
            }
        }
        verdict
    }

    /// [`SignInThrottle::attempt`] for a known client, uncounted.
    fn attempt_by(&self, client: IpAddr, right: impl FnOnce() -> bool) -> Verdict {
        let client = budget_key(client);
        let _turn = self.turn.lock().expect("poisoned");
        let look = Look {
            client,
            spend: false,
        };
        if let Err(not_until) = self.limiter.check_key(&look) {
            let now = self.limiter.clock().now();
            return Verdict::Throttled(whole_seconds(not_until.wait_time_from(now)));
        }
        if !self.remembered(client) && !self.room() {
            return Verdict::Throttled(whole_seconds(self.refill));
        }
        if right() {
            return Verdict::Passed;
        }
        let spend = Look {
            client,
            spend: true,
        };
        match self.limiter.check_key(&spend) {
            Ok(()) => Verdict::Failed,
            // Cannot happen while the look above said yes under the same turn; refuse anyway.
            Err(not_until) => {
                let now = self.limiter.clock().now();
                Verdict::Throttled(whole_seconds(not_until.wait_time_from(now)))
            }
        }
    }

    fn remembered(&self, client: IpAddr) -> bool {
        self.clients.lock().contains_key(&client)
    }

    /// Whether one more client fits, sweeping the table (at most once a second) when full.
    fn room(&self) -> bool {
        if self.limiter.len() < self.max_clients {
            return true;
        }
        let mut last = self.last_sweep.lock().expect("poisoned");
        if last.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            *last = Some(Instant::now());
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.len() < self.max_clients
    }

    /// Clients remembered now.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// A wait as `Retry-After` says it: whole seconds, at least one.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs_f64().ceil().max(1.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn throttle(
        per_minute: u32,
        max_clients: usize,
    ) -> (SignInThrottle<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let t = SignInThrottle::with_clock(
            per_minute,
            max_clients,
            clock.clone(),
            Vec::new(),
            Arc::new(Metrics::new()),
        );
        (t, clock)
    }

    #[test]
    fn a_client_has_its_budget_of_failures_then_nothing_is_compared_until_it_refills() {
        let (t, clock) = throttle(5, 100);
        let a = ip("192.0.2.1");
        for _ in 0..5 {
            assert_eq!(t.attempt_by(a, || false), Verdict::Failed);
        }
        // Over budget: the right token is not even looked at.
        let compared = std::cell::Cell::new(false);
        let verdict = t.attempt_by(a, || {
            compared.set(true);
            true
        });
        assert_eq!(verdict, Verdict::Throttled(Duration::from_secs(12)));
        assert!(!compared.get(), "the token was compared");
        clock.advance(Duration::from_secs(5));
        assert_eq!(
            t.attempt_by(a, || true),
            Verdict::Throttled(Duration::from_secs(7))
        );
        // One failure comes back every 12 s.
        clock.advance(Duration::from_secs(7));
        assert_eq!(t.attempt_by(a, || false), Verdict::Failed);
        assert!(matches!(t.attempt_by(a, || true), Verdict::Throttled(_)));
        clock.advance(Duration::from_secs(12));
        assert_eq!(t.attempt_by(a, || true), Verdict::Passed);
        // Another client is not affected.
        assert_eq!(t.attempt_by(ip("192.0.2.2"), || true), Verdict::Passed);
        assert_eq!(t.attempt_by(ip("192.0.2.2"), || false), Verdict::Failed);
    }

    #[test]
    fn successes_spend_nothing_and_are_not_remembered() {
        let (t, _clock) = throttle(2, 100);
        let a = ip("192.0.2.1");
        for _ in 0..50 {
            assert_eq!(t.attempt_by(a, || true), Verdict::Passed);
        }
        assert_eq!(t.clients(), 0);
        assert_eq!(t.attempt_by(a, || false), Verdict::Failed);
        for _ in 0..50 {
            assert_eq!(t.attempt_by(a, || true), Verdict::Passed);
        }
        assert_eq!(t.attempt_by(a, || false), Verdict::Failed);
        assert!(matches!(t.attempt_by(a, || true), Verdict::Throttled(_)));
        assert_eq!(t.clients(), 1);
    }

    #[test]
    fn ipv6_clients_share_the_budget_of_their_64() {
        let (t, _clock) = throttle(1, 100);
        assert_eq!(
            t.attempt_by(ip("2001:db8:1:2::1"), || false),
            Verdict::Failed
        );
        assert!(matches!(
            t.attempt_by(ip("2001:db8:1:2:ffff::9"), || true),
            Verdict::Throttled(_)
        ));
        assert_eq!(
            t.attempt_by(ip("2001:db8:1:3::1"), || true),
            Verdict::Passed
        );
    }

    #[test]
    fn the_table_stays_bounded_and_refuses_newcomers_only_while_full_of_live_budgets() {
        let (t, clock) = throttle(5, 3);
        for i in 1..=3 {
            assert_eq!(
                t.attempt_by(ip(&format!("192.0.2.{i}")), || false),
                Verdict::Failed
            );
        }
        // Full of clients whose failures still count: a newcomer is refused uncompared, a
        // remembered client is still judged on its own budget.
        assert_eq!(
            t.attempt_by(ip("192.0.2.9"), || true),
            Verdict::Throttled(Duration::from_secs(12))
        );
        assert_eq!(t.attempt_by(ip("192.0.2.1"), || true), Verdict::Passed);
        assert_eq!(t.clients(), 3);
        // Once their budgets refilled, the sweep makes room (at most once a second).
        clock.advance(Duration::from_secs(60));
        std::thread::sleep(SWEEP_EVERY);
        assert_eq!(t.attempt_by(ip("192.0.2.9"), || false), Verdict::Failed);
        assert_eq!(t.clients(), 1);
    }
}
