//! HTTP on both sides: the two listeners, the public URL Microsoft calls back on, the proxies
//! in front of the listeners, the admin token and its budget of failed sign-ins, and the time
//! limits on requests in and out.

use super::parse::{Bounds, Parser, SECOND};
use super::{BaseUrl, IpNet};
use crate::domain::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    public_url: Option<String>,
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_allow_unauthenticated: Option<String>,
    admin_hosts: Option<String>,
    admin_login_failures_per_minute: Option<String>,
    http_timeout: Option<String>,
    fetch_timeout: Option<String>,
    webhook_body_timeout: Option<String>,
    trusted_proxies: Option<String>,
}

/// `O365_ADMIN_LOGIN_FAILURES_PER_MINUTE`, per client and replica: 1 to 1000.
const LOGIN_FAILURES_PER_MINUTE: Bounds<u32> = Bounds::new(1, 1000);
/// `O365_HTTP_TIMEOUT`, connecting to and each read from Microsoft: 1s to 10m.
const HTTP_TIMEOUT: Bounds<Duration> = Bounds::new(SECOND, Duration::from_secs(600));
/// `O365_FETCH_TIMEOUT`, a blob's whole fetch: 1s to 6h.
const FETCH_TIMEOUT: Bounds<Duration> = Bounds::new(SECOND, Duration::from_secs(6 * 3600));
/// `O365_WEBHOOK_BODY_TIMEOUT`: 100ms to 2m.
const WEBHOOK_BODY_TIMEOUT: Bounds<Duration> =
    Bounds::new(Duration::from_millis(100), Duration::from_secs(120));

pub(super) struct Http {
    pub public_url: Option<BaseUrl>,
    pub listen: String,
    pub admin_listen: String,
    pub admin_token: Option<Secret<String>>,
    pub admin_allow_unauthenticated: bool,
    pub admin_hosts: Vec<String>,
    pub admin_login_failures_per_minute: u32,
    pub http_timeout: Duration,
    pub fetch_timeout: Duration,
    pub webhook_body_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Http {
    let raw: Raw = p.raw(vars);
    let public_url = raw
        .public_url
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| {
            p.base_url(
                "PUBLIC_URL",
                s.trim(),
                " (expected e.g. https://relay.example.com)",
            )
        });
    let listen = address(p, "LISTEN", raw.listen, "0.0.0.0:8080");
    let admin_listen = address(p, "ADMIN_LISTEN", raw.admin_listen, "0.0.0.0:9090");
    let admin_token = raw.admin_token.filter(|s| !s.is_empty()).map(Secret::new);
    if admin_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        p.fail(
            "ADMIN_TOKEN",
            "is shorter than 16 characters; use a long random value",
        );
    }
    let admin_allow_unauthenticated = p.boolean(
        "ADMIN_ALLOW_UNAUTHENTICATED",
        raw.admin_allow_unauthenticated,
        false,
    );
    let admin_hosts = admin_hosts(p, raw.admin_hosts);
    let admin_login_failures_per_minute = p.number(
        "ADMIN_LOGIN_FAILURES_PER_MINUTE",
        raw.admin_login_failures_per_minute,
        5,
        LOGIN_FAILURES_PER_MINUTE,
    );
    Http {
        admin_hosts,
        admin_login_failures_per_minute,
        public_url,
        listen,
        admin_listen,
        admin_token,
        admin_allow_unauthenticated,
        http_timeout: p.duration("HTTP_TIMEOUT", raw.http_timeout, "60s", HTTP_TIMEOUT),
        fetch_timeout: p.duration("FETCH_TIMEOUT", raw.fetch_timeout, "5m", FETCH_TIMEOUT),
        webhook_body_timeout: p.duration(
            "WEBHOOK_BODY_TIMEOUT",
            raw.webhook_body_timeout,
            "10s",
            WEBHOOK_BODY_TIMEOUT,
        ),
        trusted_proxies: trusted_proxies(p, raw.trusted_proxies),
    }
}

/// `O365_ADMIN_HOSTS`: comma-separated host names (no port) the admin listener answers to
/// besides IP literals and `localhost` ([`crate::http::admin::origin`]).
fn admin_hosts(p: &mut Parser, v: Option<String>) -> Vec<String> {
    let mut hosts = Vec::new();
    for h in v.as_deref().unwrap_or("").split(',').map(str::trim) {
        if h.is_empty() {
            continue;
        }
        let valid = h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if valid {
            hosts.push(h.to_ascii_lowercase());
        } else {
            p.fail(
                "ADMIN_HOSTS",
                format!("{h:?} is not a host name (letters, digits, '.' and '-'; no port)"),
            );
        }
    }
    hosts
}

/// `O365_TRUSTED_PROXIES`: comma-separated addresses or CIDR blocks of the proxies (the
/// ingress) whose `X-Forwarded-For` the listeners believe; empty = nobody's.
fn trusted_proxies(p: &mut Parser, v: Option<String>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for s in v
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match IpNet::parse(s) {
            Ok(n) => nets.push(n),
            Err(e) => p.fail(
                "TRUSTED_PROXIES",
                format!("{e} (expected e.g. 10.0.0.0/8,192.168.1.10)"),
            ),
        }
    }
    nets
}

/// A listener's `address:port`, kept as text for actix's `bind`.
fn address(p: &mut Parser, var: &str, v: Option<String>, default: &str) -> String {
    let addr = p.text(var, v, default);
    if addr.parse::<std::net::SocketAddr>().is_err() {
        p.fail(
            var,
            format!("'{addr}' is not an address:port (expected e.g. 0.0.0.0:8080)"),
        );
    }
    addr
}
