//! `o365-relay subscriptions list | start | stop`, per tenant (all served ones by default) and
//! content type (all configured ones by default). Exit code 1 when any call failed.

use super::{content_type_arg, parts, tenant_arg, Failure, Outcome};
use o365_relay::ops::terminal::Shown;

#[derive(clap::Args)]
pub struct SubsFilter {
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long = "content-type")]
    content_type: Option<String>,
}

#[derive(clap::Subcommand)]
pub enum SubsCmd {
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

pub async fn run(cmd: SubsCmd) -> Outcome {
    let filter = match &cmd {
        SubsCmd::List(f) | SubsCmd::Stop(f) | SubsCmd::Start { filter: f, .. } => f,
    };
    let only = content_type_arg(filter.content_type.as_deref())?;
    let tenant = filter.tenant.as_deref().map(tenant_arg).transpose()?;
    let parts = parts()?;
    let tenants = match tenant {
        Some(t) => vec![t],
        None => parts.tenants.served_ids().await,
    };
    let mut failed = false;
    for tid in tenants {
        match &cmd {
            SubsCmd::List(_) => match parts.subscriptions.list(&tid).await {
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
                    println!("{tid}  error: {}", Shown(e));
                }
            },
            SubsCmd::Start { force, .. } => {
                for o in parts.subscriptions.start_all(&tid, only, *force).await {
                    failed |= !o.ok;
                    println!("{tid}  {:<28} {}", o.content_type, Shown(&o.detail));
                }
            }
            SubsCmd::Stop(_) => {
                for &ct in parts
                    .settings
                    .content_types
                    .iter()
                    .filter(|c| only.is_none_or(|o| o == **c))
                {
                    match parts.subscriptions.stop(&tid, ct).await {
                        Ok(()) => println!("{tid}  {ct:<28} stopped"),
                        Err(e) => {
                            failed = true;
                            println!("{tid}  {ct:<28} error: {}", Shown(e));
                        }
                    }
                }
            }
        }
    }
    if failed {
        Err(Failure::Reported)
    } else {
        Ok(())
    }
}
