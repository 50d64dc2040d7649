//! The command line: clap types, the dispatch of each subcommand to its module, and the
//! exit statuses scripts rely on.
//!
//! # Layout
//!
//! - [`key`]: `key import|list|show|history|rotate|rollback|revoke`, a file each.
//! - [`check`]: `check`, probe keys now.
//! - [`master_key`]: `master-key generate|rotate`.
//! - [`relay`]: `relay token new`, a relay client's token and its config lines.
//! - [`store`]: `store copy`, an installation moved between SQLite and PostgreSQL.
//! - [`check_config`], [`run`], [`demo`]: `check-config`, `run`, `demo`.
//! - [`setup`]: the config, database and master key every command past the config shares.
//! - [`render`]: rows to text — tables for people, JSON for scripts (`--json`).
//!
//! Secrets never come from argv (visible in `ps` and shell history), and listings print
//! fingerprints, never keys.

mod check;
mod check_config;
mod demo;
mod docs;
mod key;
mod master_key;
mod relay;
mod reload;
mod render;
mod run;
mod setup;
mod store;

use crate::logging::LogFormat;
use check::CheckArgs;
use clap::{Args, Parser, Subcommand};
use demo::DemoArgs;
use key::KeyCommand;
use master_key::MasterKeyCommand;
use relay::RelayCommand;
use setup::{GlobalPaths, Setup};
use std::path::PathBuf;
use store::StoreCommand;

/// Exit status for a bad configuration (sysexits.h EX_CONFIG).
pub(crate) const EXIT_CONFIG: i32 = 78;
/// Exit status of `check` when a key is invalid.
pub(crate) const EXIT_INVALID_KEY: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "keyrotd",
    version,
    about = "Rotates, checks, delivers and monitors API keys"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "KEYROTD_CONFIG")]
    config: Option<PathBuf>,
    /// SQLite database (default: from the config, else $STATE_DIRECTORY/keyrotd.db, else /var/lib/keyrotd/keyrotd.db).
    #[arg(long, global = true, env = "KEYROTD_DATABASE")]
    database: Option<PathBuf>,
    /// Master key file (default: $CREDENTIALS_DIRECTORY/master-key, else /etc/keyrotd/master.key).
    #[arg(long, global = true, env = "KEYROTD_MASTER_KEY")]
    master_key: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoint: a web-config YAML file as node_exporter
    /// reads it (overrides `[daemon] web_config_file`).
    #[arg(
        long = "web.config.file",
        global = true,
        value_name = "PATH",
        env = "KEYROTD_WEB_CONFIG_FILE"
    )]
    web_config_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the config file; exit 0 if valid, 78 otherwise.
    CheckConfig(CheckConfigArgs),
    /// Check the config as a reload would, then tell the running daemon (PID) to reload it;
    /// exit 78 without signalling if the config is bad. What `systemctl reload` runs.
    Reload(ReloadArgs),
    /// Manage key versions.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Probe keys at their providers now and print the results; exit 2 if a key is invalid.
    Check(CheckArgs),
    /// Run a self-contained demo: simulated providers on loopback, keys rotated every
    /// minute (see --schedule), metrics live. No network, no config.
    Demo(DemoArgs),
    /// Manage the master key that seals stored secrets.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
    /// Operate on a whole store: copy an installation between SQLite and PostgreSQL.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The local relay: `relay token new NAME` makes a client token and its config lines.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, keyrotd(1), in roff (`keyrotd man | man -l -`).
    Man,
}

#[derive(Debug, Args)]
struct CheckConfigArgs {
    /// Also try every delivery target as this process would write to it (directory
    /// writable, chown possible, Kubernetes token readable, hook found); exit 78 on any
    /// problem.
    #[arg(long)]
    preflight: bool,
}

#[derive(Debug, Args)]
struct ReloadArgs {
    /// The daemon's process id (`$MAINPID` in the unit's ExecReload=).
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    pid: u32,
}

#[derive(Debug, Args)]
struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// An error that maps to a specific exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

/// Prints a command-line error. A stray positional argument is the classic way a key lands
/// on a command line (`key import NAME sk-...`), so such arguments are never echoed back.
pub fn report_usage_error(error: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::UnknownArgument | ErrorKind::TooManyValues => {
            eprintln!(
                "error: unexpected argument (not shown, in case it is a key: keys are read from stdin or --from-file, never from the command line)\n\nFor more information, try '--help'."
            );
            std::process::ExitCode::from(2)
        }
        _ => {
            let _ = error.print();
            std::process::ExitCode::from(error.exit_code() as u8)
        }
    }
}

/// Runs a parsed command line. `master-key generate`, `demo`, `store` and `relay` need no config; every
/// other command fails with [`EXIT_CONFIG`] before it starts if the config is bad.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        config,
        database,
        master_key,
        web_config_file,
        log_format: _,
        command,
    } = cli;
    let paths = GlobalPaths {
        config,
        database,
        master_key,
        web_config_file,
    };
    match command {
        Command::MasterKey(MasterKeyCommand::Generate { path }) => master_key::generate(&path),
        Command::Demo(args) => demo::run(args).await,
        Command::Store(command) => store::run(command).await,
        Command::Relay(command) => relay::run(command),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
        Command::Run => run::run(Setup::load(paths)?).await,
        Command::CheckConfig(args) => check_config::run(&Setup::load(paths)?, args.preflight),
        Command::Reload(args) => reload::run(&Setup::load(paths)?, args.pid),
        Command::Key(command) => key::run(command, &Setup::load(paths)?).await,
        Command::Check(args) => check::run(args, &Setup::load(paths)?).await,
        Command::MasterKey(MasterKeyCommand::Rotate { new_key }) => {
            master_key::rotate(&new_key, &Setup::load(paths)?).await
        }
    }
}

/// Who did it, for the audit trail: the invoking user.
fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
