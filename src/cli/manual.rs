//! `sonotap manual`: the man pages, one per command (`sonotap.1`,
//! `sonotap-hub-serve.1`, …), rendered from the same definitions as
//! `--help` so they cannot drift from it. The Debian package ships them.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::Cli;

/// Writes a page for the program and for every subcommand under `dir`
/// (created if missing); returns how many were written.
pub fn write_pages(dir: &Path) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut root = Cli::command();
    // Building names every subcommand for its page: `sonotap-hub-serve`.
    root.build();
    write_tree(&root, dir)
}

fn write_tree(command: &clap::Command, dir: &Path) -> Result<usize> {
    let name = command
        .get_display_name()
        .unwrap_or_else(|| command.get_name());
    let mut text = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut text)
        .with_context(|| format!("cannot render the page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let mut written = 1;
    // clap's generated `help` subcommands are not commands of ours.
    let ours = command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help");
    for sub in ours {
        written += write_tree(sub, dir)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_has_a_page_that_names_it_and_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_pages(dir.path()).unwrap();
        assert!(written > 40, "only {written} pages");
        let serve = fs::read_to_string(dir.path().join("sonotap-hub-serve.1")).unwrap();
        assert!(serve.contains("sonotap\\-hub\\-serve"), "{serve}");
        assert!(serve.contains("\\-\\-listen"), "{serve}");
        let run = fs::read_to_string(dir.path().join("sonotap-run.1")).unwrap();
        assert!(run.contains("\\-\\-config"), "{run}");
        // `help` is clap's, not a command of ours.
        assert!(!dir.path().join("sonotap-help.1").exists());
    }
}
