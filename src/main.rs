//! `o365-relay`: the service and its operator CLI (README.md, "Running it").

use clap::{Parser, Subcommand};
use o365_relay::app::{Application, Relay};
use o365_relay::config::{redact_url, Settings};
use o365_relay::domain::{ContentType, TenantId};
use o365_relay::tenants::AddedBy;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "o365-relay",
    version,
    about = "Relays the Office 365 unified audit log into RabbitMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the listeners, workers, reconciler and subscription keeper (the default).
    Serve,
    /// Run the relay against the built-in simulator and the local Redis and RabbitMQ.
    #[cfg(feature = "demo")]
    Demo(o365_relay::demo::DemoArgs),
    /// Print the admin-consent URL for this deployment.
    ConsentUrl,
    /// Manage the served tenants.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Manage the tenants' subscriptions at Microsoft.
    #[command(subcommand)]
    Subscriptions(SubsCmd),
    /// Validate configuration and reach Redis, RabbitMQ and the token endpoint.
    Check,
    /// Create or inspect the X.509 certificate the relay authenticates with.
    #[command(subcommand)]
    Cert(CertCmd),
}

#[derive(Subcommand)]
enum TenantsCmd {
    List,
    Add {
        tenant: String,
    },
    Remove {
        tenant: String,
        /// Also stop the tenant's subscriptions at Microsoft.
        #[arg(long)]
        stop_subscriptions: bool,
    },
}

#[derive(clap::Args)]
struct SubsFilter {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long = "content-type")]
    content_type: Option<String>,
}

#[derive(Subcommand)]
enum SubsCmd {
    List(SubsFilter),
    Start {
        #[command(flatten)]
        filter: SubsFilter,
        /// Ignore the 15-minute spacing between /start calls.
        #[arg(long)]
        force: bool,
    },
    Stop(SubsFilter),
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create an RSA key and a self-signed certificate, and print the manifest entry.
    New {
        #[arg(long, default_value = "o365-relay")]
        cn: String,
        #[arg(long, default_value_t = 730)]
        days: u32,
        #[arg(long, default_value_t = 3072, value_parser = parse_bits)]
        bits: u32,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Print the manifest entry, x5t and expiry of an existing certificate.
    Show { path: std::path::PathBuf },
}

fn parse_bits(s: &str) -> Result<u32, String> {
    match s {
        "2048" | "3072" | "4096" => Ok(s.parse().expect("digits")),
        _ => Err("must be 2048, 3072 or 4096".into()),
    }
}

fn settings_or_exit() -> Result<Settings, ExitCode> {
    Settings::from_env().map_err(|errors| {
        eprintln!("o365-relay: configuration is invalid:");
        for line in &errors.0 {
            eprintln!("  {line}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("o365-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve().await,
            #[cfg(feature = "demo")]
            Command::Demo(args) => o365_relay::demo::run(args).await,
            Command::ConsentUrl => consent_url().await,
            Command::Tenants(cmd) => tenants(cmd).await,
            Command::Subscriptions(cmd) => subscriptions(cmd).await,
            Command::Check => check().await,
            Command::Cert(cmd) => cert(cmd),
        }
    })
}

/// The authorize URL with a state the callback accepts (without one, the callback would refuse
/// the admin's return): single use, valid 10 minutes, so it needs Redis.
async fn consent_url() -> ExitCode {
    let relay = match relay_for_cli().await {
        Ok(r) => r,
        Err(c) => return c,
    };
    match o365_relay::consent::consent_link(&relay).await {
        Some(Ok(url)) => {
            println!("{url}");
            if let Some(public) = &relay.settings.public_url {
                eprintln!(
                    "This link works once and for 10 minutes. For a link that does not expire, send the tenant admin {}/consent",
                    public.as_str().trim_end_matches('/')
                );
            }
            ExitCode::SUCCESS
        }
        Some(Err(e)) => {
            eprintln!("o365-relay: cannot store the consent state in Redis: {e}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("o365-relay: O365_PUBLIC_URL: is required to build the consent URL");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    let settings = match settings_or_exit() {
        Ok(s) => s,
        Err(c) => return c,
    };
    if let Err(e) = settings.require_public_url() {
        eprintln!("o365-relay: configuration is invalid:\n  {e}");
        return ExitCode::from(2);
    }
    o365_relay::telemetry::init(settings.log_format);
    let app = match Application::build(settings).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("o365-relay: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        public_port = app.public_port(),
        admin_port = app.admin_port(),
        "o365-relay started."
    );
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        token.cancel();
    });
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Stopped with an error.");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = int.recv() => tracing::info!("SIGINT received."),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn relay_for_cli() -> Result<std::sync::Arc<Relay>, ExitCode> {
    let settings = settings_or_exit()?;
    o365_relay::telemetry::init(o365_relay::config::LogFormat::Pretty);
    Relay::new(settings).map_err(|e| {
        eprintln!("o365-relay: {e:#}");
        ExitCode::FAILURE
    })
}

fn parse_tenant(s: &str) -> Result<TenantId, ExitCode> {
    TenantId::parse(s).map_err(|e| {
        eprintln!("o365-relay: {e}");
        ExitCode::from(2)
    })
}

async fn tenants(cmd: TenantsCmd) -> ExitCode {
    let relay = match relay_for_cli().await {
        Ok(r) => r,
        Err(c) => return c,
    };
    let result: anyhow::Result<()> = async {
        match cmd {
            TenantsCmd::List => {
                for t in relay.tenants.list().await? {
                    println!(
                        "{}  {:<8} {}  {}",
                        t.tenant_id,
                        format!("{:?}", t.added_by).to_lowercase(),
                        if t.added_at.is_empty() {
                            "-"
                        } else {
                            &t.added_at
                        },
                        t.consented_by.unwrap_or_default()
                    );
                }
            }
            TenantsCmd::Add { tenant } => {
                let tid =
                    parse_tenant(&tenant).map_err(|_| anyhow::anyhow!("invalid tenant id"))?;
                relay.tenants.add(&tid, AddedBy::Admin, None).await?;
                println!("added {tid}");
            }
            TenantsCmd::Remove {
                tenant,
                stop_subscriptions,
            } => {
                let tid =
                    parse_tenant(&tenant).map_err(|_| anyhow::anyhow!("invalid tenant id"))?;
                if stop_subscriptions {
                    for ct in relay.settings.content_types.clone() {
                        match relay.subscriptions.stop(&tid, ct).await {
                            Ok(()) => println!("stopped {ct}"),
                            Err(e) => println!("could not stop {ct}: {e}"),
                        }
                    }
                }
                let removed = relay.tenants.remove(&tid).await?;
                relay.tokens.forget(&tid).await;
                println!(
                    "{} {tid}",
                    if removed {
                        "removed"
                    } else {
                        "was not registered:"
                    }
                );
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o365-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn subscriptions(cmd: SubsCmd) -> ExitCode {
    let relay = match relay_for_cli().await {
        Ok(r) => r,
        Err(c) => return c,
    };
    let filter = match &cmd {
        SubsCmd::List(f) | SubsCmd::Stop(f) | SubsCmd::Start { filter: f, .. } => f,
    };
    let only = match filter
        .content_type
        .as_deref()
        .map(str::parse::<ContentType>)
        .transpose()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("o365-relay: --content-type: {e}");
            return ExitCode::from(2);
        }
    };
    let tenants = match &filter.tenant {
        Some(t) => match parse_tenant(t) {
            Ok(t) => vec![t],
            Err(c) => return c,
        },
        None => relay.tenants.served_ids().await,
    };
    let mut failed = false;
    for tid in tenants {
        match &cmd {
            SubsCmd::List(_) => match relay.subscriptions.list(&tid).await {
                Ok(subs) => {
                    for s in subs.iter().filter(|s| {
                        only.is_none_or(|o| s.content_type.eq_ignore_ascii_case(o.as_str()))
                    }) {
                        let hook = s.webhook.as_ref().map(|w| {
                            format!(
                                "webhook {} {}",
                                w.status.as_deref().unwrap_or("?"),
                                w.address.as_deref().unwrap_or("")
                            )
                        });
                        println!(
                            "{tid}  {:<28} {:<9} {}",
                            s.content_type,
                            s.status,
                            hook.unwrap_or_else(|| "no webhook".into())
                        );
                    }
                }
                Err(e) => {
                    failed = true;
                    println!("{tid}  error: {e}");
                }
            },
            SubsCmd::Start { force, .. } => {
                for o in relay.subscriptions.start_all(&tid, only, *force).await {
                    failed |= !o.ok;
                    println!("{tid}  {:<28} {}", o.content_type, o.message);
                }
            }
            SubsCmd::Stop(_) => {
                for ct in relay
                    .settings
                    .content_types
                    .iter()
                    .copied()
                    .filter(|c| only.is_none_or(|o| o == *c))
                {
                    match relay.subscriptions.stop(&tid, ct).await {
                        Ok(()) => println!("{tid}  {ct:<28} stopped"),
                        Err(e) => {
                            failed = true;
                            println!("{tid}  {ct:<28} error: {e}");
                        }
                    }
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn check() -> ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => {
            println!("ok      configuration");
            s
        }
        Err(errors) => {
            println!("failed  configuration");
            for line in &errors.0 {
                println!("          {line}");
            }
            return ExitCode::from(2);
        }
    };
    let redis = redact_url(settings.redis_url.expose());
    let amqp = redact_url(settings.amqp_url.expose());
    let relay = match Relay::new(settings) {
        Ok(r) => r,
        Err(e) => {
            println!("failed  setup: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    match relay.store.ping().await {
        Ok(()) => println!("ok      redis ({redis})"),
        Err(e) => {
            ok = false;
            println!("failed  redis ({redis}): {e}");
        }
    }
    match relay.broker.connect().await {
        Ok(c) => {
            let _ = c.close(200, "check".into()).await;
            println!("ok      rabbitmq ({amqp})");
        }
        Err(e) => {
            ok = false;
            println!("failed  rabbitmq ({amqp}): {e}");
        }
    }
    // A token for a served tenant proves the credential; without one, reaching the endpoint
    // and having it judge our credential is the best check available.
    let tenant = relay.tenants.served_ids().await.into_iter().next();
    let login = &relay.settings.login_url;
    match tenant {
        Some(t) => match relay.tokens.entra().app_token(&t).await {
            Ok(_) => println!("ok      token endpoint ({login}, tenant {t})"),
            Err(e) => {
                ok = false;
                println!("failed  token endpoint ({login}, tenant {t}): {e}");
            }
        },
        None => println!("skipped token endpoint ({login}): no tenant is served yet"),
    }
    if let o365_relay::config::Credential::Certificate(c) = &relay.settings.credential {
        let days = c.seconds_left() / 86_400;
        if days < 30 {
            println!(
                "warning certificate expires in {days} days ({})",
                c.not_after
            );
        } else {
            println!(
                "ok      certificate (x5t {}, expires {})",
                c.x5t, c.not_after
            );
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn cert(cmd: CertCmd) -> ExitCode {
    use o365_relay::certs::{generate, CertInfo};
    let print = |info: &CertInfo| {
        println!("subject:    {}", info.subject);
        println!("thumbprint: {}", info.thumbprint_hex);
        println!("x5t:        {}", info.x5t);
        println!("not after:  {}", info.not_after);
        println!("keyCredentials entry for the app manifest:");
        println!(
            "{}",
            serde_json::to_string_pretty(&info.key_credential()).unwrap_or_default()
        );
    };
    match cmd {
        CertCmd::New {
            cn,
            days,
            bits,
            out,
        } => {
            let (key, cert) = match generate(&cn, days, bits) {
                Ok(kc) => kc,
                Err(e) => {
                    eprintln!("o365-relay: cannot create the certificate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = write_pair(&out, &key, &cert) {
                eprintln!("o365-relay: cannot write to {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            println!(
                "wrote {} and {}",
                out.join("o365-relay.crt").display(),
                out.join("o365-relay.key").display()
            );
            match CertInfo::from_pem(&cert) {
                Ok(info) => print(&info),
                Err(e) => {
                    eprintln!("o365-relay: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        CertCmd::Show { path } => match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|pem| CertInfo::from_pem(&pem))
        {
            Ok(info) => {
                print(&info);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("o365-relay: {}: {e}", path.display());
                ExitCode::FAILURE
            }
        },
    }
}

fn write_pair(dir: &std::path::Path, key: &[u8], cert: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("o365-relay.key"))?;
    f.write_all(key)?;
    std::fs::write(dir.join("o365-relay.crt"), cert)?;
    Ok(())
}
