//! Completions and the man page come from the CLI definition, through the binary.

use std::process::Command;

fn parley(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_parley"))
        .args(args)
        .output()
        .expect("run parley");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script) = parley(&["completions", shell]);
        assert!(ok, "{shell}");
        for subcommand in ["agent", "run", "ps", "rm", "status", "events", "identity"] {
            assert!(
                script.contains(subcommand),
                "{shell} completions lack {subcommand}"
            );
        }
    }
    let (ok, _) = parley(&["completions", "tcsh"]);
    assert!(!ok, "an unknown shell was accepted");
}

#[test]
fn the_man_page_documents_the_commands() {
    let (ok, page) = parley(&["man"]);
    assert!(ok);
    assert!(
        page.starts_with(".ie") || page.contains(".TH parley"),
        "not roff: {}",
        &page[..page.len().min(200)]
    );
    for needle in ["parley\\-run", "parley\\-agent", "PARLEY_API_SOCKET"] {
        assert!(page.contains(needle), "the man page lacks {needle}");
    }
}
