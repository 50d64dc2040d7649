//! `keyrotd key …`: the operator's hands on key versions. Each subcommand has a file of
//! its own; this one holds their clap types and opens the store they share.
//!
//! Secrets never come from argv (visible in `ps` and shell history): `key import` reads
//! stdin or a file. Listings print fingerprints, never keys.

mod history;
mod import;
pub(crate) mod list;
mod revoke;
mod rollback;
mod rotate;
pub(crate) mod show;

use super::{JsonFlag, Setup};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::model::UnixTime;
use crate::providers::ProviderTelemetry;
use crate::rotation::{self, CredentialRuntime, Engine};
use crate::store::MasterKeyNeed;
use crate::store::Store;
use anyhow::Context;
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Store a key for a credential, read from stdin (or --from-file); never from argv.
    Import {
        name: String,
        /// Read the key from this file instead of stdin.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// When the key expires: RFC 3339 (2026-12-31T00:00:00Z), a date (2026-12-31) or Unix seconds.
        #[arg(long, value_parser = import::parse_time)]
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

impl KeyCommand {
    /// Whether the command needs the master key: only those that write or use a secret.
    fn master_key_need(&self) -> MasterKeyNeed {
        match self {
            KeyCommand::Import { .. }
            | KeyCommand::Rotate { .. }
            | KeyCommand::Rollback { .. }
            | KeyCommand::Revoke { .. } => MasterKeyNeed::Always,
            KeyCommand::List(_) | KeyCommand::Show { .. } | KeyCommand::History { .. } => {
                MasterKeyNeed::Never
            }
        }
    }
}

/// Runs one `key` subcommand on a store whose credentials match the config.
pub(crate) async fn run(command: KeyCommand, setup: &Setup) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    let store = setup
        .open_synced_store(command.master_key_need(), now)
        .await?;
    let config = &setup.config;
    match command {
        KeyCommand::Import {
            name,
            from_file,
            expires_at,
        } => import::run(config, store, &name, from_file.as_deref(), expires_at, now).await,
        KeyCommand::Rotate { name } => rotate::run(config, store, &name).await,
        KeyCommand::Rollback { name } => rollback::run(config, store, &name).await,
        KeyCommand::Revoke { name, version } => revoke::run(config, store, &name, version).await,
        KeyCommand::List(JsonFlag { json }) => list::run(store.as_ref(), json, now).await,
        KeyCommand::Show {
            name,
            json: JsonFlag { json },
        } => show::run(store.as_ref(), &name, json, now).await,
        KeyCommand::History {
            name,
            json: JsonFlag { json },
        } => history::run(store.as_ref(), &name, json).await,
    }
}

/// The rotation engine over the CLI's store, and the runtime of one credential.
fn rotation_context(
    config: &Config,
    store: Arc<dyn Store>,
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
    let engine = Engine::new(store, Arc::new(SystemClock))
        .with_role("cli")
        .with_lease(config.daemon.rotation_lease.0);
    Ok((engine, runtime))
}
