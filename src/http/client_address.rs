//! Who a request comes from, for the per-client budgets: consent starts on the public listener
//! ([`crate::http::consent::limiter`]) and failed sign-ins on the admin listener
//! ([`crate::http::admin::throttle`]).
//!
//! Why it is built so: docs/DESIGN.md, "http/client_address".

use crate::config::IpNet;
use actix_web::HttpRequest;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The client of `req` (see docs/DESIGN.md, "http/client_address"); every request without a peer address (none
/// reaches a listener without one) is `0.0.0.0`, so they share one budget.
pub fn of_request(req: &HttpRequest, trusted: &[IpNet]) -> IpAddr {
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    client_address(req.peer_addr().map(|a| a.ip()), &forwarded, trusted)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The address a request is attributed to; see docs/DESIGN.md, "http/client_address". `forwarded_for` holds the
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

/// The key a per-client budget is kept under: the address, or its /64 for IPv6.
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
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
    fn ipv6_clients_are_kept_under_their_64() {
        assert_eq!(budget_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            budget_key(ip("2001:db8:1:2:ffff::9")),
            budget_key(ip("2001:db8:1:2::1"))
        );
        assert_ne!(budget_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(budget_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(budget_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn a_request_is_attributed_to_its_peer_or_the_client_its_trusted_proxy_names() {
        use actix_web::test::TestRequest;
        let req = TestRequest::default()
            .peer_addr("10.2.3.4:5555".parse().unwrap())
            .insert_header(("X-Forwarded-For", "1.1.1.1, 203.0.113.9"))
            .to_http_request();
        assert_eq!(of_request(&req, &[]), ip("10.2.3.4"));
        assert_eq!(of_request(&req, &nets(&["10.0.0.0/8"])), ip("203.0.113.9"));
        let no_peer = TestRequest::default().to_http_request();
        assert_eq!(of_request(&no_peer, &[]), ip("0.0.0.0"));
    }
}
