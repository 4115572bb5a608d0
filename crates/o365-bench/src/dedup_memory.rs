//! Section 8, de-duplication memory (`dedup-memory`): how many bytes of Redis each published
//! record costs while [`Dedup::publish_once`] remembers it (target ≤ 32 B), and the
//! Redis CPU it costs.
//!
//! The section starts a Redis of its own (the soak's [`SoakRedis`]: a free loopback port,
//! nothing on disk), so no other test or section moves its `used_memory` or its CPU, and sets
//! `hash-max-listpack-entries` to 128 (Redis's default is 512; 128 is the lowest the design
//! allows for, as a managed Redis may be set so; the buckets never pass it, so any higher
//! setting measures the same). Into it, through the real `publish_once` with a publisher that
//! accepts everything, it publishes N records (`--dedup-records`, 1,000,000; `--quick`
//! 20,000): four tenants, random lowercase GUID ids as Microsoft writes them, CreationTimes
//! spread at random over one day (yesterday), each tenant's records in time order in batches
//! of 500 (the worker's batch), as blobs bring them. Bytes per record = the rise of
//! `INFO memory` `used_memory` / N, after a warm-up and a `FLUSHALL` (scripts loaded, buffers
//! grown). Then every record is offered again: all must come back duplicates (the lookup
//! cost). Then the same records once more in a flushed Redis without a CreationTime, which
//! makes `publish_once` keep a key per record (`rec:{tenant}:{id}` = `d`): the scheme of the
//! previous version, for comparison. Redis CPU per record is `INFO cpu` (user + system) over
//! each pass / N.

use crate::report::Row;
use crate::soak::SoakRedis;
use anyhow::{bail, Context};
use o365_relay::domain::TenantId;
use o365_relay::store::dedup::{ClaimPolicy, PublishedOnce, RecordKey};
use o365_relay::store::Store;
use std::time::{Duration, Instant};

/// Records per `publish_once` call: the worker's batch.
const BATCH: usize = 500;

/// Target, bytes of Redis per record remembered.
const TARGET_BYTES: f64 = 32.0;

const TENANTS: [&str; 4] = [
    "0b5e4b6c-33f4-4f53-8a44-2f5a8d0e9c11",
    "5d1c7a4e-8f0b-4b6e-9a3d-2c7e1f4b8a90",
    "9e3f6a2b-1c4d-4e8f-b7a6-5d2c1b0a9f87",
    "c4a8e2f6-7b3d-4c1e-8f9a-0b6d5e4c3a21",
];

/// One record: tenant, id, CreationTime.
struct Record {
    tenant: usize,
    id: String,
    created: String,
}

pub async fn run(n: usize) -> anyhow::Result<Vec<Row>> {
    println!(
        "6. dedup-memory: Redis bytes per record remembered, {n} records, {} tenants, a day of CreationTimes",
        TENANTS.len()
    );
    let redis = SoakRedis::start().context("start the section's own redis-server")?;
    let url = redis.url();
    let client = redis::Client::open(url.as_str())?;
    let mut c = client.get_multiplexed_async_connection().await?;
    // The lowest listpack limit the design allows for (see the module doc).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("hash-max-listpack-entries")
        .arg(128)
        .query_async(&mut c)
        .await?;
    let limits: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hash-max-listpack-*")
        .query_async(&mut c)
        .await?;
    println!("   private redis-server {url}; {}", limits.join(" "));
    let tenants: Vec<TenantId> = TENANTS
        .iter()
        .map(|t| TenantId::parse(t).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let warm = records(2_000);
    let records = records(n);
    let store = Store::new(&url, "o365relay:")?;

    // A warm-up of every path (scripts loaded, buffers grown), then an empty Redis.
    publish_all(&store, &mut c, &tenants, &warm, true).await?;
    publish_all(&store, &mut c, &tenants, &warm, false).await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;

    // The compact scheme, then every record again.
    let base = used_memory(&mut c).await?;
    let first = publish_all(&store, &mut c, &tenants, &records, true).await?;
    let compact = used_memory(&mut c).await? - base;
    let census = census(&mut c).await?;
    let again = publish_all(&store, &mut c, &tenants, &records, true).await?;
    if first.done.published != n as u64 || again.done.duplicates != n as u64 {
        bail!(
            "expected {n} published then {n} duplicates, got {:?} then {:?}",
            first.done,
            again.done
        );
    }
    let per_record = compact as f64 / n as f64;
    println!(
        "   compact: used_memory +{:.1} MB = {per_record:.1} B per record; {census}",
        compact as f64 / 1e6
    );
    println!("   compact, new records: {first}");
    println!("   compact, the same records again (duplicates): {again}");

    // A key per record (the previous version's scheme), for comparison.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await?;
    let base = used_memory(&mut c).await?;
    let old = publish_all(&store, &mut c, &tenants, &records, false).await?;
    let per_key = used_memory(&mut c).await? - base;
    if old.done.published != n as u64 {
        bail!(
            "expected {n} published with a key per record, got {:?}",
            old.done
        );
    }
    let per_key_record = per_key as f64 / n as f64;
    println!(
        "   a key per record: used_memory +{:.1} MB = {per_key_record:.1} B per record; new records: {old}",
        per_key as f64 / 1e6
    );
    drop(redis);

    let met = if per_record <= TARGET_BYTES {
        "(met)"
    } else {
        "(missed)"
    };
    Ok(vec![
        Row::new(
            "8 dedup-memory",
            format!("Redis bytes per record remembered ({n} records)"),
            format!("{per_record:.1} B"),
        )
        .ceiling(format!("key per record {per_key_record:.0} B"))
        .target(format!("≤ {TARGET_BYTES} B {met}")),
        Row::new(
            "8 dedup-memory",
            "Redis CPU per new / duplicate record",
            format!("{:.1} / {:.1} µs", first.redis_us(), again.redis_us()),
        )
        .ceiling(format!("key per record {:.1} µs", old.redis_us())),
    ])
}

/// `n` records over the tenants, each tenant's in CreationTime order (as blobs bring them).
fn records(n: usize) -> Vec<Record> {
    let day = (chrono::Utc::now() - chrono::Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight")
        .and_utc();
    let mut out: Vec<(usize, u32, String)> = (0..n)
        .map(|i| {
            let id = uuid::Uuid::new_v4();
            let second = (uuid::Uuid::new_v4().as_u128() % 86_400) as u32;
            (i % TENANTS.len(), second, id.hyphenated().to_string())
        })
        .collect();
    out.sort_by_key(|(t, s, _)| (*t, *s));
    out.into_iter()
        .map(|(tenant, second, id)| Record {
            tenant,
            id,
            created: (day + chrono::Duration::seconds(i64::from(second)))
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string(),
        })
        .collect()
}

/// One pass over the records: what `publish_once` answered, how long it took, and how much
/// CPU Redis spent on it.
struct Pass {
    done: PublishedOnce,
    records: usize,
    elapsed: Duration,
    redis_cpu: Duration,
}

impl Pass {
    /// Redis CPU µs per record.
    fn redis_us(&self) -> f64 {
        self.redis_cpu.as_secs_f64() * 1e6 / self.records.max(1) as f64
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} records/s, one batch of {BATCH} at a time; Redis CPU {:.1} µs per record",
            self.records as f64 / self.elapsed.as_secs_f64(),
            self.redis_us()
        )
    }
}

/// Offers every record to `publish_once` in batches of one tenant; with `created` false the
/// records go without their CreationTime (a key per record).
async fn publish_all(
    store: &Store,
    c: &mut redis::aio::MultiplexedConnection,
    tenants: &[TenantId],
    records: &[Record],
    created: bool,
) -> anyhow::Result<Pass> {
    let policy = ClaimPolicy {
        owner: "bench",
        claim_ttl: Duration::from_secs(20),
        done_ttl: Duration::from_secs(86_400),
        give_up_after: Duration::from_secs(30),
    };
    let mut done = PublishedOnce::default();
    let cpu0 = redis_cpu(c).await?;
    let t0 = Instant::now();
    for batch in records.chunk_by(|a, b| a.tenant == b.tenant) {
        for batch in batch.chunks(BATCH) {
            let got = store
                .dedup()
                .publish_once(
                    &tenants[batch[0].tenant],
                    batch.iter().collect(),
                    |r| RecordKey {
                        id: &r.id,
                        created: if created { &r.created } else { "" },
                    },
                    policy,
                    |_| async { Ok::<(), std::convert::Infallible>(()) },
                )
                .await
                .map_err(|e| anyhow::anyhow!("publish_once: {e}"))?;
            done.published += got.published;
            done.duplicates += got.duplicates;
        }
    }
    let elapsed = t0.elapsed();
    let redis_cpu = redis_cpu(c).await?.saturating_sub(cpu0);
    Ok(Pass {
        done,
        records: records.len(),
        elapsed,
        redis_cpu,
    })
}

/// `INFO` fields as numbers.
async fn info(
    c: &mut redis::aio::MultiplexedConnection,
    section: &str,
    fields: &[&str],
) -> anyhow::Result<Vec<f64>> {
    let info: String = redis::cmd("INFO").arg(section).query_async(c).await?;
    fields
        .iter()
        .map(|f| {
            info.lines()
                .find_map(|l| l.strip_prefix(f).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("INFO {section} has no {f}"))
        })
        .collect()
}

/// CPU the Redis server has used (user + system, its main thread included).
async fn redis_cpu(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<Duration> {
    let v = info(c, "cpu", &["used_cpu_user", "used_cpu_sys"]).await?;
    Ok(Duration::from_secs_f64(v.iter().sum()))
}

async fn used_memory(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<i64> {
    Ok(info(c, "memory", &["used_memory"]).await?[0] as i64)
}

/// Counts the keys by kind: leaves (listpack or hashtable; their fields less the sentinel
/// each holds, batch entries included), bucket roots (`dedup:…` strings), others.
const CENSUS: &str = r#"
local leaves, big, roots, other, fields = 0, 0, 0, 0, 0
for _, k in ipairs(redis.call('KEYS', '*')) do
  local t = redis.call('TYPE', k)['ok']
  if t == 'hash' then
    fields = fields + redis.call('HLEN', k) - 1
    if redis.call('OBJECT', 'ENCODING', k) == 'listpack' then leaves = leaves + 1 else big = big + 1 end
  elseif t == 'string' and string.find(k, 'dedup:', 1, true) then roots = roots + 1
  else other = other + 1 end
end
return {leaves, big, roots, other, fields}
"#;

async fn census(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<String> {
    let v: Vec<i64> = redis::Script::new(CENSUS).invoke_async(c).await?;
    let [leaves, big, roots, other, fields] = v[..] else {
        bail!("census answered {v:?}");
    };
    Ok(format!(
        "{leaves} listpack leaves (avg {:.0} records), {big} hashtable leaves, {roots} bucket roots, {other} other keys",
        fields as f64 / (leaves + big).max(1) as f64
    ))
}
