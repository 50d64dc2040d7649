//! Opening the database: careful about what it opens (a file that is not ours, or is from
//! a newer schema, is refused before anything is written to it), then migrations, pragmas
//! and the writer and reader pools.

use super::SqliteStore;
use crate::crypto::Sealer;
use crate::store::{StoreError, StoreResult};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// A reader connection unused this long is closed (sqlx's pool reaper checks this often).
const READER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Page cache per reader connection (SQLite's default is 2,000 KiB). WAL readers drop their
/// cache whenever the writer has committed since, which in a daemon recording checks is
/// most of the time, so a big cache mostly holds memory rather than saving reads: this one
/// holds the B-tree's upper levels, and the rest comes from the OS page cache either way
/// (BENCHMARKS.md has the comparison).
const READER_CACHE_KIB: u32 = 512;
/// The writer's page cache (SQLite's default is 2,000 KiB). It lives as long as the daemon;
/// a write reads the few pages it changes, which the OS page cache holds anyway.
const WRITER_CACHE_KIB: u32 = 512;

fn highest_known_migration() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path, sealer: Option<Arc<Sealer>>) -> StoreResult<SqliteStore> {
        let unwritable = |reason: String| StoreError::Unwritable {
            path: path.to_path_buf(),
            reason,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| unwritable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let exists = path.exists();
        if exists {
            Self::inspect_existing(path).await?;
        }
        // SQLite needs to create the -wal and -shm files beside the database: probe the
        // directory so the error says "directory not writable" instead of "cannot open".
        probe_writable(&dir).map_err(|e| unwritable(format!("{}: {e}", dir.display())))?;

        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let writer = open_writer(path, options.clone()).await?;
        if !exists {
            hand_to_directory_owner(path, &dir);
        }
        MIGRATOR.run(&writer).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                known: highest_known_migration(),
            },
            other => StoreError::Migrate(other),
        })?;
        super::installation::ensure_installation(&writer).await?;
        let reader = open_readers(path, options).await?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            reader,
            sealer,
        })
    }

    /// Refuses, without writing a byte, a file that is not a SQLite database or whose
    /// schema is newer than ours.
    async fn inspect_existing(path: &Path) -> StoreResult<()> {
        use std::io::Read;
        let corrupt = || StoreError::Corrupt {
            path: path.to_path_buf(),
        };
        let mut header = [0u8; 16];
        let mut file = std::fs::File::open(path).map_err(|e| StoreError::Unwritable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let read = file.read(&mut header).map_err(|_| corrupt())?;
        if read == 0 {
            return Ok(()); // An empty file is a new database to SQLite.
        }
        if read < 16 || &header != SQLITE_HEADER {
            return Err(corrupt());
        }
        // Read-only, and immutable (no lock files, no writes at all) unless a WAL file is
        // present: after an unclean exit the latest schema may live only in the WAL, and an
        // immutable open would not see it and mistake our own database for a foreign one.
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal_present = std::fs::metadata(&wal)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .immutable(!wal_present);
        let mut conn = sqlx::ConnectOptions::connect(&options)
            .await
            .map_err(|_| corrupt())?;
        let has_migrations: bool = sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|_| corrupt())?;
        if !has_migrations {
            // Another program's database: migrating it would write our tables into it.
            let objects: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master")
                .fetch_one(&mut conn)
                .await
                .map_err(|_| corrupt())?;
            if objects > 0 {
                let _ = sqlx::Connection::close(conn).await;
                return Err(corrupt());
            }
        }
        if has_migrations {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
                    .fetch_one(&mut conn)
                    .await
                    .map_err(|_| corrupt())?;
            let known = highest_known_migration();
            if let Some(found) = found.filter(|v| *v > known) {
                return Err(StoreError::SchemaTooNew {
                    path: path.to_path_buf(),
                    found,
                    known,
                });
            }
        }
        let _ = sqlx::Connection::close(conn).await;
        Ok(())
    }
}

/// The pool of one writer connection, kept open as long as the store.
async fn open_writer(path: &Path, options: SqliteConnectOptions) -> StoreResult<SqlitePool> {
    // No ping before each use (sqlx's default): a SQLite connection is a thread in this
    // process, not a socket that can drop, and a ping is a round trip to that thread on
    // every transaction.
    SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_with(options.pragma("cache_size", format!("-{WRITER_CACHE_KIB}")))
        .await
        .map_err(|e| classify_open_error(path, e))
}

/// The pool of read-only connections. Readers come and go: each connection is a worker
/// thread plus its own page cache, so an idle daemon keeps none past READER_IDLE_TIMEOUT
/// (the first one, opened here to prove the file opens read-only, included).
async fn open_readers(path: &Path, options: SqliteConnectOptions) -> StoreResult<SqlitePool> {
    SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(4)
        .min_connections(0)
        .idle_timeout(Some(READER_IDLE_TIMEOUT))
        .max_lifetime(None)
        .connect_with(
            options
                .read_only(true)
                .pragma("cache_size", format!("-{READER_CACHE_KIB}")),
        )
        .await
        .map_err(|e| classify_open_error(path, e))
}

/// When root (an operator's CLI) creates the database in a directory owned by the service
/// user, the file must belong to that user too, or the daemon could not write its own store.
/// SQLite already does the same for the -wal and -shm files it creates as root.
fn hand_to_directory_owner(path: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(dir_meta) = std::fs::metadata(dir) else {
        return;
    };
    let Ok(file_meta) = std::fs::metadata(path) else {
        return;
    };
    if file_meta.uid() == 0 && dir_meta.uid() != 0 {
        if let Err(error) =
            std::os::unix::fs::chown(path, Some(dir_meta.uid()), Some(dir_meta.gid()))
        {
            tracing::warn!(path = %path.display(), %error, "cannot hand the new database to the owner of its directory");
        }
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".keyrotd-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

pub(super) fn classify_open_error(path: &Path, error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        let code = db.code().unwrap_or_default();
        // Primary result codes: 5 BUSY, 8 READONLY, 11 CORRUPT, 14 CANTOPEN, 26 NOTADB.
        let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
        return match primary {
            5 => StoreError::Busy {
                path: path.to_path_buf(),
            },
            8 | 14 => StoreError::Unwritable {
                path: path.to_path_buf(),
                reason: db.message().to_string(),
            },
            11 | 26 => StoreError::Corrupt {
                path: path.to_path_buf(),
            },
            _ => StoreError::Database(error),
        };
    }
    StoreError::Database(error)
}
