//! `o365-relay`: the service and its operator CLI (README.md, "Running it"); each command lives
//! in `cli/`.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(cli::run(cli)),
        Err(e) => {
            eprintln!("o365-relay: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
