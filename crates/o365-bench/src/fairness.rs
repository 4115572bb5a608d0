//! Section 6, fairness between tenants: tenant A's backlog far above its quota is
//! in the work queue when tenant B starts notifying one blob a second. Measured: B's latency
//! from its notification (the POST to the webhook) to its blob's last record on the exchange,
//! and A's blobs relayed per minute against A's quota — the relay must serve B within seconds
//! and still spend all of A's budget.
//!
//! One relay process with its defaults but `O365_QUOTA_PER_MINUTE`; blobs of
//! [`RECORDS_PER_BLOB`] records (below the size at which the simulator repeats records across
//! blobs, so every blob's records all arrive). The sink consumer stamps each record as it
//! arrives in this process.

use crate::harness::{start_sim, Ctx, RelayProc, TENANT_A, TENANT_B};
use crate::report::{percentile, Row};
use anyhow::bail;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records in every blob of A and B.
const RECORDS_PER_BLOB: usize = 5;
/// How long B's last blobs may take after B's last notification before the section fails.
const B_DRAIN: Duration = Duration::from_secs(120);

/// The sizes of a run.
pub struct Load {
    /// A's backlog (blobs).
    pub a_blobs: usize,
    /// A's (and B's) `O365_QUOTA_PER_MINUTE`.
    pub quota: u32,
    /// B notifies one blob a second for this many seconds.
    pub b_secs: u64,
    /// A's relayed blobs are counted over this many consecutive minutes from its notification
    /// (the first includes the burst its empty budget admits at once; the next ones are its
    /// steady pace). Zero: counted over B's seconds only (quick mode).
    pub a_minutes: u32,
}

/// Each blob's records seen so far on the exchange and when its last one arrived.
#[derive(Default)]
struct Arrivals {
    per_blob: HashMap<String, (usize, Instant)>,
}

impl Arrivals {
    /// When every record of `content_id` had arrived.
    fn complete(&self, content_id: &str) -> Option<Instant> {
        self.per_blob
            .get(content_id)
            .filter(|(n, _)| *n >= RECORDS_PER_BLOB)
            .map(|(_, at)| *at)
    }
}

pub async fn run(ctx: &Ctx, load: Load) -> anyhow::Result<Vec<Row>> {
    let Load {
        a_blobs,
        quota,
        b_secs,
        a_minutes,
    } = load;
    println!(
        "6. fairness: tenant A {a_blobs} blobs queued, quota {quota}/min; tenant B one blob a second for {b_secs} s; {RECORDS_PER_BLOB} records per blob"
    );
    let sim = start_sim(&[TENANT_A, TENANT_B], RECORDS_PER_BLOB).await?;
    let section = ctx.section("fairness", &sim);
    let result = async {
        let sink = ctx.sink(&section).await?;
        let relay = RelayProc::spawn(
            ctx,
            &section,
            &[("O365_QUOTA_PER_MINUTE", quota.to_string())],
        )
        .await?;
        let settings = ctx.relay_settings(&section, &[])?;
        println!(
            "   relay: O365_WORKER_CONCURRENCY {}, O365_TENANT_CONCURRENCY {} (defaults)",
            settings.worker_concurrency, settings.tenant_concurrency
        );
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let mut consumer = sink.consume().await?;
        let stamping = {
            let arrivals = arrivals.clone();
            tokio::spawn(async move {
                while let Some(Ok(d)) = consumer.next().await {
                    let now = Instant::now();
                    let Some(blob) = test_support::header(&d.properties, "o365-content-id") else {
                        continue;
                    };
                    let mut a = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                    let entry = a.per_blob.entry(blob).or_insert((0, now));
                    entry.0 += 1;
                    entry.1 = now;
                }
            })
        };

        // A's backlog: notified as Microsoft would, 100 blobs a POST.
        let mut a = Vec::with_capacity(a_blobs);
        for (i, ct) in o365_sim::CONTENT_TYPES.iter().enumerate() {
            let k = a_blobs / 5 + usize::from(i < a_blobs % 5);
            a.extend(sim.publish(TENANT_A, ct, k, None).await);
        }
        let t_a = Instant::now();
        ctx.notify(&[&relay], &a).await?;
        println!(
            "   A's {a_blobs} notifications accepted in {:.1} s",
            t_a.elapsed().as_secs_f64()
        );

        // B: one blob a second.
        let t_b = Instant::now();
        let mut b = Vec::new();
        for i in 0..b_secs {
            tokio::time::sleep_until((t_b + Duration::from_secs(i)).into()).await;
            let blob = sim
                .publish(TENANT_B, "Audit.SharePoint", 1, None)
                .await
                .remove(0);
            let at = Instant::now();
            ctx.notify(&[&relay], std::slice::from_ref(&blob)).await?;
            b.push((blob.content_id, at));
        }
        let deadline = Instant::now() + B_DRAIN;
        let latencies = loop {
            let done: Option<Vec<Duration>> = {
                let arr = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                b.iter()
                    .map(|(id, at)| arr.complete(id).map(|t| t.saturating_duration_since(*at)))
                    .collect()
            };
            if let Some(l) = done {
                break l;
            }
            if Instant::now() > deadline {
                let arr = arrivals.lock().unwrap_or_else(|e| e.into_inner());
                let n = b.iter().filter(|(id, _)| arr.complete(id).is_some()).count();
                bail!("only {n} of B's {} blobs arrived within {B_DRAIN:?} of the last", b.len());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // A's blobs per window: the minutes from A's notification, or B's seconds.
        let windows: Vec<(String, Instant, Duration)> = if a_minutes == 0 {
            vec![(
                format!("during B's {b_secs} s"),
                t_b,
                Duration::from_secs(b_secs),
            )]
        } else {
            (0..a_minutes)
                .map(|m| {
                    (
                        format!("minute {}", m + 1),
                        t_a + Duration::from_secs(60 * u64::from(m)),
                        Duration::from_secs(60),
                    )
                })
                .collect()
        };
        let end = windows
            .iter()
            .map(|(_, from, len)| *from + *len)
            .max()
            .expect("a window");
        tokio::time::sleep_until(end.into()).await;
        let a_rates: Vec<(String, usize, f64)> = {
            let arr = arrivals.lock().unwrap_or_else(|e| e.into_inner());
            windows
                .iter()
                .map(|(name, from, len)| {
                    let n = a
                        .iter()
                        .filter_map(|x| arr.complete(&x.content_id))
                        .filter(|t| *t >= *from && *t < *from + *len)
                        .count();
                    (name.clone(), n, n as f64 * 60.0 / len.as_secs_f64())
                })
                .collect()
        };
        let a_done = {
            let arr = arrivals.lock().unwrap_or_else(|e| e.into_inner());
            a.iter()
                .filter(|x| arr.complete(&x.content_id).is_some())
                .count()
        };
        let metrics = relay.metrics().await.unwrap_or_default();
        stamping.abort();
        sink.close().await;
        relay.stop().await;

        let mut sorted = latencies.clone();
        sorted.sort();
        let (p50, p99, max) = (
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            sorted.last().copied().unwrap_or_default(),
        );
        let first: Vec<String> = latencies
            .iter()
            .take(5)
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect();
        println!(
            "   B: {} blobs, notification → last record on the exchange: p50 {}, p99 {}, max {}; first five {} s",
            latencies.len(),
            secs(p50),
            secs(p99),
            secs(max),
            first.join(", ")
        );
        for (name, n, per_min) in &a_rates {
            println!("   A, {name}: {n} blobs relayed = {per_min:.0}/min (quota {quota}/min)");
        }
        println!(
            "   A: {a_done} of {a_blobs} blobs relayed when measuring stopped; most Management API calls in any 60 s: A {}, B {}; deferred: quota {}, tenant_busy {}",
            sim.max_calls_per_minute(TENANT_A),
            sim.max_calls_per_minute(TENANT_B),
            metric(&metrics, r#"o365_deferred_total{reason="quota"}"#),
            metric(&metrics, r#"o365_deferred_total{reason="tenant_busy"}"#),
        );

        let met = |ok: bool| if ok { "(met)" } else { "(missed)" };
        let mut rows = vec![
            Row::new("6 fairness", "B notification → exchange p50", secs(p50)),
            Row::new("6 fairness", "B notification → exchange p99", secs(p99))
                .target(format!("≤ 5 s {}", met(p99 <= Duration::from_secs(5)))),
        ];
        // The steady pace is what "uses its whole quota" means: the last window measured.
        if let Some((name, _, per_min)) = a_rates.last() {
            rows.push(
                Row::new(
                    "6 fairness",
                    format!("A blobs/min, {name} ({a_blobs} queued)"),
                    format!("{per_min:.0}"),
                )
                .ceiling(format!("{quota} (quota)"))
                .ratio(per_min / f64::from(quota), 0.95),
            );
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    section.cleanup().await;
    sim.stop().await;
    result
}

/// Milliseconds below a second, else seconds.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        crate::report::ms(d)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A counter's value in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
