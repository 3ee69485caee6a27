//! tenantctl, the operator CLI of tenantd: parse the command line, connect
//! to the server, hand the command to its group's module, and turn any
//! failure into one `tenantctl: …` report on stderr and an exit code.
//!
//! Each command group (`tenants`, `upgrade`, `users`, …) lives in a module
//! of its own that owns its arguments, its calls and its output; `users`,
//! `members` and `sessions` share the `identity` module.

mod audit;
mod cli;
mod clusters;
mod error;
mod events;
mod health;
mod identity;
mod output;
mod pages;
mod session;
mod tenants;
mod upgrade;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::CliError;
use crate::session::Session;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(CliError::Failed(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Nothing sensible is left to do if stderr itself is gone.
            let _ = writeln!(std::io::stderr().lock(), "tenantctl: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let session = Session::connect(&cli.global).await?;
    match cli.command {
        Command::Tenants { command } => tenants::run(command, &session).await,
        Command::Upgrade { command } => upgrade::run(command, &session).await,
        Command::Audit { command } => audit::run(command, &session).await,
        Command::Clusters { command } => clusters::run(command, &session).await,
        Command::Health => health::run(&session).await,
        Command::Events { command } => events::run(command, &session).await,
        Command::Users { command } => identity::users::run(command, &session).await,
        Command::Members { command } => identity::members::run(command, &session).await,
        Command::Sessions { command } => identity::sessions::run(command, &session).await,
    }
}
