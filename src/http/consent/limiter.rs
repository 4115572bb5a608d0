//! How often one client may start a consent: a token bucket per client address, in memory,
//! in a table of bounded size.
//!
//! Why it is built so: docs/DESIGN.md, "http/consent/limiter".

use crate::http::client_address::budget_key;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered per replica (about 64 bytes each).
pub const MAX_CLIENTS: usize = 10_000;

/// Whether a start may go ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Not now: the client may try again after this long.
    No(Duration),
}

struct Bucket {
    tokens: f64,
    seen: Instant,
}

/// Per-client token buckets; see docs/DESIGN.md, "http/consent/limiter".
pub struct RateLimiter {
    per_minute: u32,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter::with_capacity(per_minute, MAX_CLIENTS)
    }

    fn with_capacity(per_minute: u32, max_clients: usize) -> RateLimiter {
        RateLimiter {
            per_minute: per_minute.max(1),
            max_clients: max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Tokens regained per second.
    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn burst(&self) -> f64 {
        f64::from(self.per_minute)
    }

    /// Takes one start from `client`'s budget.
    pub fn check(&self, client: IpAddr) -> Admit {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Admit {
        let key = budget_key(client);
        let mut buckets = self.buckets.lock().expect("poisoned");
        if !buckets.contains_key(&key) && buckets.len() >= self.max_clients {
            self.make_room(&mut buckets, now);
        }
        let (rate, burst) = (self.rate(), self.burst());
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            seen: now,
        });
        let elapsed = now.saturating_duration_since(bucket.seen).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.seen = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Admit::Yes
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0);
            Admit::No(Duration::from_secs(wait as u64))
        }
    }

    /// Forgets every client whose bucket is full again; if none is, the one seen longest ago.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let (rate, burst) = (self.rate(), self.burst());
        buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.seen).as_secs_f64() * rate < burst
        });
        if buckets.len() >= self.max_clients {
            if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.seen).map(|(k, _)| *k) {
                buckets.remove(&oldest);
            }
        }
    }

    /// Clients currently remembered.
    pub fn clients(&self) -> usize {
        self.buckets.lock().expect("poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_for_tokens_to_come_back() {
        let limiter = RateLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("203.0.113.1");
        for _ in 0..3 {
            assert_eq!(limiter.check_at(a, t0), Admit::Yes);
        }
        // One start comes back every 20 s.
        assert_eq!(limiter.check_at(a, t0), Admit::No(Duration::from_secs(20)));
        assert_eq!(
            limiter.check_at(a, t0 + Duration::from_secs(15)),
            Admit::No(Duration::from_secs(5))
        );
        assert_eq!(
            limiter.check_at(a, t0 + Duration::from_secs(20)),
            Admit::Yes
        );
        // Another client is not affected.
        assert_eq!(limiter.check_at(ip("203.0.113.2"), t0), Admit::Yes);
    }

    #[test]
    fn ipv6_clients_share_the_budget_of_their_64() {
        let limiter = RateLimiter::new(1);
        let t0 = Instant::now();
        assert_eq!(limiter.check_at(ip("2001:db8:1:2::1"), t0), Admit::Yes);
        assert!(matches!(
            limiter.check_at(ip("2001:db8:1:2:ffff::9"), t0),
            Admit::No(_)
        ));
        assert_eq!(limiter.check_at(ip("2001:db8:1:3::1"), t0), Admit::Yes);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let limiter = RateLimiter::with_capacity(2, 100);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            limiter.check_at(a, t0 + Duration::from_millis(u64::from(i)));
            limiter.check_at(a, t0 + Duration::from_millis(u64::from(i)));
            assert!(limiter.clients() <= 100);
        }
        // A client that is still limited is remembered while there is room for it.
        let limiter = RateLimiter::with_capacity(1, 2);
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        assert_eq!(limiter.check_at(a, t0), Admit::Yes);
        assert_eq!(limiter.check_at(b, t0 + Duration::from_secs(1)), Admit::Yes);
        assert!(matches!(
            limiter.check_at(b, t0 + Duration::from_secs(1)),
            Admit::No(_)
        ));
        // Full: c evicts a (seen longest ago, its bucket not yet refilled), b stays limited.
        assert_eq!(limiter.check_at(c, t0 + Duration::from_secs(2)), Admit::Yes);
        assert_eq!(limiter.clients(), 2);
        assert!(matches!(
            limiter.check_at(b, t0 + Duration::from_secs(2)),
            Admit::No(_)
        ));
    }
}
