//! Opening the store for a command: whichever backend the location names, with the master
//! key when one is there, refusing to go on without it when the command needs it, and the
//! config's credentials as the store records them. Shared by the daemon, the CLI and the
//! demo, so none of them reaches into another's wiring to open a store, and none of them
//! knows which backend it holds.

use super::StoreResult;
use super::{CredentialSpec, PgSettings, SqliteStore, Store, StoreError, StoreLocation};
use crate::config::Config;
use crate::crypto::{MasterKey, Sealer};
use std::path::Path;
use std::sync::Arc;

/// The credentials section of a config, as the store records it.
pub fn credential_specs(config: &Config) -> Vec<CredentialSpec> {
    config
        .credentials
        .iter()
        .map(|c| CredentialSpec {
            name: c.name().to_string(),
            provider: c.provider().to_string(),
            provider_kind: config
                .provider(c.provider())
                .map(|p| p.kind.as_str().to_string())
                .unwrap_or_default(),
        })
        .collect()
}

/// When a command needs the master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MasterKeyNeed {
    /// Read-only listings: fingerprints and history need no secrets.
    Never,
    /// The daemon: needed as soon as the store holds a sealed secret.
    IfSecretsStored,
    /// Commands that write a secret.
    Always,
}

/// Opens the store with the master key if one is available, and refuses to go on without
/// it when `need` says so. A wrong key is an error here, not a failed check hours later.
pub(crate) async fn open_store(
    location: &StoreLocation,
    master_key: Option<&Path>,
    need: MasterKeyNeed,
) -> StoreResult<Arc<dyn Store>> {
    let key_path = MasterKey::locate(master_key);
    let explicit = master_key.is_some();
    let sealer = if explicit || key_path.exists() {
        Some(Arc::new(Sealer::new(&MasterKey::load(&key_path)?)))
    } else {
        None
    };
    let store = open_backend(location, sealer.clone()).await?;
    let required = match need {
        MasterKeyNeed::Never => false,
        MasterKeyNeed::IfSecretsStored => store.holds_secrets().await?,
        MasterKeyNeed::Always => true,
    };
    if sealer.is_none() && required {
        return Err(StoreError::NoMasterKey { path: key_path });
    }
    // Listings need no secrets: they work without the master key (and with a wrong one).
    if sealer.is_some() && need != MasterKeyNeed::Never {
        // By key id first: rows sealed under another master key are counted and named.
        store
            .claim_master_key(&key_path)
            .await
            .map_err(|error| match error {
                StoreError::Crypto(_) => StoreError::WrongMasterKey {
                    path: key_path.clone(),
                    source: Box::new(error),
                },
                other => other,
            })?;
        store
            .verify_master_key()
            .await
            .map_err(|source| StoreError::WrongMasterKey {
                path: key_path,
                source: Box::new(source),
            })?;
    }
    Ok(store)
}

/// The backend `location` names, opened with `sealer` and nothing checked about it: the
/// master-key checks are [`open_store`]'s, and `store copy` needs no key at all.
pub(crate) async fn open_backend(
    location: &StoreLocation,
    sealer: Option<Arc<Sealer>>,
) -> StoreResult<Arc<dyn Store>> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path, sealer).await?),
        StoreLocation::Postgres(settings) => open_postgres(settings, sealer).await?,
    })
}

/// The one way to a PostgreSQL store.
async fn open_postgres(
    settings: &PgSettings,
    sealer: Option<Arc<Sealer>>,
) -> StoreResult<Arc<dyn Store>> {
    Ok(Arc::new(super::PgStore::connect(settings, sealer).await?))
}
