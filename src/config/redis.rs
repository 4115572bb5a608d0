//! Redis: where tokens, tenants, de-duplication, leases and quotas are kept.

use super::parse::Parser;
use super::tls::{self, PemFile};
use crate::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_ca_path: Option<String>,
}

pub(super) struct Redis {
    pub url: Secret<String>,
    pub prefix: String,
    /// The private CA that signs the server's certificate (`O365_REDIS_CA_PATH`, rediss://
    /// only); without it, the system's CA store.
    pub ca: Option<PemFile>,
}

pub(super) fn read(vars: &[(String, String)], p: &mut Parser) -> Redis {
    let raw: Raw = p.raw(vars);
    let url = p.text("REDIS_URL", raw.redis_url, "redis://127.0.0.1:6379");
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        p.fail(
            "REDIS_URL",
            "must start with redis://, rediss:// or unix://",
        );
    }
    let is_tls = url.starts_with("rediss://");
    // redis-rs reads a `#insecure` fragment as "accept any certificate": verification is never
    // switched off by a URL.
    if is_tls && url.contains('#') {
        p.fail(
            "REDIS_URL",
            "must not have a '#' fragment ('#insecure' would switch certificate verification off; give a private CA with O365_REDIS_CA_PATH instead)",
        );
    }
    let ca = tls::ca_file(p, "REDIS_CA_PATH", raw.redis_ca_path);
    if ca.is_some() && !is_tls {
        p.fail(
            "REDIS_CA_PATH",
            "is set but O365_REDIS_URL is not rediss:// (the CA is only used with TLS)",
        );
    }
    Redis {
        url: Secret::new(url),
        prefix: p.text("REDIS_PREFIX", raw.redis_prefix, "o365relay:"),
        ca,
    }
}
