//! `o365-relay status [--json]`: the status page as a table in the terminal (the same
//! [`o365_relay::http::status::StatusReport`] as `/admin/status`).

use super::{parts, Failure, Outcome};
use o365_relay::http::status::html::relative;
use o365_relay::http::status::Status;
use o365_relay::ops::terminal::{escape, Shown};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Print the JSON of `/admin/status` instead of the table.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> Outcome {
    let parts = parts()?;
    let status = parts
        .status()
        .collect()
        .await
        .map_err(|e| Failure::Failed(anyhow::Error::new(e).context("Redis")))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| Failure::Failed(e.into()))?
        );
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

/// The table, as text (one line per tenant; a reason never breaks a line).
pub fn table(s: &Status) -> String {
    let now = s.generated_at;
    let d = &s.deployment;
    let depth = |n: Option<u32>| n.map_or("?".to_string(), |n| n.to_string());
    let mut out = String::new();
    let hosts: Vec<&str> = d.replicas.iter().map(|r| r.host.as_str()).collect();
    out.push_str(&format!(
        "queues: work {} · retry {} · dead {}    replicas: {} ({})    certificate: {}\n",
        depth(d.queues.work),
        depth(d.queues.retry),
        depth(d.queues.dead),
        d.replicas.len(),
        escape(&hosts.join(", ")),
        d.certificate_expires_at
            .map(|t| format!("expires {}", relative(t, now)))
            .unwrap_or_else(|| "client secret".into()),
    ));
    if let Some(paused) = &d.downstream {
        out.push_str(&escape(&paused.line(now)));
        out.push('\n');
    }
    for p in &d.problems {
        out.push_str(&format!("problem: {}\n", Shown(p)));
    }
    out.push_str(&format!(
        "{:<9} {:<36} {:<10} {:>9} {:>9} {:>5} {:>5} {:<12} {:>9}  {}\n",
        "VERDICT", "TENANT", "STATE", "REC 1H", "REC 24H", "RECOV", "DEAD", "TOKEN", "QUOTA", "WHY"
    ));
    for t in &s.tenants {
        out.push_str(&format!(
            "{:<9} {:<36} {:<10} {:>9} {:>9} {:>5} {:>5} {:<12} {:>9}  {}\n",
            t.verdict.as_str(),
            t.tenant_id.as_str(),
            t.state.name(),
            t.last_hour.records,
            t.last_day.records,
            t.last_day.recovered,
            t.last_day.dead,
            t.token_expires_at
                .map(|at| relative(at, now))
                .unwrap_or_else(|| "-".into()),
            format!("{}/{}", t.quota_used, d.quota_per_minute),
            // Microsoft's error text, a parking reason: escaped, on one line.
            escape(&t.why),
        ));
    }
    if s.tenants.is_empty() {
        out.push_str("no tenant yet (o365-relay consent-url gives the consent link)\n");
    }
    for o in &s.offboarded {
        out.push_str(&format!(
            "offboarded {} {}\n",
            o.tenant_id,
            o.since.map(|t| relative(t, now)).unwrap_or_default()
        ));
    }
    out
}
