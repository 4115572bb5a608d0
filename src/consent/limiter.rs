//! How often one client may start a consent: a token bucket per client address, in memory,
//! in a table of bounded size.
//!
//! **Who the client is.** The peer address of the connection, unless that peer is one of
//! `O365_TRUSTED_PROXIES` (the ingress): then the `X-Forwarded-For` chain is read from the
//! right — each proxy appends the address it received the request from — skipping trusted
//! proxies, and the first address that is not one is the client. Anything further left was
//! written by the client itself and is never believed, and a header from an untrusted peer is
//! ignored altogether: without the variable, every request is keyed by its peer (behind an
//! ingress that is the ingress itself, so all clients share one budget — safe, only coarse).
//! IPv6 clients are keyed by their /64, the block one subscriber usually holds, so that
//! rotating addresses inside it does not buy more starts.
//!
//! **The bucket.** Each client may start `per_minute` consents at once and regains one every
//! `60 / per_minute` seconds; a refused start learns how long to wait (`Retry-After`). The
//! table is per replica (replicas multiply the budget) and holds at most [`MAX_CLIENTS`]
//! entries: when it is full, clients whose bucket has refilled are forgotten (they lose
//! nothing), and if that is not enough, the one seen longest ago. So memory stays bounded
//! whatever number of addresses a flood comes from; a client forgotten under such a flood gets
//! a fresh bucket. This is a courtesy, not a defence: a start stores nothing (the `state` is
//! signed, not kept), so no number of them can crowd out a real admin.

use crate::config::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Clients remembered per replica (about 64 bytes each).
pub const MAX_CLIENTS: usize = 10_000;

/// The address a request is attributed to; see the module doc. `forwarded_for` holds the
/// `X-Forwarded-For` header values in the order received. `None` without a peer address.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let mut client = peer?.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(client) {
        return Some(client);
    }
    let hops = forwarded_for
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        // Written by a trusted proxy, so well-formed unless the proxy passes on what it got:
        // then stop at the last address known to be real.
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| s.ip().to_canonical())
}

/// The bucket key: the address, or its /64 for IPv6.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

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

/// Per-client token buckets; see the module doc.
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
        let key = key(client);
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| IpNet::parse(s).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let peer = Some(ip("198.51.100.7"));
        assert_eq!(
            client_address(peer, &["203.0.113.1"], &[]),
            Some(ip("198.51.100.7"))
        );
        assert_eq!(
            client_address(peer, &["203.0.113.1"], &nets(&["10.0.0.0/8"])),
            Some(ip("198.51.100.7")),
            "the peer is not the ingress: its header is its own invention"
        );
        assert_eq!(client_address(None, &["203.0.113.1"], &[]), None);
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8", "192.168.0.1"]);
        let ingress = Some(ip("10.2.3.4"));
        // The client wrote a fake entry first; the ingress appended the real peer.
        assert_eq!(
            client_address(ingress, &["1.1.1.1, 203.0.113.9"], &trusted),
            Some(ip("203.0.113.9"))
        );
        // Two proxies (a load balancer in front of the ingress), header split over two lines.
        assert_eq!(
            client_address(ingress, &["6.6.6.6, 203.0.113.9", "192.168.0.1"], &trusted),
            Some(ip("203.0.113.9"))
        );
        // No header: the proxy itself.
        assert_eq!(client_address(ingress, &[], &trusted), Some(ip("10.2.3.4")));
        // Garbage where a trusted proxy's entry should be: the last real address.
        assert_eq!(
            client_address(ingress, &["203.0.113.9, not-an-ip"], &trusted),
            Some(ip("10.2.3.4"))
        );
        // Ports and IPv4-mapped IPv6 are understood.
        assert_eq!(
            client_address(
                Some(ip("::ffff:10.0.0.1")),
                &["[2001:db8::5]:443"],
                &trusted
            ),
            Some(ip("2001:db8::5"))
        );
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
