//! `keyrotd store copy --from LOCATION --to LOCATION`: moves an installation from one store
//! to another (an SQLite file to a PostgreSQL database, or back) through the backends'
//! [`StoreCopy`](crate::store::StoreCopy): every row, sealed secrets as they are, the installation's identity kept.
//!
//! Nothing may write to either store meanwhile: on an SQLite file the command takes the
//! lock `master-key rotate` takes (refused while a daemon holds its share), and on
//! PostgreSQL it refuses while a replica's leadership lease is live. The target must be
//! empty; the import checks that inside its own transaction, so a refusal writes nothing.

use crate::cli::render;
use crate::store::{lock_exclusive, open_backend, DatabaseLock, Dump, Store, StoreLocation};
use anyhow::{bail, Context};
use clap::Args;
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

use super::location;

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The store to copy: sqlite:PATH or postgres://USER@HOST:PORT/DATABASE (the port optional).
    #[arg(long, value_name = "LOCATION")]
    from: String,
    /// The new store, empty: sqlite:PATH (created if absent) or postgres://USER@HOST:PORT/DATABASE (the port optional).
    #[arg(long, value_name = "LOCATION")]
    to: String,
    /// File holding the password of the --from database (default: $PGPASSWORD).
    #[arg(long, value_name = "PATH")]
    from_password_file: Option<PathBuf>,
    /// File holding the password of the --to database (default: $PGPASSWORD).
    #[arg(long, value_name = "PATH")]
    to_password_file: Option<PathBuf>,
}

/// Which end of the copy a location is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    Source,
    Target,
}

impl End {
    fn flag(self) -> &'static str {
        match self {
            End::Source => "--from",
            End::Target => "--to",
        }
    }
}

pub(crate) async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let from = locate(End::Source, &args.from, args.from_password_file.as_deref())?;
    let to = locate(End::Target, &args.to, args.to_password_file.as_deref())?;
    if location::same_store(&from, &to) {
        bail!(
            "--from and --to name the same store ({}); copy into a new, empty one",
            describe(&from)
        );
    }
    if let StoreLocation::Sqlite(path) = &from {
        if !path.exists() {
            bail!("--from: there is no database at {}", path.display());
        }
    }
    // Held until both stores are closed: no daemon starts on either file meanwhile.
    let _source_lock = lock(End::Source, &from)?;
    let _target_lock = lock(End::Target, &to)?;
    let source = open(End::Source, &from).await?;
    let copied = copy_from(source.as_ref(), &from, &to).await;
    source.close().await;
    let dump = copied?;
    print!(
        "{}",
        render::table::store_copy(
            &describe(&from),
            &describe(&to),
            &dump.installation,
            &dump.counts()
        )
    );
    Ok(())
}

/// The copy from an open source: refused while a replica leads on it, before the target
/// is opened (an SQLite target would be created by opening it).
async fn copy_from(
    source: &dyn Store,
    from: &StoreLocation,
    to: &StoreLocation,
) -> anyhow::Result<Dump> {
    refuse_if_led(End::Source, source, from).await?;
    let target = open(End::Target, to).await?;
    let copied = copy_into(source, from, target.as_ref(), to).await;
    target.close().await;
    copied
}

/// The copy proper, both stores open.
async fn copy_into(
    source: &dyn Store,
    from: &StoreLocation,
    target: &dyn Store,
    to: &StoreLocation,
) -> anyhow::Result<Dump> {
    refuse_if_led(End::Target, target, to).await?;
    let dump = source
        .export()
        .await
        .with_context(|| format!("reading {}", describe(from)))?;
    target
        .import(&dump)
        .await
        .with_context(|| format!("writing {}", describe(to)))?;
    Ok(dump)
}

/// The location given for `end`, with its password (a file, else `PGPASSWORD`).
fn locate(end: End, text: &str, password_file: Option<&Path>) -> anyhow::Result<StoreLocation> {
    let password = match password_file {
        Some(path) => Some(read_password(end, path)?),
        None => std::env::var("PGPASSWORD")
            .ok()
            .filter(|p| !p.is_empty())
            .map(SecretString::from),
    };
    Ok(location::parse(
        end.flag(),
        text,
        password,
        password_file.is_some(),
    )?)
}

/// A password file's first line: the whole file but a final line break.
fn read_password(end: End, path: &Path) -> anyhow::Result<SecretString> {
    let text = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
        format!(
            "{}-password-file: cannot read {}",
            end.flag(),
            path.display()
        )
    })?);
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("{}-password-file: {} is empty", end.flag(), path.display());
    }
    Ok(SecretString::from(password.to_string()))
}

/// How a location is named in messages: never with a password (none is in it).
fn describe(location: &StoreLocation) -> String {
    match location {
        StoreLocation::Sqlite(path) => format!("sqlite:{}", path.display()),
        StoreLocation::Postgres(settings) => settings.describe(),
    }
}

/// The lock `master-key rotate` takes on an SQLite file, refused while a daemon runs on it.
fn lock(end: End, location: &StoreLocation) -> anyhow::Result<Option<DatabaseLock>> {
    let StoreLocation::Sqlite(path) = location else {
        return Ok(None);
    };
    if end == End::Target {
        // The lock file lives beside the database: its directory must exist to take it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--to: cannot create {}", dir.display()))?;
        }
    }
    Ok(Some(lock_exclusive(path).with_context(|| {
        format!("{}: refusing to copy", end.flag())
    })?))
}

/// Opens a store without a master key: the copy never opens a sealed secret.
async fn open(end: End, location: &StoreLocation) -> anyhow::Result<Arc<dyn Store>> {
    open_backend(location, None)
        .await
        .with_context(|| end.flag())
}

/// On PostgreSQL, replicas share no lock file: a live leadership lease says one is running.
async fn refuse_if_led(
    end: End,
    store: &dyn Store,
    location: &StoreLocation,
) -> anyhow::Result<()> {
    if !matches!(location, StoreLocation::Postgres(_)) {
        return Ok(());
    }
    if let Some(lease) = store.leadership().await?.filter(|l| l.left > 0) {
        bail!(
            "{}: keyrotd replica {} leads on {} (its lease runs {} s more); stop every replica, then copy",
            end.flag(),
            lease.holder,
            describe(location),
            lease.left
        );
    }
    Ok(())
}
