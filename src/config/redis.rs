//! Redis: where tokens, tenants, de-duplication, leases and quotas are kept.

use super::parse::Parser;
use crate::secret::Secret;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct Raw {
    redis_url: Option<String>,
    redis_prefix: Option<String>,
}

pub(super) struct Redis {
    pub url: Secret<String>,
    pub prefix: String,
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
    Redis {
        url: Secret::new(url),
        prefix: p.text("REDIS_PREFIX", raw.redis_prefix, "o365relay:"),
    }
}
