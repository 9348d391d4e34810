//! `parley completions SHELL` and `parley man`: shell completions and the man page,
//! generated from the same definitions as `--help` so they never drift.

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

/// Prints the man page (roff) on stdout: `parley man | man -l -`.
pub fn man() -> ExitCode {
    let page = clap_mangen::Man::new(Cli::command());
    match page.render(&mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}
