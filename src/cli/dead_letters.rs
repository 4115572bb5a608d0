//! `o365-relay dead-letters list | requeue | purge [--tenant] [--reason] [--limit]`: the dead-letter
//! queue without shovels (the same walks as `/admin/dead-letters`, see
//! [`o365_relay::pipeline::dead_letters`]).

use super::{parts, tenant_arg, Failure, Outcome};
use o365_relay::ops::terminal::Shown;
use o365_relay::pipeline::dead_letters::{Action, DeadLetter, Filter, Walked};
use std::io::{BufRead, IsTerminal, Write};

#[derive(clap::Args)]
pub struct FilterArgs {
    /// Only this tenant's dead letters.
    #[arg(long)]
    tenant: Option<String>,
    /// Only those whose error code is this, or whose reason contains it (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// At most this many.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(clap::Subcommand)]
pub enum DeadLettersCmd {
    /// Show dead letters (the queue is left as it was).
    List(FilterArgs),
    /// Send dead letters back to the work queue as fresh work items.
    Requeue(FilterArgs),
    /// Delete dead letters for good (asks first).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Do not ask; for scripts.
        #[arg(long)]
        yes: bool,
    },
}

fn filter(args: &FilterArgs) -> Result<Filter, Failure> {
    Ok(Filter {
        tenant: args.tenant.as_deref().map(tenant_arg).transpose()?,
        reason: args.reason.clone().filter(|r| !r.is_empty()),
        limit: args.limit,
    })
}

pub async fn run(cmd: DeadLettersCmd) -> Outcome {
    let wanted = match &cmd {
        DeadLettersCmd::List(f) | DeadLettersCmd::Requeue(f) => filter(f)?,
        DeadLettersCmd::Purge { filter: f, yes } => {
            if !yes && !std::io::stdin().is_terminal() {
                return Err(Failure::usage(
                    "purge asks for confirmation on a terminal; pass --yes to purge without asking",
                ));
            }
            filter(f)?
        }
    };
    let parts = parts()?;
    let dead = parts.dead_letters();
    let failed = |e| Failure::Failed(anyhow::Error::new(e).context("RabbitMQ"));
    match cmd {
        DeadLettersCmd::List(_) => {
            let walked = dead.walk(&wanted, Action::List).await.map_err(failed)?;
            print_table(&walked.letters);
            println!(
                "{} of {} dead letters match",
                walked.matched, walked.examined
            );
        }
        DeadLettersCmd::Requeue(_) => {
            let walked = dead.walk(&wanted, Action::Requeue).await.map_err(failed)?;
            summary("requeued", &walked);
        }
        DeadLettersCmd::Purge { yes, .. } => {
            if !yes {
                let found = dead.walk(&wanted, Action::List).await.map_err(failed)?;
                if found.matched == 0 {
                    println!("no dead letter matches; nothing to purge");
                    return Ok(());
                }
                print_table(&found.letters);
                print!(
                    "Delete these {} dead letters for good? Type \"purge\" to confirm: ",
                    found.matched
                );
                let _ = std::io::stdout().flush();
                let mut answer = String::new();
                let _ = std::io::stdin().lock().read_line(&mut answer);
                if answer.trim() != "purge" {
                    println!("nothing purged");
                    return Ok(());
                }
            }
            let walked = dead.walk(&wanted, Action::Purge).await.map_err(failed)?;
            summary("purged", &walked);
        }
    }
    Ok(())
}

fn summary(verb: &str, walked: &Walked) {
    println!(
        "{verb} {} of {} dead letters",
        walked.moved, walked.examined
    );
    if walked.unreadable > 0 {
        println!(
            "{} selected dead letters are not readable work items and stayed in the dead queue",
            walked.unreadable
        );
    }
}

fn print_table(letters: &[DeadLetter]) {
    if letters.is_empty() {
        return;
    }
    println!(
        "{:<25} {:<36} {:<24} {:<18} {:>3}  {:<40} REASON",
        "DEAD AT", "TENANT", "CONTENT TYPE", "CODE", "TRY", "CONTENT ID"
    );
    // Every cell is outside text (headers of a message anyone with the queue could have put
    // there, Microsoft's error text): shown escaped, so it cannot drive the terminal, and on
    // one line (a newline is escaped too).
    let cell = |v: &Option<String>| Shown(v.as_deref().unwrap_or("-")).to_string();
    for l in letters {
        println!(
            "{:<25} {:<36} {:<24} {:<18} {:>3}  {:<40} {}",
            cell(&l.dead_at),
            cell(&l.tenant_id),
            cell(&l.content_type),
            cell(&l.code),
            l.attempt.map_or("-".into(), |a| a.to_string()),
            cell(&l.content_id),
            cell(&l.reason),
        );
    }
}
