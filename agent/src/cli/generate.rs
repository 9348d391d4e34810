//! `parley completions SHELL` and `parley man`: shell completions and the man page,
//! generated from the same definitions as `--help` so they never drift.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory;

use super::Cli;

/// Arguments of `parley completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley completions bash > ~/.local/share/bash-completion/completions/parley
  parley completions zsh > ~/.zfunc/_parley
  parley completions fish > ~/.config/fish/completions/parley.fish")]
pub struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Prints completions for a shell on stdout.
pub fn completions(args: CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "parley", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// Arguments of `parley man`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  parley man | man -l -
  parley man --dir /tmp/man && man -l /tmp/man/parley-run.1")]
pub struct ManArgs {
    /// Write one page per command (parley.1, parley-run.1, parley-identity-init.1, …)
    /// into this existing directory instead of printing the main page
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the main man page (roff) on stdout, or writes every page into a directory.
pub fn man(args: ManArgs) -> ExitCode {
    let result = match &args.dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir),
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &args.dir {
                Some(dir) => eprintln!("error: cannot write man pages to {}: {e}", dir.display()),
                None => eprintln!("error: cannot write the man page: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
