//! Section 2, end to end: simulator blobs of 1,000 records notified to the relay's webhook,
//! until every distinct record is on a sink queue bound to the exchange; against the ceiling of
//! a bare confirmed publish of the same record bytes, with the properties and headers the
//! relay's own [`RecordSink`] gives them, in the relay's batches and worker concurrency. Rounds
//! alternate which side goes first; medians are reported. The relay runs on a redis-server of
//! the section's own, so `INFO cpu` over the relay's measurement is its Redis cost per record.

use crate::harness::{start_sim, Ctx, RelayProc, TENANT_A};
use crate::ingest::median;
use crate::procfs::{rabbit_pid, CpuSnap};
use crate::report::Row;
use crate::soak::SoakRedis;
use anyhow::bail;
use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use o365_relay::domain::{ContentId, Source, TenantId, WorkItem};
use o365_relay::pipeline::records::AuditRecord;
use o365_relay::pipeline::sink::RecordSink;
use o365_relay::pipeline::worker::BATCH;
use o365_sim::{SimBlob, CONTENT_TYPES};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records per simulator blob.
pub(crate) const PER_BLOB: usize = 1000;

/// A record as the relay publishes it: routing key, body, properties.
pub(crate) struct Prepared {
    routing_key: String,
    raw: Bytes,
    props: lapin::BasicProperties,
}

/// What the relay publishes for `blobs`: each distinct record once (the relay de-duplicates
/// across blobs), grouped per blob, with the relay's properties and headers.
/// `seen` spans rounds: the simulator repeats records of a round's last blobs in the next
/// round's first ones, and the relay (rightly) publishes those only once.
pub(crate) fn prepare(blobs: &[SimBlob], seen: &mut HashSet<String>) -> Vec<Vec<Prepared>> {
    blobs
        .iter()
        .map(|b| {
            b.records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    let rec = AuditRecord::parse(Bytes::from(r.clone()), i).ok()?;
                    if !seen.insert(rec.id.clone()) {
                        return None;
                    }
                    let item = WorkItem {
                        tenant_id: TenantId::parse(&b.tenant_id).ok()?,
                        content_type: b.content_type.parse().ok()?,
                        content_id: ContentId::parse(&b.content_id).ok()?,
                        content_uri: b.content_uri.clone(),
                        content_created: None,
                        content_expiration: None,
                        source: Source::Webhook,
                    };
                    Some(Prepared {
                        routing_key: RecordSink::routing_key(&item),
                        props: RecordSink::properties(&item, &rec),
                        raw: rec.raw,
                    })
                })
                .collect()
        })
        .collect()
}

/// The ceiling: bare confirmed publish of the same records to the same exchange, batches of
/// the relay's [`BATCH`] pipelined (publish all, then await all confirms), `concurrency` blobs
/// at a time on one channel — the relay's structure minus fetching, parsing and Redis.
/// Section 9 uses it as its reference line too.
pub(crate) async fn bare_record_publish(
    ctx: &Ctx,
    exchange: &str,
    blobs: Arc<Vec<Vec<Prepared>>>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let conn = Connection::connect(&ctx.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(blobs.len()) {
        let (ch, blobs, next, exchange) = (
            ch.clone(),
            blobs.clone(),
            next.clone(),
            exchange.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(blob) = blobs.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                for batch in blob.chunks(BATCH) {
                    let mut pending = Vec::with_capacity(batch.len());
                    for p in batch {
                        pending.push(
                            ch.basic_publish(
                                exchange.as_str().into(),
                                p.routing_key.as_str().into(),
                                BasicPublishOptions {
                                    mandatory: true,
                                    ..Default::default()
                                },
                                &p.raw,
                                p.props.clone(),
                            )
                            .await?,
                        );
                    }
                    for c in pending {
                        if !matches!(c.await?, lapin::Confirmation::Ack(None)) {
                            bail!("bare publish not confirmed");
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}

pub(crate) fn avg_record_bytes(blobs: &[SimBlob]) -> f64 {
    let (n, bytes) = blobs
        .iter()
        .flat_map(|b| &b.records)
        .fold((0usize, 0usize), |(n, s), r| (n + 1, s + r.len()));
    bytes as f64 / n.max(1) as f64
}

/// `used_cpu_sys + used_cpu_user` of a Redis server, in microseconds.
pub(crate) async fn redis_cpu_us(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(c).await?;
    let mut total = 0.0;
    for field in ["used_cpu_sys", "used_cpu_user"] {
        total += info
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| anyhow::anyhow!("INFO cpu has no {field}"))?;
    }
    Ok(total * 1e6)
}

/// One round's figures.
struct Round {
    relay_rate: f64,
    ceiling_rate: f64,
    relay_us: f64,
    redis_us: f64,
}

pub async fn run(ctx: &Ctx, n_blobs: usize, rounds: usize) -> anyhow::Result<Vec<Row>> {
    let sim = start_sim(&[TENANT_A], PER_BLOB).await?;
    let section = ctx.section("e2e", &sim);
    // A redis-server of the section's own, so that `INFO cpu` counts only this relay's work.
    let redis = tokio::task::spawn_blocking(SoakRedis::start)
        .await
        .map_err(|e| anyhow::anyhow!("the section's Redis did not start: {e}"))?;
    let result = async {
        let redis = redis?;
        let mut redis_conn = redis::Client::open(redis.url())?
            .get_multiplexed_async_connection()
            .await?;
        let env = [("O365_REDIS_URL", redis.url())];
        // The relay runs with its default worker concurrency; the ceiling uses the same.
        let concurrency = ctx.relay_settings(&section, &env)?.worker_concurrency;
        println!("2. end to end: {n_blobs} blobs × {PER_BLOB} records, worker concurrency {concurrency}, {rounds} round(s) alternating which side goes first; relay on a redis-server of the section's own ({})", redis.url());
        let sink = ctx.sink(&section).await?;
        let relay = RelayProc::spawn(ctx, &section, &env).await?;
        let counter = sink.counter().await?;
        let mut all: Vec<Round> = Vec::new();
        let mut avg = 0.0;
        let mut seen = HashSet::new();
        let rabbit = rabbit_pid();
        for round in 1..=rounds {
            // Fresh blobs every round (the relay would skip relayed ones).
            let mut blobs = Vec::new();
            for i in 0..n_blobs {
                let ct = CONTENT_TYPES[i % CONTENT_TYPES.len()];
                blobs.extend(sim.publish(TENANT_A, ct, 1, None).await);
            }
            avg = avg_record_bytes(&blobs);
            let prepared = Arc::new(prepare(&blobs, &mut seen));
            let want: u64 = prepared.iter().map(|b| b.len() as u64).sum();
            let mut ceiling = None;
            let mut relay_side = None;
            let ceiling_first = round % 2 == 1;
            for step in 0..2 {
                if (step == 0) == ceiling_first {
                    counter.reset();
                    let s0 = CpuSnap::take(None, rabbit);
                    let t0 = Instant::now();
                    bare_record_publish(ctx, &section.names.exchange, prepared.clone(), concurrency).await?;
                    let t1 = counter.wait_for(want, Duration::from_secs(300)).await?;
                    let s1 = CpuSnap::take(None, rabbit);
                    ceiling = Some((want as f64 / (t1 - t0).as_secs_f64(), s0.per_op(&s1, want as f64, "bare publisher + sink consumer")));
                } else {
                    // The relay: notify, then wait for every distinct record on the sink.
                    counter.reset();
                    let r0 = redis_cpu_us(&mut redis_conn).await?;
                    let s0 = CpuSnap::take(Some(relay.pid), rabbit);
                    let t0 = Instant::now();
                    ctx.notify(&[&relay], &blobs).await?;
                    let t1 = counter.wait_for(want, Duration::from_secs(600)).await?;
                    let s1 = CpuSnap::take(Some(relay.pid), rabbit);
                    let r1 = redis_cpu_us(&mut redis_conn).await?;
                    relay_side = Some((
                        want as f64 / (t1 - t0).as_secs_f64(),
                        s0.child_us(&s1, want as f64),
                        (r1 - r0) / want as f64,
                        s0.per_op(&s1, want as f64, "simulator + sink consumer"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (ceiling_rate, ceiling_line) = ceiling.expect("measured");
            let (relay_rate, relay_us, redis_us, relay_line) = relay_side.expect("measured");
            println!(
                "   round {round}: {want} distinct records (avg {avg:.0} B): relay {relay_rate:.0} rec/s | bare publish {ceiling_rate:.0} rec/s — ratio {:.2}; per record: relay {relay_us:.1} µs CPU, Redis {redis_us:.1} µs CPU (INFO cpu)",
                relay_rate / ceiling_rate
            );
            println!("     relay path   {relay_line}; Redis {redis_us:.1} µs");
            println!("     ceiling path {ceiling_line}");
            all.push(Round { relay_rate, ceiling_rate, relay_us, redis_us });
        }
        drop(counter);
        sink.close().await;
        relay.stop().await;
        let med = |f: fn(&Round) -> f64| median(&all.iter().map(f).collect::<Vec<_>>());
        let (rate, ceiling) = (med(|r| r.relay_rate), med(|r| r.ceiling_rate));
        let (relay_us, redis_us) = (med(|r| r.relay_us), med(|r| r.redis_us));
        let same_round: Vec<String> = all.iter().map(|r| format!("{:.2}", r.relay_rate / r.ceiling_rate)).collect();
        println!(
            "   medians of {rounds} round(s): relay {rate:.0} rec/s, bare publish {ceiling:.0} rec/s, ratio {:.2} (same-round {}); per record relay {relay_us:.1} µs + Redis {redis_us:.1} µs = {:.1} µs CPU (a peer collector: 48.5 µs)",
            rate / ceiling,
            same_round.join(", "),
            relay_us + redis_us
        );
        let met = |v: f64, max: f64| format!("≤ {max} µs {}", if v <= max { "(met)" } else { "(missed)" });
        Ok::<_, anyhow::Error>(vec![
            Row::new(
                "2 end to end",
                format!("records/s ({n_blobs}×{PER_BLOB}, ~{avg:.0} B, median)"),
                format!("{rate:.0}"),
            )
            .ceiling(format!("{ceiling:.0}"))
            .ratio(rate / ceiling, 0.9),
            Row::new("2 end to end", "relay CPU µs per record (median)", format!("{relay_us:.1}"))
                .target(met(relay_us, 25.0)),
            Row::new("2 end to end", "Redis CPU µs per new record (INFO cpu, median)", format!("{redis_us:.1}"))
                .target(met(redis_us, 10.0)),
            Row::new("2 end to end", "relay + Redis CPU µs per record", format!("{:.1}", relay_us + redis_us))
                .ceiling("48.5 (peer collector)")
                .ratio_only((relay_us + redis_us) / 48.5),
        ])
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
