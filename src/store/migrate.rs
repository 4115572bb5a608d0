//! Moving a deployment's keys from one standalone Redis to another topology — in practice to a
//! Redis Cluster, whose key names carry hash tags (`token:{tenant}` where a standalone Redis
//! has `token:tenant`, see [`super::TenantSegment`]). `o365-relay redis-migrate --from URL`.
//!
//! Why it is built so: docs/DESIGN.md, "store/migrate".

use super::{Store, StoreError, StoreResult};
use crate::config::RedisMode;
use redis::AsyncCommands;

/// Families whose second segment is the tenant id: in a cluster it becomes a hash tag.
const TENANT_FAMILIES: &[&str] = &[
    "token",
    "checkpoint",
    "relayed",
    "reconcile-enqueued",
    "dead",
    "rec",
    "seen",
    "dedup",
    "quota",
    "activity",
    "activity5",
    "activity-last",
    "sub-ok",
    "sub-start",
];

/// Deployment-wide keys copied under the same name.
const SHARED_KEYS: &[&str] = &["tenants", "tenant-states", "consent-allowed"];

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// Keys written on the target.
    pub copied: u64,
    /// Keys already on the target, left as they were.
    pub present: u64,
    /// Keys that belong to a running replica (leases, locks, claims…), not copied.
    pub skipped: u64,
    /// Keys that expired between the scan and the copy.
    pub vanished: u64,
}

/// The name `rest` (a key without the prefix, as a standalone Redis holds it) has on a target
/// of `mode`; `None` for keys that are not copied.
pub fn target_name(rest: &str, mode: &RedisMode) -> Option<String> {
    if SHARED_KEYS.contains(&rest) {
        return Some(rest.to_string());
    }
    let (family, tail) = rest.split_once(':')?;
    if !TENANT_FAMILIES.contains(&family) {
        return None;
    }
    let (tenant, after) = match tail.split_once(':') {
        Some((t, a)) => (t, Some(a)),
        None => (tail, None),
    };
    if tenant.is_empty() || tenant.starts_with('{') {
        return None;
    }
    let segment = if *mode == RedisMode::Cluster {
        format!("{{{tenant}}}")
    } else {
        tenant.to_string()
    };
    Some(match after {
        Some(a) => format!("{family}:{segment}:{a}"),
        None => format!("{family}:{segment}"),
    })
}

/// Copies every key of `source` (a standalone Redis, same prefix) to `target`, see the module
/// doc. Records claims in progress (`rec:` = `p:…`) are skipped; their `d` markers are copied.
pub async fn copy(source: &Store, target: &Store) -> StoreResult<Migrated> {
    if *source.mode() != RedisMode::Standalone {
        return Err(StoreError::Unavailable(
            "the source of a migration is one standalone Redis".into(),
        ));
    }
    let mut from = source.conn().await?;
    // Expiries are read as instants (`PEXPIRETIME`, Redis 7.0 and later) and restored as such
    // (`ABSTTL`): keys that expire together on the source — a bucket's root and its leaves —
    // expire together on the target, whatever time passes between their copies. An older
    // source is read with `PTTL`, each key's expiry then moving by its own copy's delay.
    let absolute = redis::cmd("PEXPIRETIME")
        .arg(format!("{}migrate-probe", source.prefix))
        .query_async::<i64>(&mut from)
        .await
        .is_ok();
    let mut done = Migrated::default();
    let pattern = format!("{}*", source.prefix);
    let mut cursor: u64 = 0;
    loop {
        let r: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(500)
            .query_async(&mut from)
            .await;
        let (next, keys) = source.observe(r)?;
        for key in keys {
            let rest = &key[source.prefix.len().min(key.len())..];
            let Some(name) = target_name(rest, target.mode()) else {
                done.skipped += 1;
                continue;
            };
            if rest.starts_with("rec:") {
                let v: Option<String> = source.observe(from.get(&key).await)?;
                if v.as_deref() != Some("d") {
                    done.skipped += 1;
                    continue;
                }
            }
            let r: Result<(Option<Vec<u8>>, i64), _> = redis::pipe()
                .cmd("DUMP")
                .arg(&key)
                .cmd(if absolute { "PEXPIRETIME" } else { "PTTL" })
                .arg(&key)
                .query_async(&mut from)
                .await;
            let (dump, expiry) = source.observe(r)?;
            let Some(dump) = dump.filter(|_| expiry != -2) else {
                done.vanished += 1;
                continue;
            };
            let mut to = target.conn().await?;
            let mut restore = redis::cmd("RESTORE");
            restore.arg(target.key(&name)).arg(expiry.max(0)).arg(dump);
            if absolute && expiry > 0 {
                restore.arg("ABSTTL");
            }
            let r: Result<redis::Value, _> = restore.query_async(&mut to).await;
            match r {
                Ok(_) => done.copied += 1,
                Err(e) if e.code() == Some("BUSYKEY") => done.present += 1,
                Err(e) => return Err(target.observe_err(StoreError::Command(e))),
            }
        }
        if next == 0 {
            return Ok(done);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11";

    #[test]
    fn a_tenants_keys_get_the_hash_tag_in_a_cluster_and_keep_their_names_elsewhere() {
        let c = RedisMode::Cluster;
        for (standalone, cluster) in [
            (format!("token:{T}"), format!("token:{{{T}}}")),
            (
                format!("checkpoint:{T}:Audit.Exchange"),
                format!("checkpoint:{{{T}}}:Audit.Exchange"),
            ),
            (
                format!("relayed:{T}:blob-1"),
                format!("relayed:{{{T}}}:blob-1"),
            ),
            (
                format!("seen:{T}:476266:g:01"),
                format!("seen:{{{T}}}:476266:g:01"),
            ),
            (
                format!("quota:{T}:calendar"),
                format!("quota:{{{T}}}:calendar"),
            ),
            (format!("rec:{T}:a:b{{c}}"), format!("rec:{{{T}}}:a:b{{c}}")),
            ("tenants".to_string(), "tenants".to_string()),
        ] {
            assert_eq!(target_name(&standalone, &c).as_deref(), Some(&cluster[..]));
            assert_eq!(
                target_name(&standalone, &RedisMode::Standalone).as_deref(),
                Some(&standalone[..])
            );
        }
        for transient in [
            "lease:keeper".to_string(),
            format!("token-lock:{T}"),
            "consent-used:abc".to_string(),
            "consent-state-key".to_string(),
            "replicas".to_string(),
            "parking:sweep".to_string(),
            format!("token:{{{T}}}"),
            "token:".to_string(),
            "unknown".to_string(),
        ] {
            assert_eq!(target_name(&transient, &c), None, "{transient}");
        }
    }
}
