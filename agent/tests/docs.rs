//! The reference docs cover what the binary offers: every command has its section in
//! docs/cli.md and every config key its row in docs/configuration.md, so adding either
//! without documenting it fails here.

use std::path::Path;

use clap::CommandFactory;
use parley_agent::cli::Cli;

fn doc(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_command_is_in_the_cli_reference() {
    let reference = doc("cli.md");
    let cli = Cli::command();
    let mut missing = Vec::new();
    for command in cli.get_subcommands() {
        let name = command.get_name();
        if !reference.contains(&format!("### parley {name}\n")) {
            missing.push(format!("parley {name}"));
        }
        for sub in command.get_subcommands() {
            let full = format!("parley {name} {}", sub.get_name());
            if !reference.contains(&full) {
                missing.push(full);
            }
        }
    }
    assert!(missing.is_empty(), "docs/cli.md lacks {missing:?}");
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let reference = doc("configuration.md");
    let packaged = doc("../packaging/agent.toml");
    // The packaged file is checked against the config struct in the agent's unit tests;
    // its keys are the agent's keys.
    let keys: Vec<&str> = packaged
        .lines()
        .filter_map(|line| {
            line.strip_prefix("# ")?
                .split_once(" = ")
                .map(|(key, _)| key)
        })
        .filter(|key| !key.contains(' '))
        .collect();
    assert!(
        keys.len() >= 7,
        "found only {keys:?} in packaging/agent.toml"
    );
    for key in keys {
        assert!(
            reference.contains(&format!("| `{key}` |")),
            "docs/configuration.md has no row for `{key}`"
        );
    }
}
