//! The operator's CLI: one file per command. Every command ends in one of three exit codes:
//! 0 done, 1 the operation failed (a dependency or Microsoft refused, or something could not be
//! written), 2 the input was wrong (configuration, arguments — as clap does for its own usage
//! errors), so a script can tell "fix your call" from "try again".

mod cert;
mod check;
mod consent_url;
mod dead_letters;
mod redis_migrate;
mod replay;
mod serve;
mod status;
mod subscriptions;
mod tenants;

use clap::{Parser, Subcommand};
use o365_relay::app::Parts;
use o365_relay::config::Settings;
use o365_relay::domain::{ContentType, TenantId};
use o365_relay::ops::terminal::Shown;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "o365-relay",
    version,
    about = "Relays the Office 365 unified audit log into RabbitMQ"
)]
pub struct Cli {
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
    Tenants(tenants::TenantsCmd),
    /// Manage the tenants' subscriptions at Microsoft.
    #[command(subcommand)]
    Subscriptions(subscriptions::SubsCmd),
    /// Every tenant at a glance: state, activity, dead letters, token, quota; queues, replicas.
    Status(status::StatusArgs),
    /// Re-publish a tenant's history that Microsoft still holds, marked as a replay.
    Replay(replay::ReplayArgs),
    /// List, requeue or purge dead-lettered blobs.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCmd),
    /// Validate configuration and reach Redis, RabbitMQ and the token endpoint.
    Check,
    /// Create or inspect the X.509 certificate the relay authenticates with.
    #[command(subcommand)]
    Cert(cert::CertCmd),
    /// Copy a standalone Redis's keys to the configured Redis (e.g. a new Redis Cluster).
    RedisMigrate(redis_migrate::MigrateArgs),
}

/// How a command failed, and so its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Wrong input (configuration or arguments): exit code 2. The lines are printed as they are.
    Usage(Vec<String>),
    /// The operation failed: exit code 1.
    Failed(anyhow::Error),
    /// The command already printed what went wrong (e.g. `check`'s table): exit code 1.
    Reported,
}

impl Failure {
    pub fn usage(line: impl Into<String>) -> Failure {
        Failure::Usage(vec![line.into()])
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Failed(e)
    }
}

pub type Outcome = Result<(), Failure>;

pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::run().await,
        #[cfg(feature = "demo")]
        Command::Demo(args) => return o365_relay::demo::run(args).await,
        Command::ConsentUrl => consent_url::run().await,
        Command::Tenants(cmd) => tenants::run(cmd).await,
        Command::Subscriptions(cmd) => subscriptions::run(cmd).await,
        Command::DeadLetters(cmd) => dead_letters::run(cmd).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Check => check::run().await,
        Command::Cert(cmd) => cert::run(cmd),
        Command::RedisMigrate(args) => redis_migrate::run(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(lines)) => {
            // The first line names the problem; the others detail it, indented.
            for (i, line) in lines.iter().enumerate() {
                if i == 0 {
                    eprintln!("o365-relay: {line}");
                } else {
                    eprintln!("{line}");
                }
            }
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            // The error chain may carry outside text (Microsoft's, a server's): escaped.
            eprintln!("o365-relay: {}", Shown(format!("{e:#}")));
            ExitCode::FAILURE
        }
        Err(Failure::Reported) => ExitCode::FAILURE,
    }
}

/// The configuration from the environment; every problem on a line of its own.
fn settings() -> Result<Settings, Failure> {
    Settings::from_env().map_err(invalid_configuration)
}

fn invalid_configuration(errors: o365_relay::config::ConfigErrors) -> Failure {
    let mut lines = vec!["configuration is invalid:".to_string()];
    lines.extend(errors.0.iter().map(|l| format!("  {l}")));
    Failure::Usage(lines)
}

/// The relay's parts, for a command that talks to Redis, RabbitMQ or Microsoft.
fn parts() -> Result<Arc<Parts>, Failure> {
    let settings = settings()?;
    o365_relay::ops::telemetry::init(o365_relay::config::LogFormat::Pretty);
    Ok(Parts::new(settings)?)
}

fn tenant_arg(s: &str) -> Result<TenantId, Failure> {
    TenantId::parse(s).map_err(|e| Failure::usage(e.to_string()))
}

fn content_type_arg(s: Option<&str>) -> Result<Option<ContentType>, Failure> {
    s.map(str::parse::<ContentType>)
        .transpose()
        .map_err(|e| Failure::usage(format!("--content-type: {e}")))
}
