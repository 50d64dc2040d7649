//! What every command past the config file shares: the loaded config, where the store
//! (an SQLite file or a PostgreSQL database) and master key are, and the store opened on
//! them, whichever backend it is. Loading fails with exit status 78 (EX_CONFIG), so scripts
//! and systemd tell a bad config from a failed command.

use super::{ExitError, EXIT_CONFIG};
use crate::config::{self, Config, ConfigError};
use crate::model::UnixTime;
use crate::store::{credential_specs, open_store, MasterKeyNeed, Store, StoreLocation};
use crate::web_config::WebConfig;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The global options as given, before anything is read.
pub(crate) struct GlobalPaths {
    pub(crate) config: Option<PathBuf>,
    pub(crate) database: Option<PathBuf>,
    pub(crate) master_key: Option<PathBuf>,
    pub(crate) web_config_file: Option<PathBuf>,
}

/// The config, read and valid, and the state locations it and the command line name.
pub(crate) struct Setup {
    pub(crate) config_path: PathBuf,
    pub(crate) config: Config,
    /// The SQLite file (used when the config names no PostgreSQL `[store] url`).
    pub(crate) database: PathBuf,
    pub(crate) master_key: Option<PathBuf>,
    web_config_file: Option<PathBuf>,
}

impl Setup {
    pub fn load(paths: GlobalPaths) -> Result<Setup, ExitError> {
        let (config_path, config) = load_config(paths.config).map_err(|error| ExitError {
            code: EXIT_CONFIG,
            message: error.to_string(),
        })?;
        if paths.database.is_some() && config.store.is_postgres() {
            return Err(ExitError {
                code: EXIT_CONFIG,
                message: format!(
                    "--database names an SQLite file, but {} keeps the store in PostgreSQL (`[store] url`); drop one of them",
                    config_path.display()
                ),
            });
        }
        let database = paths
            .database
            .or_else(|| config.daemon.database.clone())
            .unwrap_or_else(config::default_database_path);
        Ok(Setup {
            config_path,
            config,
            database,
            master_key: paths.master_key,
            web_config_file: paths.web_config_file,
        })
    }

    /// Loads the web config named on the command line or in the config, if any. Relative
    /// paths in the config file are relative to its directory.
    pub(crate) fn web_config(&self) -> Result<Option<Arc<WebConfig>>, ExitError> {
        let path = match (&self.web_config_file, &self.config.daemon.web_config_file) {
            (Some(path), _) => path.clone(),
            (None, Some(path)) if path.is_relative() => self
                .config_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(path),
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

    /// Where the store is, with the PostgreSQL password (if any) read from its reference
    /// now; a reference that cannot be read is a configuration error (exit 78).
    pub(crate) fn location(&self) -> Result<StoreLocation, ExitError> {
        self.config
            .store
            .location(self.database.clone())
            .map_err(|error| ExitError {
                code: EXIT_CONFIG,
                message: format!("{}: `store.password`: {error}", self.config_path.display()),
            })
    }

    pub(crate) async fn open_store(&self, need: MasterKeyNeed) -> anyhow::Result<Arc<dyn Store>> {
        Ok(open_store(&self.location()?, self.master_key.as_deref(), need).await?)
    }

    /// Opens the store and brings its credentials in line with the config, as the daemon
    /// does at start-up.
    pub(crate) async fn open_synced_store(
        &self,
        need: MasterKeyNeed,
        now: UnixTime,
    ) -> anyhow::Result<Arc<dyn Store>> {
        let store = self.open_store(need).await?;
        store
            .sync_credentials(&credential_specs(&self.config), now)
            .await?;
        Ok(store)
    }
}

/// Loads the config: an explicit path must exist; the default path may be absent (defaults).
fn load_config(explicit: Option<PathBuf>) -> Result<(PathBuf, Config), ConfigError> {
    match explicit {
        Some(path) => Config::load(&path).map(|c| (path, c)),
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
