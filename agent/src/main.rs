//! The `parley` binary: the agent daemon and the CLI that talks to it.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use parley_agent::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon logs what it does; client commands stay quiet unless asked (PARLEY_LOG).
    let default_level = match cli.command {
        Command::Agent(_) | Command::Join(_) => "info",
        _ => "warn",
    };
    let filter =
        EnvFilter::try_from_env("PARLEY_LOG").unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in journald or a file they are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    cli.execute()
}
