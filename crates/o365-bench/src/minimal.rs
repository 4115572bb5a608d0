//! `o365-bench serve-minimal`: the same-path ceiling of section 1. A bare actix-web
//! handler on `POST /webhook` that parses the JSON array, publishes each element — persistent,
//! mandatory — to a quorum queue on one shared confirm channel, and answers 200 after the
//! confirms; no auth check, no validation, no Redis, no metrics, no tracing. It runs as a child
//! process like the relay (two actix workers, as the relay's public listener), so the two are
//! measured through the same HTTP hop, the same load generator and the same `/proc` accounting.
//! It stops when its stdin closes, so it never outlives the benchmark.

use actix_web::{web, App, HttpResponse, HttpServer};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::value::RawValue;
use std::process::ExitCode;

/// Its listening port.
pub const ENV_PORT: &str = "BENCH_MINIMAL_PORT";
/// RabbitMQ.
pub const ENV_AMQP: &str = "BENCH_MINIMAL_AMQP_URL";
/// The quorum queue it publishes to (declared by the benchmark).
pub const ENV_QUEUE: &str = "BENCH_MINIMAL_QUEUE";

/// A running `serve-minimal` child; SIGKILLed when dropped.
pub struct MinimalProc {
    process: test_support::RelayProcess,
    pub pid: u32,
    pub addr: std::net::SocketAddr,
}

impl MinimalProc {
    /// Starts `o365-bench serve-minimal` publishing to `queue` (a quorum queue the caller
    /// declared) and waits until it answers.
    pub async fn spawn(ctx: &crate::harness::Ctx, queue: &str) -> anyhow::Result<MinimalProc> {
        let port = test_support::free_port();
        let log = ctx
            .log_dir()
            .join(format!("minimal-{}.log", test_support::unique()));
        let mut process =
            test_support::RelayCommand::new(std::env::current_exe()?, &["serve-minimal"])
                .stdin_pipe()
                .env(ENV_PORT, port.to_string())
                .env(ENV_AMQP, ctx.amqp_url.clone())
                .env(ENV_QUEUE, queue)
                .try_spawn(&log)?;
        let url = format!("http://127.0.0.1:{port}");
        if let Err(e) = process
            .try_wait_ready(&url, std::time::Duration::from_secs(30))
            .await
        {
            process.sigkill();
            anyhow::bail!("the minimal webhook did not start: {e}: {}", process.logs());
        }
        Ok(MinimalProc {
            pid: process.pid(),
            process,
            addr: ([127, 0, 0, 1], port).into(),
        })
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(mut self) {
        self.process.stop(std::time::Duration::from_secs(10)).await;
    }
}

struct Target {
    ch: Channel,
    queue: String,
}

async fn webhook(body: web::Bytes, target: web::Data<Target>) -> HttpResponse {
    let Ok(blobs) = serde_json::from_slice::<Vec<&RawValue>>(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut pending = Vec::with_capacity(blobs.len());
    for blob in &blobs {
        let published = target
            .ch
            .basic_publish(
                "".into(),
                target.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                blob.get().as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await;
        match published {
            Ok(c) => pending.push(c),
            Err(_) => return HttpResponse::ServiceUnavailable().finish(),
        }
    }
    for c in pending {
        if !matches!(c.await, Ok(lapin::Confirmation::Ack(None))) {
            return HttpResponse::ServiceUnavailable().finish();
        }
    }
    HttpResponse::Ok().json(serde_json::json!({ "accepted": blobs.len() }))
}

pub async fn serve_minimal() -> ExitCode {
    match serve().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o365-bench serve-minimal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"));
    let port: u16 = var(ENV_PORT)?.parse()?;
    let (amqp, queue) = (var(ENV_AMQP)?, var(ENV_QUEUE)?);
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let target = web::Data::new(Target { ch, queue });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(target.clone())
            .app_data(web::PayloadConfig::new(1024 * 1024))
            .route("/webhook", web::post().to(webhook))
            .route("/readyz", web::get().to(HttpResponse::Ok))
    })
    .bind(("127.0.0.1", port))?
    .workers(2)
    .disable_signals()
    .run();
    let rx = crate::serve::stdin_closed();
    let handle = server.handle();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = rx => {}
        }
        handle.stop(false).await;
    });
    server.await?;
    let _ = conn.close(200, "ok".into()).await;
    Ok(())
}
