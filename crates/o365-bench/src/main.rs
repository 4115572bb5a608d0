//! `o365-bench` — measures o365-relay against the physical ceiling of this machine, side by
//! side in the same run (BENCHMARKS.md). Eight sections, one module each:
//!
//! 1. [`ingest`]: webhook ingest vs the same-path ceiling, a minimal webhook ([`minimal`]: parse
//!    the array, publish each element with confirms, answer 200) behind the same load generator,
//!    and vs a bare lapin confirmed publisher (same messages, same queue type, same number in
//!    flight);
//! 2. [`e2e`]: end to end (simulator blob → records confirmed on the exchange) vs a bare
//!    confirmed, pipelined publish of the same record bytes; relay CPU and Redis CPU (`INFO cpu`
//!    of a redis-server of the section's own) per record;
//! 3. [`tokens`]: token efficiency, three relay processes sharing Redis, two tenants;
//! 4. [`memory`]: peak RSS relaying one 256 MB blob, and at idle;
//! 5. [`reconcile`]: reconciliation cost, 7 days × 5 content types, 10,000 blobs, 0 % and 10 %
//!    missing;
//! 6. [`fairness`]: tenant A's 5,000 queued blobs at a quota of 600/min while tenant B notifies
//!    one blob a second: B's notification-to-exchange latency, A's blobs per minute.
//! 7. [`tenants`]: a thousand tenants — Management API calls per tenant per hour for
//!    reconciliation and subscription keeping, a pass's wall time, Redis memory per tenant, the
//!    relay's RSS, token requests per tenant, /metrics size.
//! 8. [`dedup_memory`]: Redis bytes per record remembered by record de-duplication, 1,000,000
//!    records in a Redis of its own.
//! 9. [`scale`]: records/s end to end with 1, 2 and 3 relay processes, against standalone Redis
//!    and a Redis Cluster of 3 masters with a replica each; CPU per record of the relays, Redis
//!    and RabbitMQ, and what binds first; section 2's bare publish as the reference line.
//!
//! The relay under test runs as a child process ([`serve`]: `o365-bench` re-executes itself as
//! `o365-bench serve-relay`, the relay's own [`o365_relay::app::Application`], so a
//! `cargo run -p o365-bench` never measures a stale `o365-relay`; `--relay-bin PATH` uses a
//! real `o365-relay` binary instead). Its CPU and memory come from `/proc/<pid>` ([`procfs`]).
//! The simulator, the load generators, the ceilings and the sink consumer run in this process
//! ([`harness`], on the workspace's test harness `crates/test-support`). Everything it creates
//! (queues, exchanges, Redis keys, processes) is removed at the end; [`report`] prints the
//! table.
//!
//! `--quick` runs every section at tiny sizes in seconds (CI); there is no pass/fail on speed.

mod dedup_memory;
mod e2e;
mod fairness;
mod harness;
mod ingest;
mod memory;
mod minimal;
mod procfs;
mod reconcile;
mod report;
mod scale;
mod serve;
mod soak;
mod tenants;
mod tokens;

use anyhow::bail;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "o365-bench",
    about = "Benchmarks o365-relay against the machine's ceiling"
)]
struct Args {
    /// Tiny sizes, seconds in total (CI); no pass/fail on speed.
    #[arg(long)]
    quick: bool,
    /// Sections to run (comma-separated, 1-9).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,5,6,7,8,9")]
    sections: Vec<u8>,
    /// Run this `o365-relay` binary (`<bin> serve`) instead of re-executing o365-bench.
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// Seconds per ingest measurement (section 1); default 10 (quick: 1).
    #[arg(long)]
    ingest_secs: Option<f64>,
    /// Rounds in sections 1, 2 and 9 (default 3); sections 1 and 2 alternate which side goes
    /// first and report medians, section 9 the best round of each cell.
    #[arg(long)]
    rounds: Option<usize>,
    /// Blobs of 1,000 records in section 2; default 100 (quick: 4).
    #[arg(long)]
    e2e_blobs: Option<usize>,
    /// Blob size in MB for section 4; default 256 (quick: 8).
    #[arg(long)]
    blob_mb: Option<usize>,
    /// Blobs of 1,000 records per measurement in section 9 (6 measurements a round; quick: 2,
    /// one relay against each Redis); default 80 (quick: 6).
    #[arg(long)]
    scale_blobs: Option<usize>,
    /// Tenants in section 7; default 1,000 (quick: 50).
    #[arg(long)]
    tenants: Option<usize>,
    /// Records remembered in section 8; default 1,000,000 (quick: 20,000).
    #[arg(long)]
    dedup_records: Option<usize>,
    /// RabbitMQ.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Redis.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Internal: run the relay exactly as `o365-relay serve` does (configuration from the
    /// environment); also stops when stdin closes, so it never outlives the benchmark.
    #[command(hide = true)]
    ServeRelay,
    /// Internal: section 1's minimal webhook (parse the array, publish each element with
    /// confirms, answer 200); configured by `BENCH_MINIMAL_*`, stops when stdin closes.
    #[command(hide = true)]
    ServeMinimal,
    /// Three relay processes for N minutes under faults (RELIABILITY.md, "Soak: three
    /// replicas"); fails when a record was lost.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match &args.command {
        Some(Cmd::ServeRelay) => return rt.block_on(serve::serve_relay()),
        Some(Cmd::ServeMinimal) => return rt.block_on(minimal::serve_minimal()),
        Some(Cmd::Soak(soak)) => return rt.block_on(soak::run(soak.clone())),
        None => {}
    }
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o365-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen sections in order, then prints the table; fails when a section failed.
async fn run(args: Args) -> anyhow::Result<()> {
    let ctx = harness::Ctx::connect(
        args.quick,
        &args.amqp_url,
        &args.redis_url,
        args.relay_bin.clone(),
    )
    .await?;
    let started = Instant::now();
    println!(
        "o365-bench{} — {}",
        if ctx.quick { " --quick" } else { "" },
        procfs::machine()
    );
    println!(
        "date {}; relay under test: {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        match &ctx.relay_bin {
            Some(b) => format!("{} serve", b.display()),
            None => "o365-bench serve-relay (= o365-relay serve)".into(),
        }
    );
    let quick = ctx.quick;
    let rounds = args.rounds.unwrap_or(if quick { 1 } else { 3 }).max(1);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for s in &args.sections {
        println!();
        let r = match s {
            1 => {
                let secs = args.ingest_secs.unwrap_or(if quick { 1.0 } else { 10.0 });
                ingest::run(&ctx, Duration::from_secs_f64(secs), rounds).await
            }
            2 => {
                let blobs = args.e2e_blobs.unwrap_or(if quick { 4 } else { 100 });
                e2e::run(&ctx, blobs, rounds).await
            }
            3 => tokens::run(&ctx, if quick { 40 } else { 2000 }).await,
            4 => memory::run(&ctx, args.blob_mb.unwrap_or(if quick { 8 } else { 256 })).await,
            5 => reconcile::run(&ctx, if quick { 500 } else { 10_000 }).await,
            6 => {
                let load = if quick {
                    fairness::Load {
                        a_blobs: 300,
                        quota: 120,
                        b_secs: 8,
                        a_minutes: 0,
                    }
                } else {
                    fairness::Load {
                        a_blobs: 5000,
                        quota: 600,
                        b_secs: 60,
                        a_minutes: 2,
                    }
                };
                fairness::run(&ctx, load).await
            }
            7 => {
                let n = args.tenants.unwrap_or(if quick { 50 } else { 1_000 });
                tenants::run(&ctx, n.clamp(1, 100_000)).await
            }
            8 => {
                let n = args
                    .dedup_records
                    .unwrap_or(if quick { 20_000 } else { 1_000_000 });
                dedup_memory::run(n.max(1)).await
            }
            9 => {
                let blobs = args.scale_blobs.unwrap_or(if quick { 6 } else { 80 });
                scale::run(&ctx, blobs.max(1), rounds).await
            }
            other => Err(anyhow::anyhow!("no section {other}")),
        };
        match r {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                println!("section {s} FAILED: {e:#}");
                failures.push(format!("section {s}: {e:#}"));
            }
        }
    }
    ctx.close().await;
    println!(
        "\n## o365-bench results ({:.0} s)\n",
        started.elapsed().as_secs_f64()
    );
    report::print_table(&rows);
    if !failures.is_empty() {
        bail!(
            "{} section(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
