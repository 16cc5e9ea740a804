//! `asdlc`: the operator's command-line tool for asdlc event streams.
//!
//! `asdlc --help` lists the commands and the exit statuses. Every error is one line on
//! stderr, prefixed `asdlc: error:`; nothing panics on bad input, and a panic (a bug) is one
//! line too, with exit status 70.

mod cli;
mod cmd;
mod ctx;
mod entries;
mod error;
mod fmt;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use crate::cli::Cli;
use crate::error::{CliError, EXIT_INTERNAL, EXIT_USAGE};

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "asdlc: internal error: {}{at}",
            payload.replace(['\n', '\r'], " ")
        );
        std::process::exit(i32::from(EXIT_INTERNAL));
    }));

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&CliError::Failed(format!("cannot start: {e}"))),
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(&e),
    }
}

/// Help and version go to stdout with status 0; anything else is a one-line error, status 2.
fn usage_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            eprintln!("asdlc: error: a command is required (see `asdlc --help`)");
            ExitCode::from(EXIT_USAGE)
        }
        _ => {
            eprintln!("asdlc: error: {} (see `asdlc --help`)", first_paragraph(&e));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The first paragraph of clap's message (what is wrong, with the arguments it lists), as one
/// line; the usage and tips after it are left out.
fn first_paragraph(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let text = rendered
        .trim_start()
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match text.strip_prefix("error: ") {
        Some(rest) => rest.to_owned(),
        None if text.is_empty() => "invalid arguments".to_owned(),
        None => text,
    }
}

fn fail(e: &CliError) -> ExitCode {
    if !matches!(e, CliError::BrokenPipe) {
        eprintln!("asdlc: error: {}", e.to_string().replace(['\n', '\r'], " "));
    }
    ExitCode::from(e.exit_code())
}
