//! `asdlc completions SHELL` and `asdlc man`: generated from the command definitions, so they
//! never fall behind them.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{CliError, EXIT_OK};

pub fn completions(shell: clap_complete::Shell) -> Result<u8, CliError> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "asdlc", &mut out);
    write(&out)
}

pub fn man() -> Result<u8, CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| CliError::Failed(format!("cannot render the manual page: {e}")))?;
    write(&out)
}

fn write(bytes: &[u8]) -> Result<u8, CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|_| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => CliError::BrokenPipe,
            _ => CliError::Failed(format!("cannot write the output: {e}")),
        })?;
    Ok(EXIT_OK)
}
