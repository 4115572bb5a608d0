//! `o365-sim` — run the Office 365 Management Activity API + Entra ID simulator standalone.
//!
//! Serves Entra (`/{tenant}/oauth2/token`, `/common/oauth2/...`), the Management API
//! (`/api/v1.0/{tenant}/activity/feed/...`) and the control API (`/sim/...`) on one listener.

use std::time::Duration;

use clap::Parser;
use o365_sim::{PresetWebhook, SimConfig, Simulator};

#[derive(Parser, Debug)]
#[command(
    name = "o365-sim",
    about = "Office 365 Management Activity API + Entra ID simulator"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "O365_SIM_LISTEN")]
    listen: String,
    /// The app registration's client id.
    #[arg(long, default_value = "a6099727-6b7b-482c-b509-1df309acc563")]
    client_id: String,
    /// Accepted client secret (none = secrets refused).
    #[arg(long, env = "O365_SIM_CLIENT_SECRET")]
    client_secret: Option<String>,
    /// Registered certificate (PEM); repeat for several.
    #[arg(long = "client-cert")]
    client_cert: Vec<std::path::PathBuf>,
    /// Tenant GUID that exists; repeat for several (default: one fixed GUID).
    #[arg(long = "tenant")]
    tenant: Vec<String>,
    /// Also serve N generated tenants (0000e365-0000-4000-8000-{index as 12 hex digits}).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    generated_tenants: u32,
    /// Every tenant starts with all five content types enabled, notifying this webhook
    /// (with --subscribed-auth-id): a deployment already onboarded.
    #[arg(long, requires = "subscribed_auth_id")]
    subscribed_webhook: Option<String>,
    /// The authId of --subscribed-webhook.
    #[arg(long, requires = "subscribed_webhook")]
    subscribed_auth_id: Option<String>,
    /// Access token lifetime, e.g. "3600s", "1h".
    #[arg(long, default_value = "3600s", value_parser = humantime::parse_duration)]
    token_lifetime: Duration,
    /// Records per published blob.
    #[arg(long, default_value_t = 20)]
    records_per_blob: usize,
    /// Base URL clients use to reach the simulator, when it differs from --listen
    /// (e.g. http://o365-sim:8090 in docker compose).
    #[arg(long, env = "O365_SIM_PUBLIC_URL")]
    public_url: Option<String>,
    /// Accept Management calls without a PublisherIdentifier.
    #[arg(long)]
    no_publisher_id_required: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = SimConfig {
        client_id: args.client_id,
        client_secret: args.client_secret,
        token_lifetime: args.token_lifetime,
        records_per_blob: args.records_per_blob,
        publisher_id_required: !args.no_publisher_id_required,
        public_url: args.public_url,
        generated_tenants: args.generated_tenants as usize,
        subscribed_webhook: args
            .subscribed_webhook
            .zip(args.subscribed_auth_id)
            .map(|(address, auth_id)| PresetWebhook { address, auth_id }),
        ..SimConfig::default()
    };
    for path in &args.client_cert {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading certificate {}: {e}", path.display()))?;
        config.client_certs_pem.push(pem);
    }
    if !args.tenant.is_empty() {
        config.tenants = args.tenant.iter().map(|t| t.to_ascii_lowercase()).collect();
    }
    let tenants = config.tenants.clone();
    let generated = config.generated_tenants;
    let sim = Simulator::start(config, &args.listen).await?;
    println!("o365-sim listening on {}", sim.url());
    println!("tenants: {}", tenants.join(", "));
    if generated > 0 {
        println!(
            "and {generated} generated tenants: {} … {}",
            o365_sim::generated_tenant(0),
            o365_sim::generated_tenant(generated - 1)
        );
    }
    println!(
        "control API: POST {0}/sim/publish, POST {0}/sim/publish-body, POST {0}/sim/faults, POST {0}/sim/push-fault, POST|DELETE {0}/sim/fault-for, POST {0}/sim/expire, GET {0}/sim/stats, GET {0}/sim/calls/{{tenant}}",
        sim.url()
    );
    // SIGTERM too: in a container the simulator is PID 1, and `docker stop` sends SIGTERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    sim.stop().await;
    Ok(())
}
