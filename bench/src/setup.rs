//! The work directory of one run: the master key, the daemon's config and a store seeded
//! with `n` credentials, so that every phase measures the same state.
//!
//! Seeding goes through the store's own API (as `keyrotd key import` and the checker write),
//! not SQL, so the database is exactly what a daemon of this build would have written.
//!
//! With `--store-url` the store is a PostgreSQL database the harness creates on that server
//! (and drops at the end) instead of an SQLite file; every phase then runs on it.

use crate::Args;
use keyrotd::clock::{Clock, SystemClock};
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::CheckStatus;
use keyrotd::simulator::Simulator;
use keyrotd::store::prelude::*;
use keyrotd::store::{
    CheckRecord, CredentialSpec, NewKey, PgSettings, PgSslMode, PgStore, SqliteStore, Store,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

/// The name of the one simulated provider every credential uses.
pub(crate) const PROVIDER: &str = "sim";

/// Suffixes of an SQLite database's files in WAL mode.
const DATABASE_FILES: [&str; 3] = ["", "-wal", "-shm"];

pub(crate) fn credential_name(i: usize) -> String {
    format!("bench-{i:06}")
}

/// One run's work directory and what the phases share.
pub(crate) struct Bench {
    pub(crate) dir: PathBuf,
    keyrotd: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) database: PathBuf,
    /// The PostgreSQL database in use instead of `database`, with `--store-url`.
    pub(crate) postgres: Option<PgDatabase>,
    pub(crate) master_key: PathBuf,
    pub(crate) management_key: PathBuf,
    /// How seeding went, as JSON.
    pub(crate) seed: Value,
    /// The exposition of the last scrape of the daemon (for the Python comparison).
    pub(crate) exposition: std::sync::Mutex<String>,
}

impl Bench {
    pub(crate) async fn set_up(
        args: &Args,
        dir: &Path,
        keyrotd: &Path,
        simulator: &Simulator,
    ) -> anyhow::Result<Bench> {
        let master_key = dir.join("master.key");
        let _ = std::fs::remove_file(&master_key);
        MasterKey::generate().write_new(&master_key)?;
        let management_key = dir.join("sim.management-key");
        std::fs::write(&management_key, simulator.management_key())?;
        let database = dir.join("keyrotd.db");
        for suffix in DATABASE_FILES {
            let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
        }
        let postgres = match &args.store_url {
            Some(url) => Some(PgDatabase::create(url).await?),
            None => None,
        };
        let location = StoreLines::of(&database, postgres.as_ref());
        let config = dir.join("daemon.toml");
        std::fs::write(
            &config,
            config_text(&location, simulator, args.concurrency, args.n, None),
        )?;
        if let Some(pg) = &postgres {
            let started = Instant::now();
            let store = pg.open(&master_key).await?;
            let sync_ms = seed_store(args, store.as_ref(), simulator).await?;
            store.close().await;
            let seed = json!({
                "seconds": started.elapsed().as_secs_f64(),
                "first_sync_ms": sync_ms,
                "on": pg.url,
            });
            return Ok(Bench {
                dir: dir.to_path_buf(),
                keyrotd: keyrotd.to_path_buf(),
                config,
                database,
                postgres,
                master_key,
                management_key,
                seed,
                exposition: std::sync::Mutex::new(String::new()),
            });
        }

        // Seed where fsync is free, then copy the database to the disk under test.
        let shm = Path::new("/dev/shm");
        let seed_dir = tempfile::Builder::new()
            .prefix("keyrotd-bench-seed-")
            .tempdir_in(if shm.is_dir() { shm } else { dir })?;
        let seed_db = seed_dir.path().join("keyrotd.db");
        let started = Instant::now();
        let sealer = Arc::new(Sealer::new(&MasterKey::load(&master_key)?));
        let store = SqliteStore::open(&seed_db, Some(sealer)).await?;
        let sync_ms = seed_store(args, &store, simulator).await?;
        store.close().await;
        for suffix in DATABASE_FILES {
            let from = PathBuf::from(format!("{}{suffix}", seed_db.display()));
            if from.exists() {
                std::fs::copy(&from, format!("{}{suffix}", database.display()))?;
            }
        }
        let seed = json!({
            "seconds": started.elapsed().as_secs_f64(),
            "first_sync_ms": sync_ms,
            "on": seed_dir.path().display().to_string(),
            "db_bytes": std::fs::metadata(&database)?.len(),
        });
        Ok(Bench {
            dir: dir.to_path_buf(),
            keyrotd: keyrotd.to_path_buf(),
            config,
            database,
            postgres,
            master_key,
            management_key,
            seed,
            exposition: std::sync::Mutex::new(String::new()),
        })
    }

    /// The run's store, opened with its master key (for the in-process phases).
    pub(crate) async fn open_store(&self) -> anyhow::Result<Arc<dyn Store>> {
        Ok(match &self.postgres {
            Some(pg) => pg.open(&self.master_key).await?,
            None => {
                let sealer = Arc::new(Sealer::new(&MasterKey::load(&self.master_key)?));
                Arc::new(SqliteStore::open(&self.database, Some(sealer)).await?)
            }
        })
    }

    /// Where the run's store is, as config lines.
    pub(crate) fn store_lines(&self) -> StoreLines {
        StoreLines::of(&self.database, self.postgres.as_ref())
    }

    /// `keyrotd --config CONFIG --master-key …` with none of systemd's variables inherited
    /// and quiet logs: the subcommand and its arguments are added by the caller.
    pub(crate) fn command(&self, config: &Path) -> Command {
        let mut command = Command::new(&self.keyrotd);
        command
            .arg("--config")
            .arg(config)
            .arg("--master-key")
            .arg(&self.master_key)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("LISTEN_FDS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }
}

/// Writes `n` credentials, each with a current key the simulator knows and a check result,
/// into a new store; returns the ms the first credential sync took.
async fn seed_store(args: &Args, store: &dyn Store, simulator: &Simulator) -> anyhow::Result<f64> {
    let started = Instant::now();
    let now = SystemClock.now();
    let specs: Vec<CredentialSpec> = (0..args.n)
        .map(|i| CredentialSpec {
            name: credential_name(i),
            provider: PROVIDER.into(),
            provider_kind: "simulated".into(),
        })
        .collect();
    store.sync_credentials(&specs, now - 7200).await?;
    let sync_ms = started.elapsed().as_secs_f64() * 1e3;
    for (i, spec) in specs.iter().enumerate() {
        let secret = format!("sk-bench-{i}-{}", random_hex());
        simulator.add_key(&secret);
        let version = store
            .import_key(
                &spec.name,
                NewKey {
                    secret: SecretString::from(secret),
                    expires_at: Some(now + 90 * 86_400),
                    provider_key_id: None,
                    rotation_id: None,
                },
                "bench",
                now - 3600,
            )
            .await?;
        store
            .record_check(
                &spec.name,
                version.id,
                &CheckRecord {
                    status: CheckStatus::Valid,
                    detail: "seeded".into(),
                    // Overdue for a 24 h interval: the daemon checks it at start-up
                    // (unless --fresh-checks).
                    at: if args.fresh_checks {
                        now
                    } else {
                        now - 25 * 3600
                    },
                    credits: Vec::new(),
                    expires_at: None,
                },
            )
            .await?;
    }
    Ok(sync_ms)
}

/// A scratch PostgreSQL database on the server `--store-url` names, dropped on drop.
pub(crate) struct PgDatabase {
    admin: String,
    name: String,
    /// The database's URL (no password: the benchmark server trusts local connections).
    pub(crate) url: String,
}

impl PgDatabase {
    async fn create(admin: &str) -> anyhow::Result<PgDatabase> {
        use sqlx::Connection;
        let name = format!("keyrotd_bench_{}", random_hex());
        let mut connection = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        let base = admin.split('?').next().unwrap_or(admin);
        let server = base
            .rsplit_once('/')
            .map(|(server, _)| server)
            .unwrap_or(base);
        Ok(PgDatabase {
            admin: admin.to_string(),
            url: format!("{server}/{name}"),
            name,
        })
    }

    fn settings(&self) -> PgSettings {
        PgSettings {
            url: self.url.clone(),
            password: None,
            ssl_mode: PgSslMode::Disable,
            pool_size: 8,
            connect_timeout: std::time::Duration::from_secs(10),
        }
    }

    async fn open(&self, master_key: &Path) -> anyhow::Result<Arc<dyn Store>> {
        let sealer = Arc::new(Sealer::new(&MasterKey::load(master_key)?));
        Ok(Arc::new(
            PgStore::connect(&self.settings(), Some(sealer)).await?,
        ))
    }

    /// Drops the database (its connections closed by force).
    pub(crate) async fn drop_database(&self) -> anyhow::Result<()> {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&self.admin).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut connection)
        .await?;
        connection.close().await?;
        Ok(())
    }
}

/// The config lines that name the store: the SQLite file, or a `[store]` section.
pub(crate) struct StoreLines {
    daemon: String,
    section: String,
}

impl StoreLines {
    fn of(database: &Path, postgres: Option<&PgDatabase>) -> StoreLines {
        match postgres {
            Some(pg) => StoreLines {
                daemon: String::new(),
                section: format!(
                    "[store]\nurl = \"{}\"\nsslmode = \"disable\"\npool_size = 8\n\n",
                    pg.url
                ),
            },
            None => StoreLines {
                daemon: format!("database = \"{}\"\n", database.display()),
                section: String::new(),
            },
        }
    }
}

/// The daemon's config: one simulated provider, `n` credentials, checks every 24 h. With
/// `rotation`, the provider gets its management key and every credential a file target.
pub(crate) fn config_text(
    store: &StoreLines,
    simulator: &Simulator,
    concurrency: usize,
    n: usize,
    rotation: Option<(&Path, &Path)>,
) -> String {
    let mut text = format!(
        "[daemon]\nlisten_address = \"127.0.0.1:0\"\n{}\n{}[checks]\ninterval = \"24h\"\njitter = 0.1\nmax_concurrent = {concurrency}\n\n[[provider]]\nname = \"{PROVIDER}\"\nkind = \"simulated\"\nbase_url = \"{}\"\nrequests_per_second = 1000000\ntimeout = \"30s\"\n",
        store.daemon,
        store.section,
        simulator.base_url()
    );
    if let Some((management_key, _)) = rotation {
        text.push_str(&format!(
            "management_key = {{ file = \"{}\" }}\n",
            management_key.display()
        ));
    }
    text.reserve(n * 64);
    for i in 0..n {
        let name = credential_name(i);
        text.push_str(&format!(
            "\n[[credential]]\nname = \"{name}\"\nprovider = \"{PROVIDER}\"\n"
        ));
        if let Some((_, deliver)) = rotation {
            text.push_str(&format!(
                "deliver = [{{ kind = \"file\", path = \"{}/{name}.key\" }}]\n",
                deliver.display()
            ));
        }
    }
    text
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    hex::encode(bytes)
}
