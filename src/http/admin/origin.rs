//! Who may talk to the admin listener from a browser: every request must name a `Host` the
//! listener answers to (DNS rebinding), and every request that changes something must come from
//! the listener's own origin or from no browser at all (cross-site requests) — whether or not
//! `O365_ADMIN_TOKEN` is set.
//!
//! Why it is built so: docs/DESIGN.md, "http/admin/origin".

use crate::ops::metrics::Metrics;
use crate::ops::telemetry::LimitedWarnings;
use actix_web::http::header::{HeaderMap, HOST, ORIGIN};
use actix_web::http::{Method, StatusCode};
use std::net::IpAddr;

/// The names `O365_ADMIN_HOSTS` adds to IP literals and `localhost`.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    hosts: Vec<String>,
}

/// Why a request was refused: its status, a message for the client, and the reason's metric
/// label (`host`, `cross_site`).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    pub reason: &'static str,
}

/// Refusals are logged at most once per [`LimitedWarnings::EVERY`]; the metric counts each.
static REFUSAL_WARNINGS: LimitedWarnings = LimitedWarnings::new();

impl Refusal {
    /// Counts the refusal and logs it (rate-limited; the message is escaped already).
    pub fn record(&self, metrics: &Metrics) {
        metrics
            .admin_refused
            .with_label_values(&[self.reason])
            .inc();
        if let Some(suppressed) = REFUSAL_WARNINGS.allow() {
            tracing::warn!(
                reason = self.reason,
                suppressed,
                "Admin listener refused a request: {}",
                self.message
            );
        }
    }
}

impl OriginPolicy {
    /// `hosts`: host names without port, any case.
    pub fn new(hosts: &[String]) -> OriginPolicy {
        OriginPolicy {
            hosts: hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks one request's method and headers.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim();
        if !self.host_allowed(host) {
            return Err(Refusal {
                status: StatusCode::MISDIRECTED_REQUEST,
                reason: "host",
                message: format!(
                    "Host {:?} is not a name of this listener: use its address, localhost, or a name listed in O365_ADMIN_HOSTS.",
                    printable(host, 100)
                ),
            });
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        if let Some(site) = headers.get("sec-fetch-site") {
            let site = site.to_str().unwrap_or("");
            if !site.eq_ignore_ascii_case("same-origin") && !site.eq_ignore_ascii_case("none") {
                return Err(cross_site(&format!(
                    "Sec-Fetch-Site: {}",
                    printable(site, 40)
                )));
            }
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().unwrap_or("null").trim();
            let same = ["http://", "https://"].iter().any(|scheme| {
                origin
                    .strip_prefix(scheme)
                    .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
            });
            if !same {
                return Err(cross_site(&format!("Origin {}", printable(origin, 100))));
            }
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.is_empty() {
            return false;
        }
        let name = name.to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok() || name == "localhost" || self.hosts.contains(&name)
    }
}

fn cross_site(what: &str) -> Refusal {
    Refusal {
        status: StatusCode::FORBIDDEN,
        reason: "cross_site",
        message: format!(
            "Cross-site request refused ({what}): the admin API changes state only for requests from its own pages or from clients that are not browsers."
        ),
    }
}

/// At most `max` characters of a header value for a message, control characters escaped.
fn printable(v: &str, max: usize) -> String {
    crate::ops::terminal::escape(&v.chars().take(max).collect::<String>()).into_owned()
}

/// The name in a `Host` value, without its port; an IPv6 literal without its brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or("", |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => "",
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hosts_are_ip_literals_localhost_or_listed() {
        let p = OriginPolicy::new(&["relay-admin.ops.svc".into()]);
        for ok in [
            "127.0.0.1:9090",
            "10.1.2.3:9090",
            "[::1]:9090",
            "localhost:9090",
            "LOCALHOST",
            "relay-admin.ops.svc:9090",
        ] {
            assert!(
                p.check(&Method::GET, &headers(&[("host", ok)])).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:9090",
            "",
            "127.0.0.1.evil.example",
            "localhost:90x",
            "[::1",
        ] {
            let r = p.check(&Method::GET, &headers(&[("host", bad)]));
            assert_eq!(
                r.map_err(|r| r.status),
                Err(StatusCode::MISDIRECTED_REQUEST),
                "{bad}"
            );
        }
    }

    #[test]
    fn state_changes_need_the_same_origin_or_no_browser() {
        let p = OriginPolicy::new(&[]);
        let host = ("host", "localhost:9090");
        let ok = [
            vec![host],
            vec![host, ("origin", "http://localhost:9090")],
            vec![
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://localhost:9090"),
            ],
            vec![host, ("sec-fetch-site", "none")],
        ];
        for h in ok {
            assert!(p.check(&Method::POST, &headers(&h)).is_ok(), "{h:?}");
        }
        let bad = [
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://localhost:9091")],
            vec![host, ("origin", "http://localhost:9090.evil.example")],
        ];
        for h in bad {
            assert_eq!(
                p.check(&Method::DELETE, &headers(&h)).map_err(|r| r.status),
                Err(StatusCode::FORBIDDEN),
                "{h:?}"
            );
        }
        // Reads are not refused for their origin.
        assert!(p
            .check(
                &Method::GET,
                &headers(&[host, ("sec-fetch-site", "cross-site")])
            )
            .is_ok());
    }
}
