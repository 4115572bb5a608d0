//! Section 1, webhook ingest: 64 keep-alive connections post single-blob notifications to the
//! relay's `/webhook` (workers off), against the ceiling of bare lapin publishing the same work
//! messages with confirms to a quorum queue, 64 in flight.

use crate::harness::{start_sim, Ctx, RelayProc, CLIENT_ID, TENANT_A};
use crate::procfs::{rabbit_pid, CpuSnap};
use crate::report::{ms, percentile, Row};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{Connection, ConnectionProperties};
use o365_relay::domain::{ContentId, ContentType, Source, TenantId, WorkItem};
use o365_sim::Simulator;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent webhook connections / publishes in flight.
const CONCURRENCY: usize = 64;

/// What one load run achieved.
struct Load {
    rate: f64,
    p50: Duration,
    p99: Duration,
    n: usize,
    errors: u64,
}

fn summarise(mut lat: Vec<Duration>, elapsed: Duration, errors: u64) -> Load {
    lat.sort();
    Load {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        n: lat.len(),
        errors,
    }
}

/// The notification Microsoft would send for one new SharePoint blob of tenant A.
fn single_blob_notification(sim: &Simulator) -> String {
    let blob = sim.announced_blob(TENANT_A, ContentType::SharePoint.as_str());
    o365_sim::notification_body(CLIENT_ID, std::slice::from_ref(&blob))
}

/// One keep-alive HTTP/1.1 connection posting notifications until `end`: a lean client
/// (one write per request, minimal response parsing), because on a 2-core machine the load
/// generator's CPU is taken from the relay under test (reqwest cost ~56 µs per request here).
async fn post_loop(
    addr: std::net::SocketAddr,
    auth: String,
    sim: Simulator,
    end: Instant,
) -> (Vec<Duration>, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = vec![0u8; 8192];
    let mut req = Vec::with_capacity(2048);
    while Instant::now() < end {
        let s = match conn.as_mut() {
            Some(s) => s,
            None => match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn.insert(s)
                }
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let body = single_blob_notification(&sim);
        req.clear();
        req.extend_from_slice(
            format!(
                "POST /webhook HTTP/1.1\r\nHost: {addr}\r\nWebhook-AuthID: {auth}\r\nContent-Type: application/json; utf-8\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        req.extend_from_slice(body.as_bytes());
        let t0 = Instant::now();
        let ok = async {
            s.write_all(&req).await.ok()?;
            let mut have = 0;
            loop {
                if have == buf.len() {
                    buf.resize(buf.len() * 2, 0);
                }
                let n = s.read(&mut buf[have..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
                let Some(head) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let headers = std::str::from_utf8(&buf[..head]).ok()?;
                let len: usize = headers
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if have >= head + 4 + len {
                    return Some(headers.starts_with("HTTP/1.1 200"));
                }
            }
        }
        .await;
        match ok {
            Some(true) => lat.push(t0.elapsed()),
            Some(false) => errors += 1,
            None => {
                errors += 1;
                conn = None;
            }
        }
    }
    (lat, errors)
}

/// 64 connections posting single-blob notifications for `dur`.
async fn webhook_load(relay: &RelayProc, sim: &Simulator, dur: Duration) -> Load {
    let addr: std::net::SocketAddr = relay
        .public_url
        .trim_start_matches("http://")
        .parse()
        .expect("relay address");
    let started = Instant::now();
    let end = started + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        tasks.spawn(post_loop(addr, relay.auth_id.clone(), sim.clone(), end));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    while let Some(Ok((mut l, e))) = tasks.join_next().await {
        lat.append(&mut l);
        errors += e;
    }
    summarise(lat, started.elapsed(), errors)
}

/// The ceiling: the same work messages (the relay's own `work_queue::encode`), published with
/// confirms by bare lapin to a quorum queue, 64 in flight (64 publish-then-await-confirm loops
/// on one channel, as the relay's webhook handlers share its one publisher channel).
async fn bare_work_publish(
    ctx: &Ctx,
    queue: &str,
    sim: &Simulator,
    dur: Duration,
) -> anyhow::Result<Load> {
    let conn = Connection::connect(&ctx.amqp_url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let tenant = TenantId::parse(TENANT_A).map_err(|e| anyhow::anyhow!(e))?;
    let started = Instant::now();
    let end = started + dur;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (ch, queue, sim, tenant, errors) = (
            ch.clone(),
            queue.to_string(),
            sim.clone(),
            tenant.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let blob = sim.announced_blob(TENANT_A, ContentType::SharePoint.as_str());
                let Ok(content_id) = ContentId::parse(&blob.content_id) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let item = WorkItem {
                    tenant_id: tenant.clone(),
                    content_type: ContentType::SharePoint,
                    content_uri: blob.content_uri,
                    content_id,
                    content_created: Some(chrono::Utc::now().to_rfc3339()),
                    content_expiration: Some(chrono::Utc::now().to_rfc3339()),
                    source: Source::Webhook,
                };
                let t0 = Instant::now();
                let ok = match o365_relay::pipeline::work_queue::encode(&item) {
                    Ok((body, props)) => match ch
                        .basic_publish(
                            "".into(),
                            queue.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &body,
                            props,
                        )
                        .await
                    {
                        Ok(c) => matches!(c.await, Ok(lapin::Confirmation::Ack(None))),
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                if ok {
                    lat.push(t0.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        });
    }
    let mut lat = Vec::new();
    while let Some(Ok(mut l)) = tasks.join_next().await {
        lat.append(&mut l);
    }
    let load = summarise(lat, started.elapsed(), errors.load(Ordering::Relaxed));
    let _ = conn.close(200, "ok".into()).await;
    Ok(load)
}

pub async fn run(ctx: &Ctx, dur: Duration, rounds: usize) -> anyhow::Result<Vec<Row>> {
    println!(
        "1. webhook ingest: {CONCURRENCY} connections, single-blob notifications, {:.0} s per measurement, {rounds} round(s)",
        dur.as_secs_f64()
    );
    let sim = start_sim(&[TENANT_A], 1).await?;
    let mut section = ctx.section("ingest", &sim);
    let ceiling_queue = section.extra_queue("ceiling");
    let result = async {
        // The exchange and its sink queue, as in the other sections (the workers are off).
        ctx.sink(&section).await?.close().await;
        ctx.declare_queue(&ceiling_queue, "quorum").await?;
        let relay =
            RelayProc::spawn(ctx, &section, &[("O365_ENABLE_WORKERS", "false".into())]).await?;
        // Warm up both paths (connections, JIT-free but lazy allocations, queue leaders).
        let warm = Duration::from_millis(if ctx.quick { 200 } else { 1000 });
        webhook_load(&relay, &sim, warm).await;
        bare_work_publish(ctx, &ceiling_queue, &sim, warm).await?;
        let (mut best_relay, mut best_ceiling): (Option<Load>, Option<Load>) = (None, None);
        let mut cpu = 0.0;
        let mut accepted = 0usize;
        let rabbit = rabbit_pid();
        for round in 1..=rounds {
            let s0 = CpuSnap::take(None, rabbit);
            let c = bare_work_publish(ctx, &ceiling_queue, &sim, dur).await?;
            let s1 = CpuSnap::take(None, rabbit);
            let cpu0 = relay.cpu_secs();
            let s2 = CpuSnap::take(Some(relay.pid), rabbit);
            let r = webhook_load(&relay, &sim, dur).await;
            let s3 = CpuSnap::take(Some(relay.pid), rabbit);
            cpu += relay.cpu_secs() - cpu0;
            accepted += r.n;
            println!(
                "   round {round}: relay {:.0}/s (p50 {}, p99 {}, {} errors) | bare lapin {:.0}/s (p50 {}, p99 {}, {} errors)",
                r.rate, ms(r.p50), ms(r.p99), r.errors, c.rate, ms(c.p50), ms(c.p99), c.errors
            );
            println!(
                "     relay path   {}",
                s2.per_op(&s3, r.n as f64, "HTTP load generator")
            );
            println!(
                "     ceiling path {}",
                s0.per_op(&s1, c.n as f64, "bare lapin publisher")
            );
            if best_relay.as_ref().is_none_or(|b| r.rate > b.rate) {
                best_relay = Some(r);
            }
            if best_ceiling.as_ref().is_none_or(|b| c.rate > b.rate) {
                best_ceiling = Some(c);
            }
        }
        relay.stop().await;
        let (r, c) = (best_relay.expect("rounds"), best_ceiling.expect("rounds"));
        if r.errors > 0 {
            println!("   warning: {} webhook requests were not answered 200", r.errors);
        }
        println!(
            "   relay CPU {:.2} s per 10k notifications",
            cpu / accepted.max(1) as f64 * 10_000.0
        );
        Ok::<_, anyhow::Error>(vec![
            Row::new("1 ingest", "notifications/s (64 conns)", format!("{:.0}", r.rate))
                .ceiling(format!("{:.0}", c.rate))
                .ratio(r.rate / c.rate, 0.8),
            Row::new("1 ingest", "latency p50", ms(r.p50)).ceiling(ms(c.p50)),
            Row::new("1 ingest", "latency p99", ms(r.p99)).ceiling(ms(c.p99)),
        ])
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
