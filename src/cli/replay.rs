//! `o365-relay replay --tenant T --since 3d [--until …] [--content-type …] [--routing-prefix …]`:
//! re-publishes what Microsoft still holds for a tenant (see [`o365_relay::pipeline::replay`]).

use super::{content_type_arg, parts, tenant_arg, Failure, Outcome};
use chrono::{DateTime, Utc};
use o365_relay::ops::terminal::Shown;
use o365_relay::pipeline::replay::{Progress, ReplayRequest};
use std::io::{IsTerminal, Write};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The tenant whose history is replayed.
    #[arg(long)]
    tenant: String,
    /// How far back: a duration such as `3d`, `36h` (Microsoft keeps content 7 days).
    #[arg(long)]
    since: String,
    /// Where to stop: a duration ago (`1d`) or an RFC 3339 time; now by default.
    #[arg(long)]
    until: Option<String>,
    /// One content type (all configured ones by default).
    #[arg(long)]
    content_type: Option<String>,
    /// Publish under `{prefix}.{contentType}.{tenantId}`, for a consumer bound to `{prefix}.#`.
    #[arg(long)]
    routing_prefix: Option<String>,
}

/// A time given as a duration ago or as an RFC 3339 timestamp.
fn time_arg(flag: &str, s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Failure> {
    if let Ok(d) = humantime::parse_duration(s) {
        let d = chrono::Duration::from_std(d)
            .map_err(|_| Failure::usage(format!("{flag}: {s} is too long")))?;
        return now
            .checked_sub_signed(d)
            .ok_or_else(|| Failure::usage(format!("{flag}: {s} is too long")));
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            Failure::usage(format!(
                "{flag}: {s:?} is neither a duration (3d, 12h) nor an RFC 3339 time"
            ))
        })
}

pub async fn run(args: ReplayArgs) -> Outcome {
    let now = Utc::now();
    let tenant = tenant_arg(&args.tenant)?;
    if humantime::parse_duration(&args.since).is_err() {
        return Err(Failure::usage(format!(
            "--since: {:?} is not a duration such as 3d or 12h",
            args.since
        )));
    }
    let since = time_arg("--since", &args.since, now)?;
    let until = match &args.until {
        Some(u) => time_arg("--until", u, now)?,
        None => now,
    };
    if until <= since {
        return Err(Failure::usage("--until must be later than --since"));
    }
    let content_type = content_type_arg(args.content_type.as_deref())?;
    if let Some(p) = &args.routing_prefix {
        o365_relay::pipeline::sink::check_routing_prefix(p)
            .map_err(|e| Failure::usage(format!("--routing-prefix: {e}")))?;
    }
    let parts = parts()?;
    let content_types = match content_type {
        Some(ct) => vec![ct],
        None => parts.settings.content_types.clone(),
    };
    let request = ReplayRequest {
        tenant,
        since,
        until,
        content_types,
        routing_prefix: args.routing_prefix,
    };
    let bar = std::io::stderr().is_terminal();
    let summary = parts
        .replayer()
        .run(&request, |p| {
            if bar {
                draw(p);
            }
        })
        .await;
    // Tracing on: the replay's spans are exported before the process ends.
    let _ = tokio::task::spawn_blocking(o365_relay::ops::telemetry::shutdown).await;
    let summary = summary.map_err(|e| Failure::Failed(anyhow::Error::new(e)))?;
    if bar {
        eprintln!();
    }
    let p = &summary.progress;
    if summary.clamped {
        println!(
            "note: Microsoft keeps content 7 days; replaying from {} instead",
            summary
                .since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    println!(
        "replayed {} of {} blobs ({} records) for tenant {}, {} → {}{}",
        p.replayed,
        p.blobs,
        p.records,
        summary.tenant,
        summary
            .since
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        summary
            .until
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        request
            .routing_prefix
            .as_deref()
            .map(|p| format!(", routing keys {p}.…"))
            .unwrap_or_default(),
    );
    if !summary.unsubscribed.is_empty() {
        let names: Vec<&str> = summary.unsubscribed.iter().map(|c| c.as_str()).collect();
        println!(
            "note: no subscription at Microsoft for {}: nothing to replay there",
            names.join(", ")
        );
    }
    for (content_id, error) in &summary.failures {
        println!("failed {content_id}: {}", Shown(error));
    }
    if p.failed > 0 {
        return Err(Failure::Failed(anyhow::anyhow!(
            "{} blobs could not be replayed; run the command again for the same period (replayed records are published again)",
            p.failed
        )));
    }
    Ok(())
}

/// `replay [#######.......] 12/40 blobs · 3400 records · 1 failed`, redrawn in place.
fn draw(p: &Progress) {
    const WIDTH: u64 = 30;
    let done = p.replayed + p.failed;
    let filled = (done * WIDTH).checked_div(p.blobs).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\rreplay [{bar}] {done}/{} blobs · {} records{}",
        p.blobs,
        p.records,
        if p.failed > 0 {
            format!(" · {} failed", p.failed)
        } else {
            String::new()
        }
    );
    let _ = err.flush();
}
