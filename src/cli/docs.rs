//! `keyrotd completions SHELL` and `keyrotd man`: the shell completion scripts and the
//! manual page, generated from the same clap definitions as `--help`, so they cannot
//! disagree with the binary. The Debian package ships both (`packaging/build-deb.sh`).

use super::Cli;
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;

/// Writes the completion script for `shell` to stdout.
pub(crate) fn completions(shell: Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "keyrotd", &mut std::io::stdout());
    Ok(())
}

/// Writes `keyrotd(1)` (roff) to stdout: the top-level page, then a section per subcommand
/// with its own options, so one page documents every command line.
pub(crate) fn man() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        write_subcommand(&mut out, &format!("keyrotd {}", sub.get_name()), sub)?;
    }
    out.flush()?;
    Ok(())
}

fn write_subcommand(
    out: &mut impl Write,
    name: &str,
    command: &clap::Command,
) -> anyhow::Result<()> {
    let nested: Vec<&clap::Command> = command
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    if nested.is_empty() {
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let page = clap_mangen::Man::new(
            command
                .clone()
                .display_name(name.to_string())
                .bin_name(name.to_string()),
        );
        page.render_description_section(out)?;
        page.render_synopsis_section(out)?;
        page.render_options_section(out)?;
    }
    for sub in nested {
        write_subcommand(out, &format!("{name} {}", sub.get_name()), sub)?;
    }
    Ok(())
}
