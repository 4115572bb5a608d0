//! Section 1, webhook ingest: 64 keep-alive connections post single-blob notifications to the
//! relay's `/webhook` (workers off), against the same-path ceiling — a minimal webhook
//! ([`crate::minimal`]) behind the same load generator, publishing each blob persistent with
//! confirms to a quorum queue — and, for reference, bare lapin publishing the same work messages
//! with confirms to a quorum queue, 64 in flight. Rounds alternate which webhook goes first;
//! the table reports medians.

use crate::harness::{start_sim, Ctx, RelayProc, CLIENT_ID, TENANT_A};
use crate::minimal::MinimalProc;
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

/// 64 connections posting single-blob notifications to `addr` for `dur`.
async fn webhook_load(
    addr: std::net::SocketAddr,
    auth: &str,
    sim: &Simulator,
    dur: Duration,
) -> Load {
    let started = Instant::now();
    let end = started + dur;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        tasks.spawn(post_loop(addr, auth.to_string(), sim.clone(), end));
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

/// The median of `v` (the mean of the middle two when even); 0 when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One side of a round: its load and CPU per request (its own process, the load generator or
/// publisher in this process, RabbitMQ).
struct Side {
    load: Load,
    own_us: f64,
    line: String,
}

/// Which measurement of a round.
#[derive(Clone, Copy)]
enum Which {
    Relay,
    Minimal,
    Bare,
}

pub async fn run(ctx: &Ctx, dur: Duration, rounds: usize) -> anyhow::Result<Vec<Row>> {
    println!(
        "1. webhook ingest: {CONCURRENCY} connections, single-blob notifications, {:.0} s per measurement, {rounds} round(s) of relay / minimal webhook (alternating order) then bare lapin",
        dur.as_secs_f64()
    );
    let sim = start_sim(&[TENANT_A], 1).await?;
    let mut section = ctx.section("ingest", &sim);
    let ceiling_queue = section.extra_queue("ceiling");
    let minimal_queue = section.extra_queue("minimal");
    let result = async {
        // The exchange and its sink queue, as in the other sections (the workers are off).
        ctx.sink(&section).await?.close().await;
        ctx.declare_queue(&ceiling_queue, "quorum").await?;
        ctx.declare_queue(&minimal_queue, "quorum").await?;
        let relay =
            RelayProc::spawn(ctx, &section, &[("O365_ENABLE_WORKERS", "false".into())]).await?;
        let minimal = MinimalProc::spawn(ctx, &minimal_queue).await?;
        let relay_addr: std::net::SocketAddr = relay
            .public_url
            .trim_start_matches("http://")
            .parse()
            .expect("relay address");
        // Warm up every path (connections, lazy allocations, queue leaders).
        let warm = Duration::from_millis(if ctx.quick { 200 } else { 1000 });
        webhook_load(relay_addr, &relay.auth_id, &sim, warm).await;
        webhook_load(minimal.addr, &relay.auth_id, &sim, warm).await;
        bare_work_publish(ctx, &ceiling_queue, &sim, warm).await?;
        let rabbit = rabbit_pid();
        let mut relays: Vec<Side> = Vec::new();
        let mut minimals: Vec<Side> = Vec::new();
        let mut bares: Vec<Side> = Vec::new();
        for round in 1..=rounds {
            let order = if round % 2 == 1 {
                [Which::Minimal, Which::Relay, Which::Bare]
            } else {
                [Which::Relay, Which::Minimal, Which::Bare]
            };
            for which in order {
                match which {
                    Which::Relay => {
                        ctx.purge_queue(&section.names.work_queue).await?;
                        let s0 = CpuSnap::take(Some(relay.pid), rabbit);
                        let load = webhook_load(relay_addr, &relay.auth_id, &sim, dur).await;
                        let s1 = CpuSnap::take(Some(relay.pid), rabbit);
                        relays.push(Side {
                            own_us: s0.child_us(&s1, load.n as f64),
                            line: s0.per_op_named(&s1, load.n as f64, "relay", "HTTP load generator"),
                            load,
                        });
                    }
                    Which::Minimal => {
                        ctx.purge_queue(&minimal_queue).await?;
                        let s0 = CpuSnap::take(Some(minimal.pid), rabbit);
                        let load = webhook_load(minimal.addr, &relay.auth_id, &sim, dur).await;
                        let s1 = CpuSnap::take(Some(minimal.pid), rabbit);
                        minimals.push(Side {
                            own_us: s0.child_us(&s1, load.n as f64),
                            line: s0.per_op_named(
                                &s1,
                                load.n as f64,
                                "minimal webhook",
                                "HTTP load generator",
                            ),
                            load,
                        });
                    }
                    Which::Bare => {
                        ctx.purge_queue(&ceiling_queue).await?;
                        let s0 = CpuSnap::take(None, rabbit);
                        let load = bare_work_publish(ctx, &ceiling_queue, &sim, dur).await?;
                        let s1 = CpuSnap::take(None, rabbit);
                        bares.push(Side {
                            own_us: 0.0,
                            line: s0.per_op(&s1, load.n as f64, "bare lapin publisher"),
                            load,
                        });
                    }
                }
            }
            let (r, m, b) = (&relays[round - 1], &minimals[round - 1], &bares[round - 1]);
            println!(
                "   round {round}: relay {:.0}/s (p50 {}, p99 {}, {} errors) | minimal webhook {:.0}/s (p50 {}, p99 {}, {} errors) | bare lapin {:.0}/s (p50 {}, p99 {}) — relay / minimal {:.2}",
                r.load.rate, ms(r.load.p50), ms(r.load.p99), r.load.errors,
                m.load.rate, ms(m.load.p50), ms(m.load.p99), m.load.errors,
                b.load.rate, ms(b.load.p50), ms(b.load.p99),
                r.load.rate / m.load.rate.max(1e-9),
            );
            println!("     relay path           {}", r.line);
            println!("     minimal webhook path {}", m.line);
            println!("     bare lapin path      {}", b.line);
        }
        relay.stop().await;
        minimal.stop().await;
        let med = |v: &[Side], f: fn(&Side) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let rate = |s: &Side| s.load.rate;
        let (r_rate, m_rate, b_rate) = (med(&relays, rate), med(&minimals, rate), med(&bares, rate));
        let (r_us, m_us) = (med(&relays, |s| s.own_us), med(&minimals, |s| s.own_us));
        let same_round: Vec<f64> = relays
            .iter()
            .zip(&minimals)
            .map(|(r, m)| r.load.rate / m.load.rate.max(1e-9))
            .collect();
        let errors: u64 = relays.iter().map(|s| s.load.errors).sum();
        if errors > 0 {
            println!("   warning: {errors} webhook requests were not answered 200");
        }
        println!(
            "   medians of {rounds} round(s): relay {r_rate:.0}/s, minimal webhook {m_rate:.0}/s, bare lapin {b_rate:.0}/s; relay / minimal {:.2} (same-round ratios {}); CPU per request: relay {r_us:.1} µs, minimal webhook {m_us:.1} µs",
            r_rate / m_rate.max(1e-9),
            same_round.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", "),
        );
        let p = |v: &[Side], f: fn(&Load) -> Duration| {
            Duration::from_secs_f64(median(&v.iter().map(|s| f(&s.load).as_secs_f64()).collect::<Vec<_>>()))
        };
        Ok::<_, anyhow::Error>(vec![
            Row::new("1 ingest", "notifications/s vs minimal webhook (64 conns, median)", format!("{r_rate:.0}"))
                .ceiling(format!("{m_rate:.0}"))
                .ratio(r_rate / m_rate.max(1e-9), 0.9),
            Row::new("1 ingest", "CPU µs per request (own process, median)", format!("{r_us:.1}"))
                .ceiling(format!("{m_us:.1}")),
            Row::new("1 ingest", "notifications/s vs bare lapin (median)", format!("{r_rate:.0}"))
                .ceiling(format!("{b_rate:.0}"))
                .ratio_only(r_rate / b_rate.max(1e-9)),
            Row::new("1 ingest", "latency p50 (median)", ms(p(&relays, |l| l.p50))).ceiling(ms(p(&minimals, |l| l.p50))),
            Row::new("1 ingest", "latency p99 (median)", ms(p(&relays, |l| l.p99))).ceiling(ms(p(&minimals, |l| l.p99))),
        ])
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}
