//! Redis: where tokens, tenants, de-duplication, leases and quotas are kept, and the topology
//! it is reached through (`O365_REDIS_MODE`): one server, a Redis Cluster, or a master found
//! through Sentinel.

use super::parse::Parser;
use super::tls::{self, PemFile};
use crate::domain::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_ca_path: Option<String>,
    redis_mode: Option<String>,
    redis_sentinel_master: Option<String>,
}

/// How Redis is reached (`O365_REDIS_MODE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisMode {
    /// One server: `O365_REDIS_URL` is its URL (a managed primary endpoint included).
    Standalone,
    /// Redis Cluster: `O365_REDIS_URL` lists seed nodes; the rest of the cluster is discovered.
    Cluster,
    /// The master that Sentinel names `master`: `O365_REDIS_URL` lists the sentinels.
    Sentinel { master: String },
}

impl RedisMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel { .. } => "sentinel",
        }
    }
}

/// Everything the store needs to reach Redis ([`crate::store::Store::open`]).
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub mode: RedisMode,
    /// One URL in standalone mode; the seed nodes, or the sentinels, otherwise. Each may hold
    /// an ACL user and password, so each is a secret.
    pub urls: Vec<Secret<String>>,
    pub prefix: String,
    /// The private CA that signs the servers' certificates (`O365_REDIS_CA_PATH`, rediss://
    /// only); without it, the system's CA store.
    pub ca: Option<PemFile>,
}

impl RedisSettings {
    /// One server, as the tests and the demo use it.
    pub fn standalone(url: &str, prefix: &str) -> RedisSettings {
        RedisSettings {
            mode: RedisMode::Standalone,
            urls: vec![Secret::new(url.to_string())],
            prefix: prefix.to_string(),
            ca: None,
        }
    }

    /// Whether the servers are reached over TLS (every URL has the same scheme).
    pub fn is_tls(&self) -> bool {
        self.urls
            .first()
            .is_some_and(|u| u.expose().starts_with("rediss://"))
    }
}

/// Sentinel's default master name, as in Sentinel's own example configuration and the common
/// Helm charts.
const DEFAULT_MASTER: &str = "mymaster";

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> RedisSettings {
    let raw: Raw = p.raw(vars);
    let mode = match raw.redis_mode.as_deref().map(str::trim) {
        None | Some("") | Some("standalone") => RedisMode::Standalone,
        Some("cluster") => RedisMode::Cluster,
        Some("sentinel") => RedisMode::Sentinel {
            master: p.text(
                "REDIS_SENTINEL_MASTER",
                raw.redis_sentinel_master.clone(),
                DEFAULT_MASTER,
            ),
        },
        Some(_) => {
            p.fail("REDIS_MODE", "must be standalone, cluster or sentinel");
            RedisMode::Standalone
        }
    };
    if let RedisMode::Sentinel { master } = &mode {
        if master.is_empty()
            || master.len() > 128
            || master.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            p.fail(
                "REDIS_SENTINEL_MASTER",
                "must be a master name as Sentinel knows it (1 to 128 characters, no spaces)",
            );
        }
    }
    let text = p.text("REDIS_URL", raw.redis_url, "redis://127.0.0.1:6379");
    let urls: Vec<String> = text
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    check_urls(&mode, &urls, p);
    let prefix = p.text("REDIS_PREFIX", raw.redis_prefix, "o365relay:");
    // In a cluster the relay puts hash tags into its keys (see crate::store); a brace in the
    // prefix would become the tag of every key and put the whole deployment on one shard.
    if mode == RedisMode::Cluster && (prefix.contains('{') || prefix.contains('}')) {
        p.fail(
            "REDIS_PREFIX",
            "must not contain '{' or '}' in cluster mode (the relay places the hash tags itself)",
        );
    }
    let is_tls = urls.first().is_some_and(|u| u.starts_with("rediss://"));
    let ca = tls::ca_file(p, "REDIS_CA_PATH", raw.redis_ca_path);
    if ca.is_some() && !is_tls {
        p.fail(
            "REDIS_CA_PATH",
            "is set but O365_REDIS_URL is not rediss:// (the CA is only used with TLS)",
        );
    }
    RedisSettings {
        mode,
        urls: urls.into_iter().map(Secret::new).collect(),
        prefix,
        ca,
    }
}

/// Each URL on its own; problems name the variable and the URL's position, never its text (it
/// may hold a password).
fn check_urls(mode: &RedisMode, urls: &[String], p: &mut Parser) {
    if urls.is_empty() {
        p.fail("REDIS_URL", "is empty");
        return;
    }
    if *mode == RedisMode::Standalone && urls.len() > 1 {
        p.fail(
            "REDIS_URL",
            "holds several URLs, but O365_REDIS_MODE is standalone (set it to cluster for seed nodes, or sentinel for sentinels)",
        );
        return;
    }
    let several = urls.len() > 1;
    for (i, url) in urls.iter().enumerate() {
        // "URL 2 of 3 must …", or just "must …" for one URL.
        let which = if several {
            format!("URL {} of {} ", i + 1, urls.len())
        } else {
            String::new()
        };
        let unix_ok = *mode == RedisMode::Standalone;
        let scheme_ok = url.starts_with("redis://")
            || url.starts_with("rediss://")
            || (unix_ok && url.starts_with("unix://"));
        if !scheme_ok {
            let expected = if unix_ok {
                "redis://, rediss:// or unix://"
            } else {
                "redis:// or rediss:// (a cluster or Sentinel is reached over TCP)"
            };
            p.fail("REDIS_URL", format!("{which}must start with {expected}"));
            continue;
        }
        // redis-rs reads a `#insecure` fragment as "accept any certificate": verification is
        // never switched off by a URL.
        if url.starts_with("rediss://") && url.contains('#') {
            p.fail(
                "REDIS_URL",
                format!("{which}must not have a '#' fragment ('#insecure' would switch certificate verification off; give a private CA with O365_REDIS_CA_PATH instead)"),
            );
        }
        if url::Url::parse(url).map_or(true, |u| !url.starts_with("unix://") && u.host().is_none())
        {
            p.fail("REDIS_URL", format!("{which}is not a URL with a host"));
        }
    }
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        p.fail(
            "REDIS_URL",
            "mixes redis:// and rediss:// (every node of one deployment is reached the same way)",
        );
    }
    if *mode == RedisMode::Cluster {
        // redis-rs refuses seeds with different credentials; say so before it does.
        let creds: Vec<(String, Option<String>)> = urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .map(|u| (u.username().to_string(), u.password().map(str::to_string)))
            .collect();
        if creds.windows(2).any(|w| w[0] != w[1]) {
            p.fail(
                "REDIS_URL",
                "gives the seed nodes different users or passwords (a cluster has one ACL)",
            );
        }
    }
}
