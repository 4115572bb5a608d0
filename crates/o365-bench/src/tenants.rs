//! Section 7, a thousand tenants: what serving many tenants costs, each with little content.
//!
//! The simulator serves N generated tenants, all already subscribed to the relay's webhook
//! (onboarded earlier); they are registered in the relay's tenant registry, as consent would,
//! on a Redis server of the section's own (so its `INFO memory` holds nothing else). One blob
//! per tenant is published with its notification lost, so the first pass has real work.
//!
//! - **Reconciliation**: three `Reconciler::pass`es on the relay's parts in this process: the
//!   first (no checkpoints, tokens to fetch, N lost blobs to enqueue), the second (on schedule:
//!   what every later pass costs), the third as the second with every listing answered after
//!   [`LISTING_LATENCY`] (the simulator answers in about a millisecond; Microsoft does not).
//!   The simulator counts the calls per tenant and route.
//! - **Subscription keeping**: `Keeper::run_once` every interval for a few "hours" of runs (the
//!   interval shortened to seconds; the keeper's schedule is counted in runs, so calls per run
//!   at a short interval are calls per run at the default one, slightly more since a run's own
//!   duration weighs more against a short interval).
//! - Calls per tenant per hour = calls per pass × passes per hour (`O365_RECONCILE_INTERVAL`,
//!   15 min) + calls per keeper run × runs per hour (`O365_KEEPER_INTERVAL`, 5 min).
//! - **Memory**: Redis `used_memory` before and after (per tenant, with the keys by kind), and
//!   the RSS of a relay process serving the N tenants with every loop on, after its first pass.
//! - **Tokens**: requests per tenant over the whole run (well within one token lifetime).

use crate::harness::{start_sim_generated, Ctx, RelayProc, Section};
use crate::report::{mb, Row};
use crate::soak::{run_cmd, SoakRedis};
use anyhow::{bail, Context};
use futures_util::StreamExt;
use o365_relay::domain::TenantId;
use o365_relay::tenancy::tenants::{AddedBy, NewTenant};
use o365_sim::{Faults, PresetWebhook, Route, Simulator, CONTENT_TYPES};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the third pass adds to every listing: a guess at Microsoft's answer time (the
/// simulator's own is about a millisecond), so the pass shows what concurrency buys. A pass then
/// takes about tenants × 5 × latency / `O365_RECONCILE_CONCURRENCY`.
const LISTING_LATENCY: Duration = Duration::from_millis(250);

/// The relay's defaults the hourly figures are derived with.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(15 * 60);
const KEEPER_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Calls per tenant on the routes of reconciliation and subscription keeping, all tenants.
fn upkeep_calls(sim: &Simulator) -> BTreeMap<Route, u64> {
    [
        Route::ListContent,
        Route::ListSubscriptions,
        Route::Start,
        Route::Stop,
    ]
    .into_iter()
    .map(|r| (r, sim.route_calls_total(r)))
    .collect()
}

fn delta(after: &BTreeMap<Route, u64>, before: &BTreeMap<Route, u64>) -> BTreeMap<Route, u64> {
    after
        .iter()
        .map(|(r, n)| (*r, n - before.get(r).copied().unwrap_or(0)))
        .collect()
}

fn sum(calls: &BTreeMap<Route, u64>) -> u64 {
    calls.values().sum()
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Keys of the section's Redis by kind (the name up to its first `:` after the prefix), each
/// with its count and the `MEMORY USAGE` of one of them.
fn keys_by_kind(redis_port: &str, prefix: &str) -> anyhow::Result<Vec<(String, usize, u64)>> {
    let keys = run_cmd(
        "redis-cli",
        &["-h", "127.0.0.1", "-p", redis_port, "--scan"],
    )?;
    let mut kinds: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for key in keys.lines().filter(|k| k.starts_with(prefix)) {
        let rest = &key[prefix.len()..];
        let kind = rest.split(':').next().unwrap_or(rest).to_string();
        kinds.entry(kind).or_insert((0, key.to_string())).0 += 1;
    }
    let mut out = Vec::new();
    for (kind, (count, example)) in kinds {
        let usage = run_cmd(
            "redis-cli",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                redis_port,
                "memory",
                "usage",
                &example,
            ],
        )?;
        out.push((kind, count, usage.trim().parse().unwrap_or(0)));
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, n: usize) -> anyhow::Result<Vec<Row>> {
    println!(
        "6. tenants: {n} tenants × {} content types, one blob each, a Redis of the section's own",
        CONTENT_TYPES.len()
    );
    let redis = SoakRedis::start().context("starting the section's Redis (redis-server)")?;
    let sim = start_sim_generated(n).await?;
    let section = ctx.section("tenants", &sim);
    let result = measure(ctx, &section, &sim, &redis, n).await;
    section.cleanup().await;
    sim.stop().await;
    drop(redis);
    result
}

async fn measure(
    ctx: &Ctx,
    section: &Section,
    sim: &Simulator,
    redis: &SoakRedis,
    n: usize,
) -> anyhow::Result<Vec<Row>> {
    let public_port = test_support::free_port();
    let public_url = format!("http://127.0.0.1:{public_port}");
    // Already onboarded: every tenant's five subscriptions notify this relay's webhook.
    sim.subscribe_all(&PresetWebhook {
        address: format!("{public_url}/webhook"),
        auth_id: section.names.auth_id.clone(),
    });
    let tenants: Vec<TenantId> = sim
        .tenants()
        .iter()
        .map(|t| TenantId::parse(t).map_err(|e| anyhow::anyhow!(e)))
        .collect::<anyhow::Result<_>>()?;
    let env: Vec<(&str, String)> = vec![
        ("O365_REDIS_URL", redis.url()),
        ("O365_TENANTS", String::new()),
        ("O365_PUBLIC_URL", public_url.clone()),
        ("O365_LISTEN", format!("127.0.0.1:{public_port}")),
    ];
    let relay = ctx.relay_parts(section, &env)?;
    relay.broker.ensure_connected().await?;
    relay.store.ping().await?;
    let mem_empty = redis.used_memory()?;

    // Registered as consent registers them.
    let added: Vec<anyhow::Result<()>> = futures_util::stream::iter(&tenants)
        .map(|t| {
            let relay = relay.clone();
            async move {
                relay
                    .tenants
                    .add(t, AddedBy::Consent, None, NewTenant::Healthy)
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    added.into_iter().collect::<anyhow::Result<()>>()?;
    let mem_registered = redis.used_memory()?;

    // A little content, its notifications lost: the first pass finds and enqueues it.
    sim.set_faults(Faults {
        drop_notification: 1.0,
        ..Faults::default()
    });
    for (i, t) in sim.tenants().iter().enumerate() {
        sim.publish(t, CONTENT_TYPES[i % CONTENT_TYPES.len()], 1, Some(1))
            .await;
    }
    sim.set_faults(Faults::default());
    // The reconciler's windows end at `now` in whole seconds: let the newest blobs fall in.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Reconciliation: the first pass, then one on schedule, then one on schedule with every
    // listing answered after Microsoft-like latency.
    let reconciler = relay.reconciler();
    let mut passes = Vec::new();
    for which in ["first", "on schedule", "on schedule, slow listings"] {
        if passes.len() == 2 {
            sim.set_faults(Faults {
                slow: 1.0,
                slow_ms: LISTING_LATENCY.as_millis() as u64,
                apply_to_listing: true,
                ..Faults::default()
            });
        }
        let before = upkeep_calls(sim);
        let t0 = Instant::now();
        let stats = reconciler.pass().await;
        let wall = t0.elapsed();
        let calls = delta(&upkeep_calls(sim), &before);
        println!(
            "   reconciliation pass ({which}): {:.2} s, {} calls ({:.2} per tenant: {calls:?}); listed {}, missing {}, enqueued {}, errors {}",
            wall.as_secs_f64(),
            sum(&calls),
            sum(&calls) as f64 / n as f64,
            stats.listed,
            stats.missing,
            stats.enqueued,
            stats.errors
        );
        if stats.errors > 0 {
            bail!("reconciliation reported {} errors", stats.errors);
        }
        passes.push((wall, sum(&calls)));
    }
    sim.set_faults(Faults::default());
    let listings: Vec<u64> = sim
        .tenants()
        .iter()
        .map(|t| sim.route_calls(t, Route::ListContent))
        .collect();
    println!(
        "   subscriptions/content calls per tenant over the three passes: min {}, max {}",
        listings.iter().min().unwrap_or(&0),
        listings.iter().max().unwrap_or(&0)
    );
    let mem_reconciled = redis.used_memory()?;

    // Subscription keeping, the interval shortened to seconds. Runs 1-12 are the first sight
    // (everyone listed) and the first trust; from run 13 the re-checks are spread over runs.
    let mut keeper = relay.keeper();
    keeper.interval = Duration::from_secs(if ctx.quick { 1 } else { 2 });
    let runs = if ctx.quick { 26 } else { 48 };
    let steady_from = 13;
    let mut steady_calls = 0;
    let mut first_run = 0;
    let t_keeper = Instant::now();
    for r in 1..=runs {
        let before = upkeep_calls(sim);
        let run = keeper.run_once().await;
        let calls = sum(&delta(&upkeep_calls(sim), &before));
        if run.failed > 0 {
            bail!("keeper run {r}: {run:?}");
        }
        if r == 1 {
            first_run = calls;
        }
        if r >= steady_from {
            steady_calls += calls;
        }
        tokio::time::sleep(keeper.interval).await;
    }
    let steady_runs = (runs - steady_from + 1) as f64;
    let keeper_per_run = steady_calls as f64 / steady_runs / n as f64;
    println!(
        "   keeper: {runs} runs every {:?} in {:.0} s; first run {first_run} calls ({:.2} per tenant), runs {steady_from}-{runs} {steady_calls} calls ({keeper_per_run:.3} per tenant and run)",
        keeper.interval,
        t_keeper.elapsed().as_secs_f64(),
        first_run as f64 / n as f64,
    );
    let mem_kept = redis.used_memory()?;

    let passes_per_hour = 3600.0 / RECONCILE_INTERVAL.as_secs_f64();
    let runs_per_hour = 3600.0 / KEEPER_INTERVAL.as_secs_f64();
    let reconcile_per_hour = passes[1].1 as f64 / n as f64 * passes_per_hour;
    let keeper_per_hour = keeper_per_run * runs_per_hour;
    let per_hour = reconcile_per_hour + keeper_per_hour;
    println!(
        "   Management API calls per tenant per hour: {per_hour:.1} = reconciliation {reconcile_per_hour:.1} ({:.2} per pass × {passes_per_hour:.0} passes) + keeper {keeper_per_hour:.2} ({keeper_per_run:.3} per run × {runs_per_hour:.0} runs)",
        passes[1].1 as f64 / n as f64
    );

    let tokens_per_tenant: Vec<u64> = sim
        .tenants()
        .iter()
        .map(|t| sim.token_requests(t))
        .collect();
    let max_tokens = tokens_per_tenant.iter().copied().max().unwrap_or(0);
    let total_tokens: u64 = tokens_per_tenant.iter().sum();
    println!(
        "   token requests: {total_tokens} for {n} tenants (max {max_tokens} per tenant); token lifetime 1 h, run so far {:.0} s",
        t_keeper.elapsed().as_secs_f64()
            + passes.iter().map(|p| p.0.as_secs_f64()).sum::<f64>()
    );

    let per_tenant = |bytes: u64| bytes.saturating_sub(mem_empty) as f64 / n as f64;
    println!(
        "   Redis used_memory: empty {}, registered {} ({:.0} B/tenant), after the passes {} ({:.0} B/tenant), after the keeper {} ({:.0} B/tenant)",
        mb(mem_empty / 1024),
        mb(mem_registered / 1024),
        per_tenant(mem_registered),
        mb(mem_reconciled / 1024),
        per_tenant(mem_reconciled),
        mb(mem_kept / 1024),
        per_tenant(mem_kept),
    );
    let port = redis
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string();
    for (kind, count, usage) in keys_by_kind(&port, &section.names.prefix)? {
        println!("     {kind}: {count} keys, ~{usage} B each (MEMORY USAGE of one)");
    }

    // A relay process serving the N tenants with every loop on, as deployed.
    let sink = ctx.sink(section).await?;
    let counter = sink.counter().await?;
    let child_env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([
            ("O365_ENABLE_RECONCILER", "true".to_string()),
            ("O365_ENABLE_KEEPER", "true".to_string()),
        ])
        .collect();
    let child = RelayProc::spawn(ctx, section, &child_env).await?;
    let metrics_url = format!("{}/metrics", child.admin_url);
    let deadline = Instant::now() + Duration::from_secs(300);
    let metrics = loop {
        let text = ctx.get_text(&metrics_url).await.unwrap_or_default();
        if sample(&text, "o365_reconcile_passes_total").unwrap_or(0.0) >= 1.0 {
            break text;
        }
        if Instant::now() > deadline {
            bail!("the relay process did not finish a reconciliation pass within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The blobs the first pass enqueued are relayed by its workers meanwhile.
    counter.wait_for(n as u64, Duration::from_secs(300)).await?;
    let child_pass = sample(&metrics, "o365_reconcile_pass_duration_seconds").unwrap_or(0.0);
    let (hwm, rss) = child.memory_kb();
    let series = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let tenant_series = metrics.contains("tenant_id");
    println!(
        "   relay process with {n} tenants (every loop on): first pass {child_pass:.2} s, {n} blobs relayed; RSS {}, peak {}; /metrics {series} samples{}",
        mb(rss),
        mb(hwm),
        if tenant_series { ", WITH tenant_id series" } else { ", none per tenant" }
    );
    drop(counter);
    sink.close().await;
    child.stop().await;
    let tokens_after: u64 = sim.tenants().iter().map(|t| sim.token_requests(t)).sum();
    if tokens_after != total_tokens {
        println!(
            "   the relay process requested {} more tokens (its Redis cache had them)",
            tokens_after - total_tokens
        );
    }
    relay.broker.close().await;

    let pass_wall = passes[0].0.max(passes[1].0).as_secs_f64();
    let slow_pass = passes[2].0.as_secs_f64();
    let met = |ok: bool| if ok { "(met)" } else { "(missed)" };
    Ok(vec![
        Row::new(
            "7 tenants",
            format!("Management API calls per tenant per hour, {n} tenants"),
            format!(
                "{per_hour:.1} (reconcile {reconcile_per_hour:.1} + keeper {keeper_per_hour:.1})"
            ),
        )
        .target(format!("≤ 25 {}", met(per_hour <= 25.0))),
        Row::new(
            "7 tenants",
            format!("reconciliation pass, {n} tenants × 5 types"),
            format!(
                "{:.1} s first, {:.1} s on schedule, {child_pass:.1} s in the relay process",
                passes[0].0.as_secs_f64(),
                passes[1].0.as_secs_f64()
            ),
        )
        .target(format!("≤ 60 s {}", met(pass_wall.max(child_pass) <= 60.0))),
        Row::new(
            "7 tenants",
            format!(
                "reconciliation pass, {n} tenants, {} ms per listing",
                LISTING_LATENCY.as_millis()
            ),
            format!("{slow_pass:.1} s"),
        )
        .target(format!("≤ 60 s {}", met(slow_pass <= 60.0))),
        Row::new(
            "7 tenants",
            "Redis memory per tenant",
            format!("{:.0} B", per_tenant(mem_kept)),
        ),
        Row::new(
            "7 tenants",
            format!("relay RSS serving {n} tenants"),
            format!("{} (peak {})", mb(rss), mb(hwm)),
        ),
        Row::new(
            "7 tenants",
            "token requests per tenant per token lifetime",
            format!("{max_tokens}"),
        )
        .target(format!("1 {}", met(max_tokens == 1))),
        Row::new(
            "7 tenants",
            format!("/metrics samples, {n} tenants"),
            format!(
                "{series}{}",
                if tenant_series { " (per tenant!)" } else { "" }
            ),
        )
        .target(format!("no tenant series {}", met(!tenant_series))),
    ])
}
