//! The command line: clap types and the dispatch of each subcommand.
//!
//! Secrets never come from argv (visible in `ps` and shell history): `key import` reads
//! stdin or a file. Listing commands print fingerprints, never keys; `--json` for scripts.

use crate::checks::{self, CheckTarget, Checker};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, ConfigError};
use crate::crypto::MasterKey;
use crate::daemon::{self, DaemonSettings};
use crate::logging::LogFormat;
use crate::model::CheckStatus;
use crate::model::{Stage, UnixTime};
use crate::providers::ProviderTelemetry;
use crate::rotation::{self, CredentialRuntime, Engine};
use crate::store::SqliteStore;
use crate::store::{
    credential_specs, open_store, AuditStore, CredentialStore, KeyStore, KeyVersion, MasterKeyNeed,
    NewKey, StateStore,
};
use crate::web_config::WebConfig;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use serde_json::json;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroize;

/// Exit status for a bad configuration (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: i32 = 78;
/// Exit status of `check` when a key is invalid.
pub const EXIT_INVALID_KEY: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "keyrotd",
    version,
    about = "Rotates, checks, delivers and monitors API keys"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "KEYROTD_CONFIG")]
    pub config: Option<PathBuf>,
    /// SQLite database (default: from the config, else $STATE_DIRECTORY/keyrotd.db, else /var/lib/keyrotd/keyrotd.db).
    #[arg(long, global = true, env = "KEYROTD_DATABASE")]
    pub database: Option<PathBuf>,
    /// Master key file (default: $CREDENTIALS_DIRECTORY/master-key, else /etc/keyrotd/master.key).
    #[arg(long, global = true, env = "KEYROTD_MASTER_KEY")]
    pub master_key: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoint: a web-config YAML file as node_exporter
    /// reads it (overrides `[daemon] web_config_file`).
    #[arg(
        long = "web.config.file",
        global = true,
        value_name = "PATH",
        env = "KEYROTD_WEB_CONFIG_FILE"
    )]
    pub web_config_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run,
    /// Validate the config file; exit 0 if valid, 78 otherwise.
    CheckConfig,
    /// Manage key versions.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Probe keys at their providers now and print the results; exit 2 if a key is invalid.
    Check {
        /// Only this credential (default: all).
        name: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Run a self-contained demo: simulated providers on loopback, keys rotated every
    /// minute (see --schedule), metrics live. No network, no config.
    Demo {
        /// Keep the demo's state in this directory (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to serve /metrics.
        #[arg(long, default_value = config::DEFAULT_LISTEN_ADDRESS)]
        listen_address: std::net::SocketAddr,
        /// When the demo credentials rotate: a cron expression, 5 fields or 6 with seconds
        /// first (UTC). "*/10 * * * * *" rotates every 10 seconds.
        #[arg(long, default_value = crate::demo::DEFAULT_SCHEDULE, value_name = "CRON")]
        schedule: String,
    },
    /// Manage the master key that seals stored secrets.
    #[command(subcommand)]
    MasterKey(MasterKeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Store a key for a credential, read from stdin (or --from-file); never from argv.
    Import {
        name: String,
        /// Read the key from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// When the key expires: RFC 3339 (2026-12-31T00:00:00Z), a date (2026-12-31) or Unix seconds.
        #[arg(long, value_parser = parse_time)]
        expires_at: Option<UnixTime>,
    },
    /// List credentials and their live keys.
    List(JsonFlag),
    /// Rotate a credential now (issue, verify, deliver, promote).
    Rotate { name: String },
    /// Put the previous key back as current (inside its grace period).
    Rollback { name: String },
    /// Revoke one key version at the provider and drop its secret (never the current one).
    Revoke {
        name: String,
        /// The version number (see `key show NAME`).
        #[arg(long)]
        version: i64,
    },
    /// Show one credential and all its key versions.
    Show {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the audit trail of one credential.
    History {
        name: String,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Write a new random 256-bit master key to PATH (mode 0600; never overwrites).
    Generate { path: PathBuf },
    /// Re-seal every stored secret under the key in NEW_KEY (made with `generate`), in one
    /// transaction; the current key comes from --master-key. Stop the daemon first, then
    /// install NEW_KEY in place of the old key file and start it again.
    Rotate {
        #[arg(long)]
        new_key: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Accepts RFC 3339, a plain date (midnight UTC) or Unix seconds.
fn parse_time(text: &str) -> Result<UnixTime, String> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.timestamp());
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp());
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-12-31T00:00:00Z), a date (2026-12-31) or Unix seconds"
    ))
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

/// Loads the config: an explicit path must exist; the default path may be absent (defaults).
fn load_config(cli: &Cli) -> Result<(PathBuf, Config), ConfigError> {
    match &cli.config {
        Some(path) => Config::load(path).map(|c| (path.clone(), c)),
        None => {
            let path = PathBuf::from(config::DEFAULT_CONFIG_PATH);
            if path.exists() {
                Config::load(&path).map(|c| (path, c))
            } else {
                Config::parse(&path, "").map(|c| (path, c))
            }
        }
    }
}

/// Loads the web config named on the command line or in the config, if any. Relative paths
/// in the config file are relative to its directory.
fn load_web_config(
    cli: &Cli,
    config_path: &Path,
    config: &Config,
) -> Result<Option<Arc<WebConfig>>, ExitError> {
    let path = match (&cli.web_config_file, &config.daemon.web_config_file) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) if path.is_relative() => {
            config_path.parent().unwrap_or(Path::new(".")).join(path)
        }
        (None, Some(path)) => path.clone(),
        (None, None) => return Ok(None),
    };
    WebConfig::load(&path)
        .map(|web| Some(Arc::new(web)))
        .map_err(|error| ExitError {
            code: EXIT_CONFIG,
            message: error.to_string(),
        })
}

fn database_path(cli: &Cli, config: &Config) -> PathBuf {
    cli.database
        .clone()
        .or_else(|| config.daemon.database.clone())
        .unwrap_or_else(config::default_database_path)
}

/// Runs a parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::MasterKey(MasterKeyCommand::Generate { path }) = &cli.command {
        MasterKey::generate().write_new(path)?;
        println!("wrote a new master key to {}", path.display());
        return Ok(());
    }
    if let Command::Demo {
        dir,
        listen_address,
        schedule,
    } = cli.command
    {
        return crate::demo::run(crate::demo::DemoOptions {
            dir,
            listen_address,
            schedule,
        })
        .await;
    }
    let (config_path, config) = load_config(&cli).map_err(|error| ExitError {
        code: EXIT_CONFIG,
        message: error.to_string(),
    })?;
    let database = database_path(&cli, &config);
    let web_config = match cli.command {
        Command::Run | Command::CheckConfig => load_web_config(&cli, &config_path, &config)?,
        _ => None,
    };
    match cli.command {
        Command::CheckConfig => {
            if let Some(web) = &web_config {
                println!("{}: ok", web.file().display());
            }
            println!(
                "{}: ok ({} providers, {} credentials)",
                config_path.display(),
                config.providers.len(),
                config.credentials.len()
            );
            Ok(())
        }
        Command::Run => {
            daemon::run(DaemonSettings {
                config_path,
                config,
                database,
                master_key: cli.master_key,
                web_config,
            })
            .await
        }
        Command::Key(command) => {
            key_command(command, &config, &database, cli.master_key.as_deref()).await
        }
        Command::Check {
            name,
            json: JsonFlag { json },
        } => check_command(name, json, &config, &database, cli.master_key.as_deref()).await,
        Command::MasterKey(MasterKeyCommand::Rotate { new_key }) => {
            let new = crate::crypto::Sealer::new(&MasterKey::load(&new_key)?);
            let store =
                open_store(&database, cli.master_key.as_deref(), MasterKeyNeed::Always).await?;
            let count = store
                .reseal(&new, &actor(), chrono::Utc::now().timestamp())
                .await?;
            store.close().await;
            println!(
                "re-sealed {count} secrets under {}; install it in place of the old master key before the daemon starts again",
                new_key.display()
            );
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::Generate { .. }) | Command::Demo { .. } => {
            unreachable!("handled before the config is loaded")
        }
    }
}

async fn key_command(
    command: KeyCommand,
    config: &Config,
    database: &Path,
    master_key: Option<&Path>,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    let need = match command {
        KeyCommand::Import { .. }
        | KeyCommand::Rotate { .. }
        | KeyCommand::Rollback { .. }
        | KeyCommand::Revoke { .. } => MasterKeyNeed::Always,
        _ => MasterKeyNeed::Never,
    };
    let store = open_store(database, master_key, need).await?;
    store
        .sync_credentials(&credential_specs(config), now)
        .await?;
    match command {
        KeyCommand::Import {
            name,
            from_file,
            expires_at,
        } => {
            if config.credential(&name).is_none() {
                bail!("unknown credential {name:?}: add a [[credential]] with this name to the config first");
            }
            let secret = read_secret(from_file.as_deref())?;
            let version = store
                .import_key(
                    &name,
                    NewKey {
                        secret,
                        expires_at,
                        provider_key_id: None,
                        rotation_id: None,
                    },
                    &actor(),
                    now,
                )
                .await?;
            println!(
                "imported {} for {name} as version {} ({})",
                version.fingerprint, version.id, version.stage
            );
            if version.stage == Stage::Current {
                // The credential's first key: hand it to the consumers right away.
                let (engine, runtime) = rotation_context(config, store, &name)?;
                let delivered = engine.deliver_current(&runtime).await?;
                if delivered > 0 {
                    println!("delivered {} to {delivered} targets", version.fingerprint);
                }
            } else if version.stage == Stage::Pending {
                // A replacement key: verify, deliver and promote it now, like any rotation.
                let (engine, runtime) = rotation_context(config, store, &name)?;
                let rotated = engine.rotate(&runtime, &actor()).await?;
                println!(
                    "verified, delivered and promoted {} (rotation {})",
                    rotated.fingerprint, rotated.rotation_id
                );
            }
            Ok(())
        }
        KeyCommand::Rotate { name } => {
            let (engine, runtime) = rotation_context(config, store, &name)?;
            let rotated = engine.rotate(&runtime, &actor()).await?;
            println!(
                "rotated {name}: {} is current (rotation {})",
                rotated.fingerprint, rotated.rotation_id
            );
            Ok(())
        }
        KeyCommand::Rollback { name } => {
            let (engine, runtime) = rotation_context(config, store, &name)?;
            let restored = engine.rollback(&runtime, &actor()).await?;
            println!(
                "rolled back {name}: {} (version {}) is current again",
                restored.fingerprint, restored.id
            );
            Ok(())
        }
        KeyCommand::Revoke { name, version } => {
            let versions = store.versions(&name).await?;
            let target = versions
                .iter()
                .find(|v| v.id == version)
                .with_context(|| format!("{name} has no version {version}"))?
                .clone();
            let (engine, runtime) = rotation_context(config, store, &name)?;
            engine
                .revoke_version(&runtime, &target, &actor(), "revoked by an operator")
                .await?;
            println!(
                "revoked {} (version {version}) of {name}",
                target.fingerprint
            );
            Ok(())
        }
        KeyCommand::List(JsonFlag { json }) => {
            let snapshot = store.snapshot().await?;
            let mut rows = Vec::new();
            for state in &snapshot.credentials {
                let versions = store.versions(&state.credential.name).await?;
                let live: Vec<&KeyVersion> = versions
                    .iter()
                    .filter(|v| {
                        matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous)
                    })
                    .collect();
                if live.is_empty() {
                    rows.push((state.credential.clone(), None));
                }
                for version in live {
                    rows.push((state.credential.clone(), Some(version.clone())));
                }
            }
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(c, v)| {
                        json!({
                            "credential": c.name,
                            "provider": c.provider,
                            "stage": v.as_ref().map(|v| v.stage.as_str()),
                            "version": v.as_ref().map(|v| v.id),
                            "fingerprint": v.as_ref().map(|v| &v.fingerprint),
                            "created_at": v.as_ref().map(|v| v.created_at),
                            "age_seconds": v.as_ref().map(|v| now - v.created_at),
                            "expires_at": v.as_ref().and_then(|v| v.expires_at),
                            "last_check_at": v.as_ref().and_then(|v| v.last_check_at),
                            "last_check_status": v.as_ref().and_then(|v| v.last_check_status).map(|s| s.as_str()),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                let mut table = Table::new(&[
                    "CREDENTIAL",
                    "PROVIDER",
                    "STAGE",
                    "FINGERPRINT",
                    "AGE",
                    "EXPIRES",
                    "LAST CHECK",
                ]);
                for (c, v) in &rows {
                    match v {
                        Some(v) => table.row(vec![
                            c.name.clone(),
                            c.provider.clone(),
                            v.stage.to_string(),
                            v.fingerprint.clone(),
                            human_age(now - v.created_at),
                            v.expires_at
                                .map(|e| relative(now, e))
                                .unwrap_or_else(|| "-".into()),
                            check_summary(v, now),
                        ]),
                        None => table.row(vec![
                            c.name.clone(),
                            c.provider.clone(),
                            "-".into(),
                            "(no key)".into(),
                            "-".into(),
                            "-".into(),
                            "-".into(),
                        ]),
                    }
                }
                print!("{}", table.render());
            }
            Ok(())
        }
        KeyCommand::Show {
            name,
            json: JsonFlag { json },
        } => {
            let credential = store
                .credential(&name)
                .await?
                .with_context(|| format!("unknown credential {name:?}"))?;
            let versions = store.versions(&name).await?;
            if json {
                let items: Vec<_> = versions.iter().map(version_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "credential": credential.name,
                        "provider": credential.provider,
                        "provider_kind": credential.provider_kind,
                        "check_status": credential.check_status.map(|s| s.as_str()),
                        "valid": credential.valid,
                        "last_check_at": credential.last_check_at,
                        "next_rotation_at": credential.next_rotation_at,
                        "last_rotated_at": credential.last_rotated_at,
                        "consecutive_failures": credential.consecutive_failures,
                        "versions": items,
                    }))?
                );
            } else {
                println!("credential:   {}", credential.name);
                println!(
                    "provider:     {} ({})",
                    credential.provider, credential.provider_kind
                );
                println!(
                    "last check:   {}",
                    match (credential.check_status, credential.last_check_at) {
                        (Some(status), Some(at)) => format!(
                            "{status} {} ago{}",
                            human_age(now - at),
                            credential
                                .check_detail
                                .as_deref()
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default()
                        ),
                        _ => "never".into(),
                    }
                );
                println!(
                    "next rotation: {}",
                    credential
                        .next_rotation_at
                        .map(|t| relative(now, t))
                        .unwrap_or_else(|| "not scheduled".into())
                );
                println!();
                let mut table = Table::new(&[
                    "VERSION",
                    "STAGE",
                    "FINGERPRINT",
                    "CREATED",
                    "EXPIRES",
                    "LAST CHECK",
                    "PROVIDER KEY ID",
                ]);
                for v in &versions {
                    table.row(vec![
                        v.id.to_string(),
                        v.stage.to_string(),
                        v.fingerprint.clone(),
                        format!("{} ago", human_age(now - v.created_at)),
                        v.expires_at
                            .map(|e| relative(now, e))
                            .unwrap_or_else(|| "-".into()),
                        check_summary(v, now),
                        v.provider_key_id.clone().unwrap_or_else(|| "-".into()),
                    ]);
                }
                print!("{}", table.render());
            }
            Ok(())
        }
        KeyCommand::History {
            name,
            json: JsonFlag { json },
        } => {
            if store.credential(&name).await?.is_none() {
                bail!("unknown credential {name:?}");
            }
            let events = store.events(&name).await?;
            if json {
                let items: Vec<_> = events
                    .iter()
                    .map(|e| json!({"id": e.id, "at": e.at, "kind": e.kind, "actor": e.actor, "version": e.version_id, "detail": e.detail}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                let mut table = Table::new(&["TIME (UTC)", "EVENT", "VERSION", "ACTOR", "DETAIL"]);
                for e in &events {
                    table.row(vec![
                        format_time(e.at),
                        e.kind.clone(),
                        e.version_id
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        e.actor.clone(),
                        e.detail.clone(),
                    ]);
                }
                print!("{}", table.render());
            }
            Ok(())
        }
    }
}

async fn check_command(
    name: Option<String>,
    json: bool,
    config: &Config,
    database: &Path,
    master_key: Option<&Path>,
) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(open_store(database, master_key, MasterKeyNeed::Always).await?);
    store
        .sync_credentials(&credential_specs(config), clock.now())
        .await?;
    let telemetry = ProviderTelemetry::new();
    let mut targets = checks::build_targets(config, &telemetry)?;
    if let Some(name) = &name {
        targets.retain(|t| *t.credential == **name);
        if targets.is_empty() {
            bail!("unknown credential {name:?}");
        }
    }
    let checker = Arc::new(Checker::new(
        store.clone(),
        clock.clone(),
        config.checks.max_concurrent,
        0.0,
    ));
    // The sweep runs as a task on the runtime's workers, not on this thread under
    // `block_on`: there, each finished check's permit woke this thread through a futex, and
    // each check it spawned had to wake a worker (4,000 context switches of this thread in a
    // sweep of 10,000 keys). Only the sweep: with every command run as a task, the daemon
    // at 100,000 credentials kept ~45 MiB more resident from READY on (BENCHMARKS.md).
    let targets: Arc<[CheckTarget]> = targets.into();
    let sweep = tokio::spawn({
        let targets = targets.clone();
        async move { checker.check_all(&targets).await }
    });
    let outcomes = match sweep.await {
        Ok(outcomes) => outcomes?,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => return Err(error.into()),
    };
    let mut any_invalid = false;
    let mut rows = Vec::new();
    for (target, outcome) in targets.iter().zip(outcomes) {
        match outcome {
            Ok(outcome) => {
                any_invalid |= outcome.report.status == CheckStatus::Invalid;
                rows.push((target, Some(outcome), None));
            }
            Err(error) => rows.push((target, None, Some(error.to_string()))),
        }
    }
    if json {
        let items: Vec<_> = rows
            .iter()
            .map(|(t, o, e)| {
                json!({
                    "credential": t.credential,
                    "provider": t.provider_name,
                    "fingerprint": o.as_ref().map(|o| &o.fingerprint),
                    "status": o.as_ref().map(|o| o.report.status.as_str()),
                    "detail": o.as_ref().map(|o| o.report.detail.clone()).or_else(|| e.clone()),
                    "http_status": o.as_ref().and_then(|o| o.report.http_status),
                    "retry_after_seconds": o.as_ref().and_then(|o| o.report.retry_after).map(|d| d.as_secs()),
                    "credit": o.as_ref().map(|o| o.report.credit.iter().map(|c| json!({"unit": c.unit, "remaining": c.remaining})).collect::<Vec<_>>()),
                    "expires_at": o.as_ref().and_then(|o| o.report.expires_at),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        let now = clock.now();
        let mut table = Table::new(&[
            "CREDENTIAL",
            "PROVIDER",
            "FINGERPRINT",
            "STATUS",
            "CREDIT",
            "EXPIRES",
            "DETAIL",
        ]);
        for (t, o, e) in &rows {
            match o {
                Some(o) => table.row(vec![
                    t.credential.to_string(),
                    t.provider_name.to_string(),
                    o.fingerprint.clone(),
                    o.report.status.to_string(),
                    if o.report.credit.is_empty() {
                        "-".into()
                    } else {
                        o.report
                            .credit
                            .iter()
                            .map(|c| format!("{:.2} {}", c.remaining, c.unit))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    o.report
                        .expires_at
                        .map(|e| relative(now, e))
                        .unwrap_or_else(|| "-".into()),
                    o.report.detail.clone(),
                ]),
                None => table.row(vec![
                    t.credential.to_string(),
                    t.provider_name.to_string(),
                    "-".into(),
                    "not checked".into(),
                    "-".into(),
                    "-".into(),
                    e.clone().unwrap_or_default(),
                ]),
            }
        }
        print!("{}", table.render());
    }
    store.close().await;
    if any_invalid {
        return Err(ExitError {
            code: EXIT_INVALID_KEY,
            message: "at least one key is invalid".into(),
        }
        .into());
    }
    Ok(())
}

/// The rotation engine over the CLI's store, and the runtime of one credential.
fn rotation_context(
    config: &Config,
    store: SqliteStore,
    name: &str,
) -> anyhow::Result<(Engine, Arc<CredentialRuntime>)> {
    let credential = config
        .credential(name)
        .with_context(|| format!("unknown credential {name:?}"))?;
    let mut single = config.clone();
    single.credentials = vec![credential.clone()];
    let runtime = rotation::build_runtimes(&single, &ProviderTelemetry::new())?
        .remove(name)
        .with_context(|| format!("credential {name:?} has no usable provider"))?;
    let engine = Engine::new(Arc::new(store), Arc::new(SystemClock));
    Ok((engine, runtime))
}

/// Who did it, for the audit trail: the invoking user.
fn actor() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Reads one key from a file or stdin, trimming surrounding whitespace.
fn read_secret(from_file: Option<&Path>) -> anyhow::Result<SecretString> {
    let mut raw = String::new();
    match from_file {
        Some(path) => {
            std::fs::File::open(path)
                .and_then(|mut f| f.read_to_string(&mut raw))
                .with_context(|| format!("cannot read {}", path.display()))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("Paste the key and press Ctrl-D:");
            }
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut raw)
                .context("cannot read the key from stdin")?;
        }
    }
    let trimmed = raw.trim();
    let problem = if trimmed.is_empty() {
        Some("the key is empty")
    } else if trimmed.contains(['\n', '\r']) {
        Some("the key spans several lines; give exactly one key")
    } else if trimmed.chars().any(|c| c.is_control() || c == ' ') {
        Some("the key contains spaces or control characters")
    } else {
        None
    };
    let result = match problem {
        Some(problem) => Err(anyhow::anyhow!(problem)),
        None => Ok(SecretString::from(trimmed.to_string())),
    };
    raw.zeroize();
    result
}

fn version_json(v: &KeyVersion) -> serde_json::Value {
    json!({
        "version": v.id,
        "stage": v.stage.as_str(),
        "fingerprint": v.fingerprint,
        "provider_key_id": v.provider_key_id,
        "rotation_id": v.rotation_id,
        "created_at": v.created_at,
        "expires_at": v.expires_at,
        "stage_changed_at": v.stage_changed_at,
        "last_check_at": v.last_check_at,
        "last_check_status": v.last_check_status.map(|s| s.as_str()),
        "has_secret": v.has_secret,
    })
}

fn check_summary(v: &KeyVersion, now: UnixTime) -> String {
    match (v.last_check_status, v.last_check_at) {
        (Some(status), Some(at)) => format!("{status} {} ago", human_age(now - at)),
        _ => "never".into(),
    }
}

/// "3d4h", "5m", "12s": the two largest units are enough to read at a glance.
pub fn human_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut out = String::new();
    let mut rest = seconds;
    let mut shown = 0;
    for (unit, size) in units {
        if rest >= size && shown < 2 {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
            shown += 1;
        } else if shown > 0 {
            shown = 2;
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

fn relative(now: UnixTime, at: UnixTime) -> String {
    if at >= now {
        format!("in {}", human_age(at - now))
    } else {
        format!("{} ago", human_age(now - at))
    }
}

fn format_time(at: UnixTime) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| at.to_string())
}

/// A plain left-aligned text table.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }
    fn row(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }
    fn render(&self) -> String {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Written straight into one string, not a string per cell and per line: `keyrotd
        // check` prints a row per credential (after a 10,000-key sweep its report took
        // 17–30 ms to build and print).
        let line_width: usize = widths.iter().map(|w| w + 2).sum();
        let mut out = String::with_capacity(self.rows.len() * line_width);
        for row in &self.rows {
            let start = out.len();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                let _ = write!(out, "{cell:<width$}");
            }
            let kept = out[start..].trim_end().len();
            out.truncate(start + kept);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_show_the_two_largest_units() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3 * 86_400 + 4 * 3_600 + 5), "3d4h");
        assert_eq!(human_age(86_400 + 30), "1d");
        assert_eq!(human_age(3_660), "1h1m");
    }

    #[test]
    fn tables_pad_columns_to_the_widest_cell_and_trim_line_ends() {
        let mut table = Table::new(&["NAME", "STATUS", "DETAIL"]);
        table.row(vec!["a".into(), "valid".into(), "-".into()]);
        table.row(vec!["ключ-long".into(), "x".into(), String::new()]);
        assert_eq!(
            table.render(),
            "NAME       STATUS  DETAIL\n\
             a          valid   -\n\
             ключ-long  x\n"
        );
    }

    #[test]
    fn times_parse_in_three_forms() {
        assert_eq!(parse_time("1700000000").unwrap(), 1_700_000_000);
        assert_eq!(parse_time("2026-12-31").unwrap(), 1_798_675_200);
        assert_eq!(parse_time("2026-12-31T00:00:00Z").unwrap(), 1_798_675_200);
        assert!(parse_time("next tuesday").is_err());
    }
}
