//! `o365-relay demo`: the newcomer's first command. Starts the simulator and the relay in one
//! process against the local Redis and RabbitMQ, onboards simulated tenants (the subscription
//! validation handshake really happens), lets the simulator publish content and notify —
//! losing some notifications on purpose so the reconciler has work — and reads everything that
//! reached the exchange back from a demo queue. `--exchange`, `--work-queue` and
//! `--summary-json` let a consumer (and its test) bind to an exchange of its own first and
//! compare what it received with what the demo saw arrive.

use crate::app::Application;
use crate::config::{redact_url, Settings};
use crate::domain::TenantId;
use futures_util::StreamExt;
use o365_sim::Faults;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use test_support::sink::{Sink, SinkQueue};
use test_support::SimBuilder;
use test_support::{Names, RelayEnv};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Simulated tenants to onboard.
    #[arg(long, default_value_t = 2)]
    pub tenants: usize,
    /// Content blobs per tenant and content type.
    #[arg(long, default_value_t = 4)]
    pub blobs: usize,
    /// Records per blob.
    #[arg(long, default_value_t = 25)]
    pub records: usize,
    /// Share of notifications the simulator "loses" (the reconciler recovers them).
    #[arg(long, default_value_t = 0.2)]
    pub drop: f64,
    /// Give up after this long.
    #[arg(long, default_value = "90s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// The topic exchange the records go to [default: $O365_AMQP_EXCHANGE, else o365.audit].
    /// Bind your consumer's queue to it before the demo starts: records are published mandatory.
    #[arg(long, value_name = "NAME")]
    pub exchange: Option<String>,
    /// The relay's work queue; its retry, parked and dead-letter queues are named after it
    /// [default: $O365_AMQP_WORK_QUEUE, else o365.content].
    #[arg(long, value_name = "NAME")]
    pub work_queue: Option<String>,
    /// Also write the outcome to PATH as JSON: the counts, and every record that reached the
    /// exchange (`message_id`, `routing_key`), to check a consumer against.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,
}

/// What `--summary-json` writes.
#[derive(serde::Serialize)]
struct JsonSummary<'a> {
    /// Every distinct record the simulator published reached the exchange.
    complete: bool,
    exchange: &'a str,
    work_queue: &'a str,
    tenants: &'a [String],
    blobs: usize,
    /// Records the simulator put into blobs, repeats across blobs included.
    records_published: u64,
    /// Distinct record ids the simulator published: what should reach the exchange.
    expected: usize,
    /// Distinct message ids that reached the exchange (= `records`).
    received: usize,
    /// Messages the demo's own queue received (a record published twice counts twice).
    messages: u64,
    duplicates_suppressed: u64,
    recovered_by_reconciliation: u64,
    token_requests: u64,
    elapsed_seconds: f64,
    /// Each distinct record that reached the exchange, by message id.
    records: Vec<SeenRecord<'a>>,
    /// Record ids the simulator published that did not reach the exchange in time.
    missing: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct SeenRecord<'a> {
    message_id: &'a str,
    routing_key: &'a str,
}

const DEMO_TENANTS: [&str; 4] = [
    "41463f53-8812-40f4-890f-865bf6e35190",
    "7a0c1f2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "c2b8a1d4-5e6f-4a7b-9c8d-1e2f3a4b5c6d",
    "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
];

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Says which dependency is missing, where, and how to start it.
async fn preflight(redis_url: &str, amqp_url: &str) -> Result<(), String> {
    let mut problems = Vec::new();
    let store =
        crate::store::Store::new(redis_url, "o365relay:demo:").map_err(|e| e.to_string())?;
    if let Err(e) = store.ping().await {
        problems.push(format!(
            "Redis is not reachable at {} ({e}).\n  Start it: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no",
            redact_url(redis_url)
        ));
    }
    if let Err(why) = crate::config::AmqpEndpoint::parse(amqp_url) {
        // lapin's own parse error quotes the URL, password included.
        problems.push(format!("O365_AMQP_URL: {why}"));
        return Err(problems.join("\n"));
    }
    match tokio::time::timeout(Duration::from_secs(5), crate::broker::probe(amqp_url)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!(
            "RabbitMQ is not reachable at {} ({e}).\n  Start it: rabbitmq-server -detached && rabbitmqctl await_startup",
            redact_url(amqp_url)
        )),
        Err(_) => problems.push(format!("RabbitMQ did not answer at {} within 5 s.", redact_url(amqp_url))),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

pub async fn run(args: DemoArgs) -> ExitCode {
    match demo(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    if std::env::var("RUST_LOG").is_err() {
        // Progress goes to stdout; only problems are logged.
        std::env::set_var("RUST_LOG", "warn,lapin=error");
    }
    crate::ops::telemetry::init(crate::config::LogFormat::Pretty);
    let started = Instant::now();
    let redis_url = env_or("O365_REDIS_URL", "redis://127.0.0.1:6379");
    let amqp_url = env_or("O365_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let exchange = args
        .exchange
        .clone()
        .unwrap_or_else(|| env_or("O365_AMQP_EXCHANGE", "o365.audit"));
    let work_queue = args
        .work_queue
        .clone()
        .unwrap_or_else(|| env_or("O365_AMQP_WORK_QUEUE", "o365.content"));
    // With several endpoints (a cluster), the demo's own connections — the check below and
    // the demo queue — use the first; the relay itself gets the whole list.
    let first_amqp_url = amqp_url
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    if let Err(msg) = preflight(&redis_url, &first_amqp_url).await {
        eprintln!("demo: cannot start:\n{msg}");
        return Ok(false);
    }
    let tenants: Vec<String> = DEMO_TENANTS
        .iter()
        .take(args.tenants.clamp(1, DEMO_TENANTS.len()))
        .map(|s| s.to_string())
        .collect();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    // An X.509 credential, made the way an operator would (`o365-relay cert new`).
    let dir = std::env::temp_dir().join(format!("o365-relay-demo-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let (key, cert) = crate::domain::certs::generate("o365-relay demo", 365, 2048)?;
    std::fs::write(dir.join("demo.crt"), &cert)?;
    std::fs::write(dir.join("demo.key"), &key)?;

    let sim_builder = SimBuilder::new()
        .client_certs(vec![cert])
        .tenants(&tenants)
        .notification_retry_delays(vec![Duration::from_millis(500), Duration::from_secs(1)])
        .configure(|c| c.records_per_blob = args.records);
    let client_id = sim_builder.config().client_id.clone();
    let sim = sim_builder.try_start().await?;
    println!("simulator (Entra ID + Management API) on {}", sim.url());

    let public = TcpListener::bind("127.0.0.1:0")?;
    let admin = TcpListener::bind("127.0.0.1:0")?;
    let public_url = format!("http://127.0.0.1:{}", public.local_addr()?.port());
    // The relay's settings, built as the tests build theirs (test_support::RelayEnv).
    let names = Names {
        id: run_id.clone(),
        exchange: exchange.clone(),
        work_queue: work_queue.clone(),
        sink: format!("o365.demo.{run_id}"),
        prefix: format!("o365relay:demo:{run_id}:"),
        auth_id: format!("demo-{}", uuid::Uuid::new_v4().simple()),
    };
    let vars = RelayEnv::new(&names, &sim.url())
        .set("O365_CLIENT_ID", client_id)
        .client_certificate(
            dir.join("demo.crt").display().to_string(),
            dir.join("demo.key").display().to_string(),
        )
        // The demo uses no admin endpoint: a random token keeps its admin listener closed.
        .set(
            "O365_ADMIN_TOKEN",
            uuid::Uuid::new_v4().simple().to_string(),
        )
        .public_url(&public_url)
        .tenants(&tenants)
        .redis_url(redis_url)
        .amqp_url(amqp_url.clone())
        .set(
            "O365_AMQP_QUEUE_TYPE",
            env_or("O365_AMQP_QUEUE_TYPE", "quorum"),
        )
        .set("O365_RECONCILE_INTERVAL", "3s")
        .set("O365_RECONCILE_LOOKBACK", "1h")
        .set("O365_ENABLE_KEEPER", "false")
        .retries("500ms", "5s")
        .into_vars();
    let settings = Settings::from_vars(vars).map_err(|e| anyhow::anyhow!("{e}"))?;

    // The demo queue exists before anything is published (records are published mandatory).
    let demo_queue = names.sink.clone();
    let sink = Sink::bind(
        &first_amqp_url,
        &exchange,
        &demo_queue,
        SinkQueue::Temporary,
    )
    .await?;
    let mut consumer = sink.consume().await?;

    let app = Application::build_with_listeners(settings, Some(public), admin).await?;
    let parts = app.parts();
    let stop = app.shutdown_token();
    let app_task = tokio::spawn(app.run_until_stopped());
    println!(
        "relay webhook on {public_url}/webhook, exchange '{exchange}', work queue '{work_queue}'"
    );

    for t in &tenants {
        let tid = TenantId::parse(t).map_err(|e| anyhow::anyhow!(e))?;
        let outcomes = parts.subscriptions.start_all(&tid, None, true).await;
        let ok = outcomes.iter().filter(|o| o.ok).count();
        println!(
            "tenant {t}: {ok}/{} subscriptions enabled (webhook validated by the simulator)",
            outcomes.len()
        );
        if ok != outcomes.len() {
            for o in outcomes.iter().filter(|o| !o.ok) {
                println!("  {}: {}", o.content_type, o.detail);
            }
        }
    }

    sim.set_faults(Faults {
        drop_notification: args.drop.clamp(0.0, 1.0),
        ..Faults::default()
    });
    let mut blobs = 0;
    for t in &tenants {
        for ct in o365_sim::CONTENT_TYPES {
            blobs += sim
                .publish(t, ct, args.blobs, Some(args.records))
                .await
                .len();
        }
    }
    let expected = sim.unique_record_ids();
    println!(
        "simulator published {blobs} blobs with {} records ({} distinct; some repeat across blobs, as Microsoft's do); {} notifications lost on purpose",
        sim.records_published(),
        expected.len(),
        sim.notifications_dropped()
    );

    // message id → routing key of every record that reached the exchange.
    let mut received: BTreeMap<String, String> = BTreeMap::new();
    let mut messages = 0u64;
    let mut sample: Option<(String, String)> = None;
    let deadline = tokio::time::Instant::now() + args.timeout;
    let mut last_report = Instant::now();
    while received.len() < expected.len() {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                messages += 1;
                if let Some(id) = d.properties.message_id() {
                    received
                        .entry(id.to_string())
                        .or_insert_with(|| d.routing_key.to_string());
                }
                if sample.is_none() {
                    sample = Some((
                        d.routing_key.to_string(),
                        String::from_utf8_lossy(&d.data).chars().take(240).collect(),
                    ));
                }
            }
            _ => break,
        }
        if last_report.elapsed() > Duration::from_secs(1) {
            println!(
                "  … {} / {} records on the exchange",
                received.len(),
                expected.len()
            );
            last_report = Instant::now();
        }
    }
    let elapsed = started.elapsed();
    let complete = expected.iter().all(|id| received.contains_key(id));
    let duplicates = parts.metrics.records_duplicate.get();
    let reconciled = parts.metrics.reconcile.missing_total();
    let tokens: u64 = tenants.iter().map(|t| sim.token_requests(t)).sum();
    let sim_records = sim.records_published();

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(35), app_task).await;
    sink.close().await;
    let _ = parts.store.purge_prefix().await;
    sim.stop().await;
    let _ = std::fs::remove_dir_all(&dir);

    if let Some((rk, body)) = &sample {
        println!("\nsample message, routing key {rk}:\n  {body}…");
    }
    println!(
        "\nsummary: {} tenants, {blobs} blobs, {} records relayed ({} distinct of {} expected, {} messages), {duplicates} duplicates suppressed, {reconciled} blobs recovered by reconciliation, {tokens} token requests, {:.1} s",
        tenants.len(),
        received.len(),
        received.len(),
        expected.len(),
        messages,
        elapsed.as_secs_f64()
    );
    println!(
        "consume it yourself: bind a queue to the topic exchange '{exchange}' with routing key '#' (or 'Audit.Exchange.*', '#.<tenant id>'); each message is one audit record, message_id = the record's Id."
    );
    if let Some(path) = &args.summary_json {
        let mut missing: Vec<&str> = expected
            .iter()
            .filter(|id| !received.contains_key(*id))
            .map(String::as_str)
            .collect();
        missing.sort_unstable();
        let summary = JsonSummary {
            complete,
            exchange: &exchange,
            work_queue: &work_queue,
            tenants: &tenants,
            blobs,
            records_published: sim_records,
            expected: expected.len(),
            received: received.len(),
            messages,
            duplicates_suppressed: duplicates,
            recovered_by_reconciliation: reconciled,
            token_requests: tokens,
            elapsed_seconds: elapsed.as_secs_f64(),
            records: received
                .iter()
                .map(|(message_id, routing_key)| SeenRecord {
                    message_id,
                    routing_key,
                })
                .collect(),
            missing,
        };
        let json = serde_json::to_vec_pretty(&summary)?;
        std::fs::write(path, json)
            .map_err(|e| anyhow::anyhow!("--summary-json {}: {e}", path.display()))?;
        println!("summary as JSON in {}", path.display());
    }
    if !complete {
        println!(
            "demo: INCOMPLETE — {} records did not arrive within {:?}",
            expected
                .iter()
                .filter(|id| !received.contains_key(*id))
                .count(),
            args.timeout
        );
    }
    Ok(complete)
}
