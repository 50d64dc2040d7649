//! README.md's "Command line" section names every long flag of every subcommand, as
//! `keyrotd <command> --help` lists them: a flag added to the binary and not to the README
//! fails here instead of going unnoticed.

mod common;

use common::{assert_success, bare_command, run_command, stdout};
use std::collections::BTreeMap;

/// The `--help` text of `keyrotd <command...>`.
fn help(command: &[String]) -> String {
    let out = run_command(bare_command().args(command).arg("--help"), "");
    assert_success(&out, &format!("keyrotd {} --help", command.join(" ")));
    stdout(&out)
}

/// The lines of one `Heading:` section of a help text, up to the next blank line.
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|line| *line != heading)
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .collect()
}

/// The subcommands a help text lists (`help` itself aside).
fn subcommands(help: &str) -> Vec<String> {
    section(help, "Commands:")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

/// The long flags a help text lists: `--config`, `--web.config.file`, ...
fn long_flags(help: &str) -> Vec<String> {
    section(help, "Options:")
        .iter()
        .filter(|line| line.trim_start().starts_with('-'))
        .flat_map(|line| line.split([' ', ',']))
        .filter(|word| word.starts_with("--"))
        .map(String::from)
        .collect()
}

/// Every command line with subcommands below it, depth first: [], [run], [key], [key, list], ...
fn command_lines() -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![Vec::new()];
    while let Some(command) = pending.pop() {
        for sub in subcommands(&help(&command)) {
            let mut deeper = command.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
        found.push(command);
    }
    found
}

/// README.md from `## Command line` up to the next `## ` heading.
fn readme_command_line_section() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let start = readme
        .find("\n## Command line\n")
        .expect("README.md has a `## Command line` section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

/// Whether `text` names `flag` as a whole word (`--json` is not `--json-lines`).
fn names_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        !text[at + flag.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || "-._".contains(c))
    })
}

#[test]
fn readme_names_every_long_flag_of_every_subcommand() {
    let readme = readme_command_line_section();
    let commands = command_lines();
    assert!(
        commands.len() > 10,
        "found too few subcommands to trust the help parsing: {commands:?}"
    );
    // flag -> the commands that take it, for a message that names each flag once.
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for command in &commands {
        let flags = long_flags(&help(command));
        assert!(
            flags.iter().any(|f| f == "--help"),
            "no flags parsed from `keyrotd {} --help`",
            command.join(" ")
        );
        for flag in flags {
            if !names_flag(&readme, &flag) {
                let name = format!("keyrotd {}", command.join(" "));
                missing
                    .entry(flag)
                    .or_default()
                    .push(name.trim_end().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's `## Command line` section does not name these flags:\n{}",
        missing
            .iter()
            .map(|(flag, commands)| format!("{flag} (of {})", commands.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn flag_names_match_whole_words_only() {
    assert!(names_flag("`--json`", "--json"));
    assert!(names_flag("[--dir DIR]", "--dir"));
    assert!(!names_flag("--json-lines", "--json"));
    assert!(!names_flag("--web.config.file", "--web"));
}
