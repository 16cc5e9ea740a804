//! One module per subcommand; [`run`] dispatches. To add a subcommand, add a variant to
//! [`crate::cli::Command`], a module here with `pub async fn run(ctx: &mut Ctx, ...) ->
//! Result<u8, CliError>` returning the exit status, and an arm below.

mod completions;
mod dashboard;
mod dlq;
mod functions;
mod gates;
mod health;
mod info;
mod pending;
mod publish;
mod recover;
mod scheduled;
mod tail;
mod tenant;
mod top;
mod trim;

use crate::cli::{Cli, Command};
use crate::ctx::Ctx;
use crate::error::CliError;

/// Runs the command `cli` names; returns the exit status.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    // These need no configuration, so a bad REDIS_URL does not stop them.
    match &cli.command {
        Command::Completions { shell } => return completions::completions(*shell),
        Command::Man => return completions::man(),
        _ => {}
    }
    let mut ctx = Ctx::new(&cli)?;
    match cli.command {
        Command::Info => info::run(&mut ctx).await,
        Command::Health(args) => health::run(&mut ctx, args).await,
        Command::Tail(args) => tail::run(&mut ctx, args).await,
        Command::Pending(args) => pending::run(&mut ctx, args).await,
        Command::Dlq(command) => dlq::run(&mut ctx, command).await,
        Command::Scheduled(command) => scheduled::run(&mut ctx, command).await,
        Command::Gates(args) => gates::run(&mut ctx, args).await,
        Command::Publish(args) => publish::run(&mut ctx, *args).await,
        Command::Recover(args) => recover::run(&mut ctx, args).await,
        Command::Trim(args) => trim::run(&mut ctx, args).await,
        Command::Tenant(command) => tenant::run(&mut ctx, command).await,
        Command::Functions(command) => functions::run(&mut ctx, command).await,
        Command::Dashboard(args) => dashboard::run(&mut ctx, args).await,
        Command::Top(args) => top::run(&mut ctx, args).await,
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
    }
}
