//! The embedded SQLite backend.
//!
//! One writer connection (SQLite has one writer anyway; a pool of one makes queueing
//! explicit), write transactions opened with `BEGIN IMMEDIATE` so they never fail with
//! SQLITE_BUSY half-way, WAL so readers never block the writer, `synchronous=FULL` because a
//! committed key must survive power loss. Up to four read-only reader connections, each with
//! a small page cache, closed after a minute unused (an idle daemon keeps only the writer).
//! Opening is careful: a file that is not ours, or is from a newer schema, is refused before
//! anything is written to it.

use super::*;
use crate::crypto::Sealer;
use crate::model::fingerprint;
use futures::{StreamExt, TryStreamExt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// A reader connection unused this long is closed (sqlx's pool reaper checks this often).
const READER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Page cache per reader connection (SQLite's default is 2,000 KiB). WAL readers drop their
/// cache whenever the writer has committed since, which in a daemon recording checks is
/// most of the time, so a big cache mostly holds memory rather than saving reads.
/// 512 KiB (the B-tree's upper levels and then some) measured no slower than 2,000 KiB on
/// a 10,000-credential store: its pages come from the OS page cache either way.
const READER_CACHE_KIB: u32 = 512;
/// The writer's page cache (SQLite's default is 2,000 KiB). It lives as long as the daemon;
/// a write reads the few pages it changes, which the OS page cache holds anyway.
const WRITER_CACHE_KIB: u32 = 512;

pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    sealer: Option<Arc<Sealer>>,
    checks: Arc<CheckQueue>,
}

/// Check results waiting to be written: concurrent [`Store::record_check`] calls share one
/// transaction (group commit). With `synchronous=FULL` every commit is an fsync (4 ms on the
/// benchmark host), so one transaction per check capped a sweep at ~250 checks/s whatever
/// the concurrency; batched, a sweep of 10,000 keys commits a few dozen times.
#[derive(Default)]
struct CheckQueue {
    pending: std::sync::Mutex<Vec<PendingCheck>>,
    /// Held by the caller that is writing a batch; the others queue behind it.
    turn: tokio::sync::Mutex<()>,
}

struct PendingCheck {
    credential: String,
    version_id: i64,
    check: CheckRecord,
    done: tokio::sync::oneshot::Sender<StoreResult<()>>,
}

impl CheckQueue {
    fn take(&self) -> Vec<PendingCheck> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

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
        // No ping before each use (sqlx's default): a SQLite connection is a thread in this
        // process, not a socket that can drop, and the ping was a round trip to that thread
        // on every transaction — one of six per batch of check results.
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
            )
            .await
            .map_err(|e| classify_open_error(path, e))?;
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
        // Readers come and go: each connection is a worker thread plus its own page cache,
        // so an idle daemon keeps none past READER_IDLE_TIMEOUT (the first one, opened
        // here to prove the file opens read-only, included).
        let reader = SqlitePoolOptions::new()
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
            .map_err(|e| classify_open_error(path, e))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            writer,
            reader,
            sealer,
            checks: Arc::default(),
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the active credentials differ from `specs` (names, providers, kinds). The
    /// rows come back as one JSON array, in name order from the unique index: one row
    /// through sqlx instead of one per credential.
    async fn credentials_differ(&self, specs: &[CredentialSpec]) -> StoreResult<bool> {
        let active: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(name, provider, provider_kind)) FROM
             (SELECT name, provider, provider_kind FROM credentials
              WHERE removed_at IS NULL ORDER BY name)",
        )
        .fetch_one(&self.reader)
        .await?;
        let Ok(active) = serde_json::from_str::<Vec<(String, String, String)>>(&active) else {
            return Ok(true); // Not what we expected: let the write path look row by row.
        };
        let mut wanted: Vec<(&str, &str, &str)> = specs
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.provider.as_str(),
                    s.provider_kind.as_str(),
                )
            })
            .collect();
        // Byte order, as SQLite's BINARY collation sorts the names.
        wanted.sort_unstable();
        Ok(wanted.len() != active.len()
            || wanted
                .iter()
                .zip(&active)
                .any(|(w, a)| (w.0, w.1, w.2) != (a.0.as_str(), a.1.as_str(), a.2.as_str())))
    }

    /// Whether any key version still holds sealed secret material.
    pub async fn holds_secrets(&self) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE sealed_secret IS NOT NULL)",
        )
        .fetch_one(&self.reader)
        .await?)
    }

    /// Fails unless the master key opens a stored secret (when there is one). Run at
    /// start-up so a wrong key is a clear error, not a failed check hours later.
    pub async fn verify_master_key(&self) -> StoreResult<()> {
        let row = sqlx::query(
            "SELECT v.id, c.name, v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE v.sealed_secret IS NOT NULL ORDER BY v.id DESC LIMIT 1",
        )
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let sealer = self.sealer.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        sealer.open(row.get(1), row.get(0), row.get::<Vec<u8>, _>(2).as_slice())?;
        Ok(())
    }

    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        begin_write(&self.writer, &self.path).await
    }

    fn sealer(&self) -> StoreResult<&Sealer> {
        self.sealer.as_deref().ok_or(StoreError::MasterKeyRequired)
    }

    async fn credential_id(tx: &mut Transaction<'static, Sqlite>, name: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT id FROM credentials WHERE name = ? AND removed_at IS NULL")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::UnknownCredential(name.to_string()))
    }

    /// Inserts a key version and seals its secret in the same transaction. The version id is
    /// part of the associated data, so the secret is sealed after the insert.
    #[allow(clippy::too_many_arguments)]
    async fn insert_sealed_version(
        tx: &mut Transaction<'static, Sqlite>,
        sealer: &Sealer,
        (credential_id, credential): (i64, &str),
        stage: &str,
        fingerprint: &str,
        key: &NewKey,
        rotation_id: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO key_versions (credential_id, stage, fingerprint, provider_key_id, rotation_id, created_at, expires_at, stage_changed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(credential_id)
        .bind(stage)
        .bind(fingerprint)
        .bind(&key.provider_key_id)
        .bind(rotation_id)
        .bind(now)
        .bind(key.expires_at)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        let sealed = sealer.seal(credential, id, &key.secret)?;
        sqlx::query("UPDATE key_versions SET sealed_secret = ? WHERE id = ?")
            .bind(sealed)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(id)
    }

    /// One version, read inside a write transaction.
    async fn version_in(tx: &mut Transaction<'static, Sqlite>, id: i64) -> StoreResult<KeyVersion> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = ?"
        ))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(version_from_row(&row))
    }

    async fn insert_event(
        tx: &mut Transaction<'static, Sqlite>,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: &str,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO events (at, credential, version_id, kind, actor, detail) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(now)
        .bind(credential)
        .bind(version_id)
        .bind(kind)
        .bind(actor)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Opens a write transaction (`BEGIN IMMEDIATE`) and moves the store's generation.
async fn begin_write(
    writer: &SqlitePool,
    path: &Path,
) -> StoreResult<Transaction<'static, Sqlite>> {
    let mut tx = writer
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| classify_open_error(path, e))?;
    sqlx::query("UPDATE store_generation SET value = value + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Writes a batch of check results in one transaction and answers every caller. If the
/// batch fails (one record names a credential removed meanwhile, say), each record is
/// written on its own so one bad record fails only its own caller.
async fn commit_checks(writer: SqlitePool, path: PathBuf, batch: Vec<PendingCheck>) {
    async fn write(writer: &SqlitePool, path: &Path, batch: &[PendingCheck]) -> StoreResult<()> {
        let mut tx = begin_write(writer, path).await?;
        for chunk in batch.chunks(CHECKS_PER_STATEMENT) {
            apply_checks(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }
    match write(&writer, &path, &batch).await {
        Ok(()) => {
            for p in batch {
                let _ = p.done.send(Ok(()));
            }
        }
        Err(error) if batch.len() == 1 => {
            let p = batch.into_iter().next().expect("one record");
            let _ = p.done.send(Err(error));
        }
        Err(_) => {
            for p in batch {
                let written = write(&writer, &path, std::slice::from_ref(&p)).await;
                let _ = p.done.send(written);
            }
        }
    }
}

/// A check result whose batch ended without answering it (its writer was cancelled).
fn check_not_written() -> StoreError {
    StoreError::Conflict("the check result was not written".into())
}

/// Check results written by one statement of [`apply_checks`]: bounds the JSON text a
/// statement binds (~200 bytes a record).
const CHECKS_PER_STATEMENT: usize = 500;

/// The batch of [`apply_checks`] as a table: one JSON array of
/// `[name, version_id, status, at, detail, valid, expires_at]` records, bound as `?1`.
/// The statements' text is fixed, so the writer compiles each once and keeps it; with one
/// `VALUES` row per record the text changed with the batch's size, every batch was compiled
/// afresh, and compiling was a tenth of a sweep's CPU.
macro_rules! checks_batch {
    () => {
        "WITH b(name, version_id, status, at, detail, valid, expires_at) AS (
           SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6
           FROM json_each(?1)) "
    };
}

/// Records checks inside `tx`: each updates its credential's status and last check (only a
/// conclusive result changes validity), its key version's last check and reported expiry,
/// and its balances; a change of status is also an event. Three statements for the whole
/// batch: every statement of sqlx's SQLite driver is a round trip to the connection's thread
/// (two context switches), and statements per record were most of a sweep's CPU.
///
/// Fails when a record's credential is unknown or removed, or when one credential appears
/// twice (the caller then writes the records one by one, which names the culprit).
async fn apply_checks(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[PendingCheck],
) -> StoreResult<()> {
    // Events first: they compare with the status before this batch.
    const EVENTS: &str = concat!(
        checks_batch!(),
        "INSERT INTO events (at, credential, version_id, kind, actor, detail)
         SELECT b.at, b.name, b.version_id, 'check_status_changed', 'checker',
                COALESCE(c.check_status, 'unchecked') || ' -> ' || b.status || ': ' || b.detail
         FROM b JOIN credentials c ON c.name = b.name AND c.removed_at IS NULL
         WHERE c.check_status IS NOT b.status"
    );
    const CREDENTIALS: &str = concat!(
        checks_batch!(),
        "UPDATE credentials SET check_status = b.status, last_check_at = b.at,
                check_detail = b.detail, valid = COALESCE(b.valid, credentials.valid)
         FROM b WHERE credentials.name = b.name AND credentials.removed_at IS NULL"
    );
    const VERSIONS: &str = concat!(
        checks_batch!(),
        "UPDATE key_versions SET last_check_at = b.at, last_check_status = b.status,
                expires_at = COALESCE(b.expires_at, key_versions.expires_at)
         FROM b WHERE key_versions.id = b.version_id"
    );
    let records: Vec<_> = batch
        .iter()
        .map(|p| {
            let check = &p.check;
            // Only a conclusive result changes validity; a blip keeps the last known state.
            let valid: Option<i64> = match check.status {
                CheckStatus::Invalid => Some(0),
                CheckStatus::Valid | CheckStatus::Exhausted => Some(1),
                _ => None,
            };
            (
                p.credential.as_str(),
                p.version_id,
                check.status.as_str(),
                check.at,
                check.detail.as_str(),
                valid,
                check.expires_at,
            )
        })
        .collect();
    let records =
        serde_json::to_string(&records).expect("strings and integers always encode as JSON");
    sqlx::query(EVENTS)
        .bind(records.as_str())
        .execute(&mut **tx)
        .await?;
    let updated = sqlx::query(CREDENTIALS)
        .bind(records.as_str())
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if let ([p], 0) = (batch, updated) {
        return Err(StoreError::UnknownCredential(p.credential.clone()));
    }
    if updated != batch.len() as u64 {
        return Err(StoreError::Conflict(format!(
            "{} of {} checked credentials are unknown, removed or repeated",
            batch.len() as u64 - updated.min(batch.len() as u64),
            batch.len()
        )));
    }
    sqlx::query(VERSIONS)
        .bind(records.as_str())
        .execute(&mut **tx)
        .await?;
    // Balances are reported by few providers; those records replace their set one by one.
    for p in batch.iter().filter(|p| !p.check.credits.is_empty()) {
        let credential_id = SqliteStore::credential_id(tx, &p.credential).await?;
        replace_credits(tx, credential_id, &p.check).await?;
    }
    Ok(())
}

/// Replaces a credential's reported balances with those of `check`.
async fn replace_credits(
    tx: &mut Transaction<'static, Sqlite>,
    credential_id: i64,
    check: &CheckRecord,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM credits WHERE credential_id = ?")
        .bind(credential_id)
        .execute(&mut **tx)
        .await?;
    for (unit, remaining) in &check.credits {
        sqlx::query(
            "INSERT INTO credits (credential_id, unit, remaining, reported_at) VALUES (?, ?, ?, ?)",
        )
        .bind(credential_id)
        .bind(unit)
        .bind(remaining)
        .bind(check.at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
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

fn classify_open_error(path: &Path, error: sqlx::Error) -> StoreError {
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

/// The columns of a [`KeyVersion`], as a literal: statements that must be `&'static str`
/// take it through `concat!`.
macro_rules! version_columns {
    () => {
        "v.id, c.name, v.stage, v.fingerprint, v.provider_key_id, v.rotation_id,
     v.created_at, v.expires_at, v.stage_changed_at, v.last_check_at, v.last_check_status,
     v.sealed_secret IS NOT NULL"
    };
}
const VERSION_COLUMNS: &str = version_columns!();
/// Columns in [`VERSION_COLUMNS`]: a query's own columns follow them.
const VERSION_COLUMN_COUNT: usize = 12;

fn version_from_row(row: &SqliteRow) -> KeyVersion {
    version_from_row_at(row, 0)
}

/// A version whose [`VERSION_COLUMNS`] start at column `at`.
fn version_from_row_at(row: &SqliteRow, at: usize) -> KeyVersion {
    KeyVersion {
        id: row.get(at),
        credential: row.get(at + 1),
        stage: row
            .get::<String, _>(at + 2)
            .parse()
            .unwrap_or(crate::model::Stage::Failed),
        fingerprint: row.get(at + 3),
        provider_key_id: row.get(at + 4),
        rotation_id: row.get(at + 5),
        created_at: row.get(at + 6),
        expires_at: row.get(at + 7),
        stage_changed_at: row.get(at + 8),
        last_check_at: row.get(at + 9),
        last_check_status: row
            .get::<Option<String>, _>(at + 10)
            .and_then(|s| s.parse().ok()),
        has_secret: row.get(at + 11),
    }
}

/// Read from `credentials c`.
const CREDENTIAL_COLUMNS: &str = "c.id, c.name, c.provider, c.provider_kind, c.created_at,
     c.removed_at, c.next_rotation_at, c.last_rotated_at, c.consecutive_failures,
     c.check_status, c.valid, c.last_check_at, c.check_detail";
/// Columns in [`CREDENTIAL_COLUMNS`]: a query's own columns follow them.
const CREDENTIAL_COLUMN_COUNT: usize = 13;

fn credential_from_row(row: &SqliteRow) -> CredentialRecord {
    CredentialRecord {
        id: row.get(0),
        name: row.get(1),
        provider: row.get(2),
        provider_kind: row.get(3),
        created_at: row.get(4),
        removed_at: row.get(5),
        next_rotation_at: row.get(6),
        last_rotated_at: row.get(7),
        consecutive_failures: row.get(8),
        check_status: row.get::<Option<String>, _>(9).and_then(|s| s.parse().ok()),
        valid: row.get::<Option<i64>, _>(10).map(|v| v != 0),
        last_check_at: row.get(11),
        check_detail: row.get(12),
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn sync_credentials(&self, specs: &[CredentialSpec], now: UnixTime) -> StoreResult<()> {
        // Every restart with an unchanged config lands here: compare in one read-only query
        // (SQLite walks the specs as JSON against the unique name index) instead of moving
        // every row through sqlx into a write transaction (~30 ms at 10,000 credentials).
        // A change seen here, or one made meanwhile, is handled by the write path below,
        // which reads the rows again inside its transaction.
        if !self.credentials_differ(specs).await? {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        let existing: Vec<(String, String, String, Option<i64>)> =
            sqlx::query_as("SELECT name, provider, provider_kind, removed_at FROM credentials")
                .fetch_all(&mut *tx)
                .await?;
        // Indexed by name: a linear search per spec made start-up quadratic (5·10⁹ string
        // comparisons at 100,000 credentials).
        let by_name: std::collections::HashMap<&str, &(String, String, String, Option<i64>)> =
            existing.iter().map(|row| (row.0.as_str(), row)).collect();
        let wanted: std::collections::HashSet<&str> =
            specs.iter().map(|s| s.name.as_str()).collect();
        // Nothing to change after all (a concurrent sync got there first): roll back instead
        // of committing, which saves an fsync and leaves the generation (and so the metrics
        // cache) alone.
        let mut changed = false;
        for spec in specs {
            match by_name.get(spec.name.as_str()) {
                None => {
                    changed = true;
                    sqlx::query(
                        "INSERT INTO credentials (name, provider, provider_kind, created_at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(&spec.name)
                    .bind(&spec.provider)
                    .bind(&spec.provider_kind)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    Self::insert_event(
                        &mut tx,
                        Some(&spec.name),
                        None,
                        "credential_added",
                        "config",
                        &format!("provider {}", spec.provider),
                        now,
                    )
                    .await?;
                }
                Some((_, provider, kind, removed)) => {
                    if provider != &spec.provider
                        || kind != &spec.provider_kind
                        || removed.is_some()
                    {
                        changed = true;
                        sqlx::query(
                            "UPDATE credentials SET provider = ?, provider_kind = ?, removed_at = NULL WHERE name = ?",
                        )
                        .bind(&spec.provider)
                        .bind(&spec.provider_kind)
                        .bind(&spec.name)
                        .execute(&mut *tx)
                        .await?;
                        Self::insert_event(
                            &mut tx,
                            Some(&spec.name),
                            None,
                            "credential_updated",
                            "config",
                            &format!("provider {}", spec.provider),
                            now,
                        )
                        .await?;
                    }
                }
            }
        }
        for (name, _, _, removed) in &existing {
            if removed.is_none() && !wanted.contains(name.as_str()) {
                changed = true;
                sqlx::query("UPDATE credentials SET removed_at = ? WHERE name = ?")
                    .bind(now)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                Self::insert_event(
                    &mut tx,
                    Some(name),
                    None,
                    "credential_removed",
                    "config",
                    "no longer in the config; history kept",
                    now,
                )
                .await?;
            }
        }
        if changed {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    async fn import_key(
        &self,
        credential: &str,
        key: NewKey,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let sealer = self.sealer()?;
        let fp = fingerprint(&key.secret);
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let duplicate: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE credential_id = ? AND fingerprint = ? AND stage IN ('pending','current','previous'))",
        )
        .bind(credential_id)
        .bind(&fp)
        .fetch_one(&mut *tx)
        .await?;
        if duplicate {
            return Err(StoreError::DuplicateKey(fp));
        }
        let has_current: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE credential_id = ? AND stage = 'current')",
        )
        .bind(credential_id)
        .fetch_one(&mut *tx)
        .await?;
        let stage = if has_current { "pending" } else { "current" };
        let id = Self::insert_sealed_version(
            &mut tx,
            sealer,
            (credential_id, credential),
            stage,
            &fp,
            &key,
            key.rotation_id.as_deref(),
            now,
        )
        .await?;
        let detail = format!("{fp} imported as {stage}");
        Self::insert_event(
            &mut tx,
            Some(credential),
            Some(id),
            "imported",
            actor,
            &detail,
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn visit_states(
        &self,
        visit: &mut (dyn FnMut(CredentialState) + Send),
    ) -> StoreResult<i64> {
        let mut tx = self.reader.begin().await?;
        let generation: i64 = sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // The side tables first (few rows: balances are reported by few providers, and only
        // rotated credentials have finished rotations), then one pass over the credentials.
        let credit_rows: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT c.name, k.unit, k.remaining FROM credits k JOIN credentials c ON c.id = k.credential_id
             WHERE c.removed_at IS NULL ORDER BY k.unit",
        )
        .fetch_all(&mut *tx)
        .await?;
        let rotation_rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.name, SUM(r.step = 'done'), SUM(r.step = 'failed') FROM rotations r
             JOIN credentials c ON c.id = r.credential_id
             WHERE c.removed_at IS NULL AND r.finished_at IS NOT NULL GROUP BY c.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut rotations_by_name: std::collections::HashMap<String, (u64, u64)> = rotation_rows
            .into_iter()
            .map(|(name, done, failed)| (name, (done.max(0) as u64, failed.max(0) as u64)))
            .collect();
        let mut credits_by_name: std::collections::HashMap<String, Vec<(String, f64)>> =
            std::collections::HashMap::new();
        for (name, unit, remaining) in credit_rows {
            credits_by_name
                .entry(name)
                .or_default()
                .push((unit, remaining));
        }
        // Each credential is handed over as its row arrives (at most one current key each,
        // by the unique index): the whole table is never held at once, which at 10,000
        // credentials was ~10 MB of records at every scrape after a change.
        {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS}, {VERSION_COLUMNS} FROM credentials c
                 LEFT JOIN key_versions v ON v.credential_id = c.id AND v.stage = 'current'
                 WHERE c.removed_at IS NULL ORDER BY c.name"
            );
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let credential = credential_from_row(&row);
                let current = row
                    .get::<Option<i64>, _>(CREDENTIAL_COLUMN_COUNT)
                    .map(|_| version_from_row_at(&row, CREDENTIAL_COLUMN_COUNT));
                let (rotations_succeeded, rotations_failed) = rotations_by_name
                    .remove(&credential.name)
                    .unwrap_or_default();
                visit(CredentialState {
                    rotations_succeeded,
                    rotations_failed,
                    current,
                    credits: credits_by_name.remove(&credential.name).unwrap_or_default(),
                    credential,
                });
            }
        }
        tx.commit().await?;
        Ok(generation)
    }

    async fn last_checks(&self) -> StoreResult<std::collections::HashMap<String, UnixTime>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT name, last_check_at FROM credentials WHERE removed_at IS NULL AND last_check_at IS NOT NULL",
        )
        .fetch(&self.reader)
        .try_collect()
        .await?)
    }

    async fn generation(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn credential(&self, name: &str) -> StoreResult<Option<CredentialRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(credential_from_row))
    }

    async fn versions(&self, credential: &str) -> StoreResult<Vec<KeyVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE c.name = ? ORDER BY v.id DESC"
        ))
        .bind(credential)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    async fn events(&self, credential: &str) -> StoreResult<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, at, credential, version_id, kind, actor, detail FROM events WHERE credential = ? ORDER BY id",
        )
        .bind(credential)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Event {
                id: row.get(0),
                at: row.get(1),
                credential: row.get(2),
                version_id: row.get(3),
                kind: row.get(4),
                actor: row.get(5),
                detail: row.get(6),
            })
            .collect())
    }

    async fn secret(&self, version_id: i64) -> StoreResult<SecretString> {
        let row = sqlx::query(
            "SELECT c.name, v.sealed_secret FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = ?",
        )
        .bind(version_id)
        .fetch_optional(&self.reader)
        .await?
        .ok_or(StoreError::UnknownVersion(version_id))?;
        let sealed: Option<Vec<u8>> = row.get(1);
        let sealed = sealed.ok_or(StoreError::NoSecret(version_id))?;
        Ok(self.sealer()?.open(row.get(0), version_id, &sealed)?)
    }

    async fn current_key(
        &self,
        credential: &str,
    ) -> StoreResult<Option<(KeyVersion, SecretString)>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS}, v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE c.name = ? AND v.stage = 'current'"
        ))
        .bind(credential)
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let version = version_from_row(&row);
        let sealed: Option<Vec<u8>> = row.get(VERSION_COLUMN_COUNT);
        let sealed = sealed.ok_or(StoreError::NoSecret(version.id))?;
        let secret = self.sealer()?.open(credential, version.id, &sealed)?;
        Ok(Some((version, secret)))
    }

    fn current_keys_sealed(&self) -> BoxStream<'_, StoreResult<SealedKey>> {
        // A literal: the stream borrows its statement for as long as it runs.
        const CURRENT_KEYS_SEALED: &str = concat!(
            "SELECT ",
            version_columns!(),
            ", v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE c.removed_at IS NULL AND v.stage = 'current' AND v.sealed_secret IS NOT NULL"
        );
        sqlx::query(CURRENT_KEYS_SEALED)
            .fetch(&self.reader)
            .map_ok(|row| SealedKey::new(version_from_row(&row), row.get(VERSION_COLUMN_COUNT)))
            .map_err(StoreError::from)
            .boxed()
    }

    fn open_sealed(&self, key: &SealedKey) -> StoreResult<SecretString> {
        Ok(self
            .sealer()?
            .open(&key.version.credential, key.version.id, key.sealed())?)
    }

    async fn rotation_outlooks(&self) -> StoreResult<Vec<RotationOutlook>> {
        // One pass over the credentials; the correlated sub-queries use the
        // (credential_id, stage) index.
        Ok(sqlx::query(
            "SELECT c.name, c.next_rotation_at, c.last_rotated_at, c.consecutive_failures,
                    cur.created_at, cur.expires_at,
                    EXISTS (SELECT 1 FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'pending' AND v.rotation_id IS NULL
                            AND v.sealed_secret IS NOT NULL),
                    r.updated_at,
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'previous' AND v.sealed_secret IS NOT NULL),
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'failed' AND v.sealed_secret IS NOT NULL)
             FROM credentials c
             LEFT JOIN key_versions cur ON cur.credential_id = c.id AND cur.stage = 'current'
             LEFT JOIN rotations r ON r.credential_id = c.id AND r.finished_at IS NULL
             WHERE c.removed_at IS NULL",
        )
        .fetch(&self.reader)
        .map_ok(|row| RotationOutlook {
            credential: row.get(0),
            next_rotation_at: row.get(1),
            last_rotated_at: row.get(2),
            consecutive_failures: row.get(3),
            current: row
                .get::<Option<i64>, _>(4)
                .map(|created| (created, row.get(5))),
            imported_pending: row.get(6),
            in_flight_since: row.get(7),
            oldest_previous: row.get(8),
            oldest_discarded: row.get(9),
        })
        .try_collect()
        .await?)
    }

    async fn record_check(
        &self,
        credential: &str,
        version_id: i64,
        check: &CheckRecord,
    ) -> StoreResult<()> {
        let (done, mut result) = tokio::sync::oneshot::channel();
        self.checks
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PendingCheck {
                credential: credential.to_string(),
                version_id,
                check: check.clone(),
                done,
            });
        {
            let _turn = self.checks.turn.lock().await;
            // Written by the batch of whoever held the turn before us?
            if let Ok(written) = result.try_recv() {
                return written;
            }
            let batch = self.checks.take();
            if !batch.is_empty() {
                // Spawned: a caller cancelled here (a check task aborted by a reload) must not
                // take the other callers' records down with it.
                let commit =
                    tokio::spawn(commit_checks(self.writer.clone(), self.path.clone(), batch));
                let _ = commit.await;
            }
        }
        result.await.unwrap_or_else(|_| Err(check_not_written()))
    }

    async fn record_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
        let (batch, mut answers): (Vec<_>, Vec<_>) = checks
            .into_iter()
            .map(|c| {
                let (done, answer) = tokio::sync::oneshot::channel();
                let pending = PendingCheck {
                    credential: c.credential,
                    version_id: c.version_id,
                    check: c.check,
                    done,
                };
                (pending, answer)
            })
            .unzip();
        if !batch.is_empty() {
            // Spawned, as in `record_check`: a caller cancelled mid-write leaves the
            // transaction to finish or fail whole.
            let _ =
                tokio::spawn(commit_checks(self.writer.clone(), self.path.clone(), batch)).await;
        }
        answers
            .iter_mut()
            .map(|answer| {
                answer
                    .try_recv()
                    .unwrap_or_else(|_| Err(check_not_written()))
            })
            .collect()
    }

    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<Rotation> {
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let in_flight: Option<String> = sqlx::query_scalar(
            "SELECT id FROM rotations WHERE credential_id = ? AND finished_at IS NULL",
        )
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(other) = in_flight {
            return Err(StoreError::Conflict(format!(
                "rotation {other} of {credential} is already in flight"
            )));
        }
        sqlx::query(
            "INSERT INTO rotations (id, credential_id, step, started_at, updated_at) VALUES (?, ?, 'planned', ?, ?)",
        )
        .bind(rotation_id)
        .bind(credential_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(credential),
            None,
            "rotation_planned",
            actor,
            &format!("rotation {rotation_id}"),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Rotation {
            id: rotation_id.to_string(),
            credential: credential.to_string(),
            step: RotationStep::Planned,
            new_version_id: None,
            started_at: now,
            updated_at: now,
            error: None,
        })
    }

    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>> {
        let rows = sqlx::query(
            "SELECT r.id, c.name, r.step, r.new_version_id, r.started_at, r.error, r.updated_at
             FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.finished_at IS NULL ORDER BY r.started_at",
        )
        .fetch_all(&self.writer)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Rotation {
                id: row.get(0),
                credential: row.get(1),
                step: RotationStep::parse(&row.get::<String, _>(2))
                    .unwrap_or(RotationStep::Planned),
                new_version_id: row.get(3),
                started_at: row.get(4),
                updated_at: row.get(6),
                error: row.get(5),
            })
            .collect())
    }

    async fn record_issued(
        &self,
        rotation_id: &str,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let sealer = self.sealer()?;
        let fp = fingerprint(&key.secret);
        let mut tx = self.begin_write().await?;
        let (credential_id, credential): (i64, String) = sqlx::query_as(
            "SELECT c.id, c.name FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL AND r.step = 'planned'",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("rotation {rotation_id} is not waiting for a key"))
        })?;
        let id = Self::insert_sealed_version(
            &mut tx,
            sealer,
            (credential_id, &credential),
            "pending",
            &fp,
            &key,
            Some(rotation_id),
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE rotations SET step = 'issued', new_version_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(id)
        .bind(now)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "{fp} issued as pending (provider key id {})",
            key.provider_key_id.as_deref().unwrap_or("-")
        );
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(id),
            "issued",
            "rotation",
            &detail,
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn adopt_pending(
        &self,
        rotation_id: &str,
        version_id: i64,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let credential: String = sqlx::query_scalar(
            "SELECT c.name FROM rotations r JOIN credentials c ON c.id = r.credential_id
             JOIN key_versions v ON v.credential_id = c.id
             WHERE r.id = ? AND r.step = 'planned' AND r.finished_at IS NULL AND v.id = ? AND v.stage = 'pending'",
        )
        .bind(rotation_id)
        .bind(version_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("version {version_id} cannot be adopted by rotation {rotation_id}")))?;
        sqlx::query(
            "UPDATE rotations SET step = 'issued', new_version_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(version_id)
        .bind(now)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE key_versions SET rotation_id = ? WHERE id = ?")
            .bind(rotation_id)
            .bind(version_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            "adopted",
            "rotation",
            "operator-imported pending key taken into the rotation",
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn advance_rotation(
        &self,
        rotation_id: &str,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential, version): (String, Option<i64>) = sqlx::query_as(
            "SELECT c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("rotation {rotation_id} is not in flight")))?;
        sqlx::query("UPDATE rotations SET step = ?, updated_at = ? WHERE id = ?")
            .bind(step.as_str())
            .bind(now)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            version,
            step.as_str(),
            "rotation",
            detail,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn promote(
        &self,
        rotation_id: &str,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential_id, credential, new_version): (i64, String, Option<i64>) = sqlx::query_as(
            "SELECT c.id, c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL AND r.step = 'delivered'",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("rotation {rotation_id} is not ready to promote")))?;
        let new_version =
            new_version.ok_or_else(|| StoreError::Conflict("rotation has no new key".into()))?;
        sqlx::query(
            "UPDATE key_versions SET stage = 'previous', stage_changed_at = ? WHERE credential_id = ? AND stage = 'current'",
        )
        .bind(now)
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        let promoted = sqlx::query(
            "UPDATE key_versions SET stage = 'current', stage_changed_at = ? WHERE id = ? AND stage = 'pending'",
        )
        .bind(now)
        .bind(new_version)
        .execute(&mut *tx)
        .await?;
        if promoted.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "version {new_version} is no longer pending"
            )));
        }
        sqlx::query("UPDATE rotations SET step = 'done', updated_at = ?, finished_at = ?, error = NULL WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        // The new key's check state starts fresh: the credential-level status was the old key's.
        sqlx::query(
            "UPDATE credentials SET last_rotated_at = ?, consecutive_failures = 0, next_rotation_at = ?,
                 check_status = 'valid', valid = 1, last_check_at = ?, check_detail = 'verified during rotation'
             WHERE id = ?",
        )
        .bind(now)
        .bind(next_rotation_at)
        .bind(now)
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(new_version),
            "promoted",
            "rotation",
            &format!(
                "rotation {rotation_id} done; the previous key stays valid for the grace period"
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_rotation(
        &self,
        rotation_id: &str,
        failure: &RotationFailure,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential_id, credential, new_version): (i64, String, Option<i64>) = sqlx::query_as(
            "SELECT c.id, c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::Conflict(format!("rotation {rotation_id} is not in flight")))?;
        sqlx::query("UPDATE rotations SET step = 'failed', updated_at = ?, finished_at = ?, error = ?, attempts = attempts + 1 WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(&failure.error)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        match (failure.discard_pending, new_version) {
            (true, Some(version)) => {
                sqlx::query("UPDATE key_versions SET stage = 'failed', stage_changed_at = ? WHERE id = ? AND stage = 'pending'")
                    .bind(now)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            (false, Some(version)) => {
                // A kept (operator-imported) key is released from the failed rotation, so
                // the retry can adopt it again: a pending key bound to a finished rotation
                // was neither "imported, waiting" nor in flight, and stayed stuck (and
                // blocked re-importing it as a duplicate).
                sqlx::query(
                    "UPDATE key_versions SET rotation_id = NULL WHERE id = ? AND stage = 'pending'",
                )
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        sqlx::query("UPDATE credentials SET consecutive_failures = consecutive_failures + 1, next_rotation_at = COALESCE(?, next_rotation_at) WHERE id = ?")
            .bind(failure.retry_at)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            new_version,
            "rotation_failed",
            "rotation",
            &failure.error,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_next_rotations(&self, due: &[(String, Option<UnixTime>)]) -> StoreResult<()> {
        if due.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (credential, at) in due {
            sqlx::query("UPDATE credentials SET next_rotation_at = ? WHERE name = ?")
                .bind(at)
                .bind(credential)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_revoked(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let credential: String = sqlx::query_scalar(
            "SELECT c.name FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = ?",
        )
        .bind(version_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::UnknownVersion(version_id))?;
        // Secret material is dropped with the stage change: a revoked key has no use.
        sqlx::query(
            "UPDATE key_versions SET stage = 'revoked', stage_changed_at = ?, sealed_secret = NULL WHERE id = ? AND stage <> 'current'",
        )
        .bind(now)
        .bind(version_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            "revoked",
            actor,
            detail,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rollback(
        &self,
        credential: &str,
        not_before: UnixTime,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let previous: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, stage_changed_at FROM key_versions WHERE credential_id = ? AND stage = 'previous' AND sealed_secret IS NOT NULL
             ORDER BY stage_changed_at DESC, id DESC LIMIT 1",
        )
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((previous_id, changed_at)) = previous else {
            return Err(StoreError::Conflict(format!(
                "{credential} has no previous key to roll back to"
            )));
        };
        if changed_at < not_before {
            return Err(StoreError::Conflict(format!(
                "the previous key of {credential} is past its grace period; rolling back to it is refused"
            )));
        }
        sqlx::query("UPDATE key_versions SET stage = 'previous', stage_changed_at = ? WHERE credential_id = ? AND stage = 'current'")
            .bind(now)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE key_versions SET stage = 'current', stage_changed_at = ? WHERE id = ?")
            .bind(now)
            .bind(previous_id)
            .execute(&mut *tx)
            .await?;
        // A rollback means the last rotation failed in use: count it as a failure and hold
        // automatic rotation off for a grace period, or a max_age policy would undo the
        // operator's rollback at the next scheduling pass.
        sqlx::query(
            "UPDATE credentials SET consecutive_failures = consecutive_failures + 1, next_rotation_at = ? WHERE id = ?",
        )
        .bind(now + (now - not_before).max(60))
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(credential),
            Some(previous_id),
            "rolled_back",
            actor,
            "previous key restored as current; automatic rotation held off for a grace period",
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, previous_id).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn reseal(&self, new: &Sealer, actor: &str, now: UnixTime) -> StoreResult<usize> {
        let old = self.sealer()?;
        let mut tx = self.begin_write().await?;
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT v.id, c.name, v.sealed_secret FROM key_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE v.sealed_secret IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Open everything before writing anything: one secret the old key cannot open
        // aborts the whole rotation with nothing changed.
        let mut resealed = Vec::with_capacity(rows.len());
        for (id, credential, sealed) in &rows {
            let secret = old.open(credential, *id, sealed)?;
            resealed.push((*id, new.seal(credential, *id, &secret)?));
        }
        for (id, sealed) in &resealed {
            sqlx::query("UPDATE key_versions SET sealed_secret = ? WHERE id = ?")
                .bind(sealed)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Self::insert_event(
            &mut tx,
            None,
            None,
            "master_key_rotated",
            actor,
            &format!("{} secrets re-sealed", resealed.len()),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(resealed.len())
    }

    async fn append_event(
        &self,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: &str,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        Self::insert_event(&mut tx, credential, version_id, kind, actor, detail, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, provider: &str, kind: &str) -> CredentialSpec {
        CredentialSpec {
            name: name.into(),
            provider: provider.into(),
            provider_kind: kind.into(),
        }
    }

    async fn kinds(store: &SqliteStore, name: &str) -> Vec<String> {
        let events = store.events(name).await.unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    /// The read-only comparison must notice every kind of change, and only changes.
    #[tokio::test]
    async fn sync_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), None)
            .await
            .unwrap();
        let initial = vec![spec("b", "p", "openai"), spec("a", "p", "openai")];
        store.sync_credentials(&initial, 1).await.unwrap();
        let generation = store.generation().await.unwrap();

        // Same set in another order: nothing written, the generation stays.
        let reordered = vec![spec("a", "p", "openai"), spec("b", "p", "openai")];
        store.sync_credentials(&reordered, 2).await.unwrap();
        assert_eq!(store.generation().await.unwrap(), generation);
        assert_eq!(kinds(&store, "a").await, ["credential_added"]);

        // Each change is seen: provider, kind, removal, return, addition.
        let changes: [Vec<CredentialSpec>; 5] = [
            vec![spec("a", "q", "openai"), spec("b", "p", "openai")],
            vec![spec("a", "q", "anthropic"), spec("b", "p", "openai")],
            vec![spec("a", "q", "anthropic")],
            vec![spec("a", "q", "anthropic"), spec("b", "p", "openai")],
            vec![
                spec("a", "q", "anthropic"),
                spec("b", "p", "openai"),
                spec("c", "p", "openai"),
            ],
        ];
        for (i, specs) in changes.iter().enumerate() {
            let before = store.generation().await.unwrap();
            store.sync_credentials(specs, 3 + i as i64).await.unwrap();
            assert!(store.generation().await.unwrap() > before, "change {i}");
        }
        assert_eq!(
            kinds(&store, "a").await,
            [
                "credential_added",
                "credential_updated",
                "credential_updated"
            ]
        );
        assert_eq!(
            kinds(&store, "b").await,
            [
                "credential_added",
                "credential_removed",
                "credential_updated"
            ]
        );
        assert_eq!(kinds(&store, "c").await, ["credential_added"]);
        store.close().await;
    }
}
