//! `o365-relay tenants list | add | remove | approve`, through the same onboarding service as
//! the consent callback and the admin API.

use super::{parts, tenant_arg, Failure, Outcome};
use anyhow::anyhow;
use o365_relay::ops::terminal::Shown;
use o365_relay::tenancy::onboarding::AddRequest;

#[derive(clap::Subcommand)]
pub enum TenantsCmd {
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
    /// Approve a tenant pending approval (O365_CONSENT_MODE=approval) and start its
    /// subscriptions.
    Approve {
        tenant: String,
    },
}

pub async fn run(cmd: TenantsCmd) -> Outcome {
    // Arguments first: a wrong tenant id is a usage error whatever the configuration.
    let tenant = match &cmd {
        TenantsCmd::List => None,
        TenantsCmd::Add { tenant }
        | TenantsCmd::Remove { tenant, .. }
        | TenantsCmd::Approve { tenant } => Some(tenant_arg(tenant)?),
    };
    let parts = parts()?;
    match (cmd, tenant) {
        (TenantsCmd::List, _) => {
            for t in parts.tenants.list().await.map_err(anyhow::Error::new)? {
                println!(
                    "{}  {:<10} {:<8} {}  {}",
                    t.tenant_id,
                    t.state.name(),
                    format!("{:?}", t.added_by).to_lowercase(),
                    if t.added_at.is_empty() {
                        "-"
                    } else {
                        &t.added_at
                    },
                    // The consenting admin's name comes from Microsoft's token: escaped.
                    Shown(t.consented_by.unwrap_or_default())
                );
            }
        }
        (TenantsCmd::Add { .. }, Some(tid)) => {
            parts
                .onboarding
                .add(&tid, AddRequest::by_admin(false))
                .await
                .map_err(anyhow::Error::new)?;
            println!("added {tid}");
        }
        (
            TenantsCmd::Remove {
                stop_subscriptions, ..
            },
            Some(tid),
        ) => {
            let removed = parts
                .onboarding
                .remove(&tid, stop_subscriptions)
                .await
                .map_err(anyhow::Error::new)?;
            for s in &removed.stopped {
                match &s.detail {
                    None => println!("stopped {}", s.content_type),
                    Some(e) => println!("could not stop {}: {}", s.content_type, Shown(e)),
                }
            }
            println!(
                "{} {tid}",
                if removed.removed {
                    "removed"
                } else {
                    "was not registered:"
                }
            );
        }
        (TenantsCmd::Approve { .. }, Some(tid)) => {
            let approved = parts
                .onboarding
                .approve(&tid)
                .await
                .map_err(anyhow::Error::new)?
                .ok_or_else(|| anyhow!("tenant {tid} is not registered"))?;
            for s in &approved.subscriptions {
                if s.ok {
                    println!("started {}", s.content_type);
                } else {
                    println!("could not start {}: {}", s.content_type, Shown(&s.detail));
                }
            }
            println!("approved {tid}");
        }
        (_, None) => return Err(Failure::usage("a tenant id is required")),
    }
    Ok(())
}
