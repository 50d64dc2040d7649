//! The embedded SQLite backend, one file per concern of the store's traits.
//!
//! One writer connection (SQLite has one writer anyway; a pool of one makes queueing
//! explicit), write transactions opened with `BEGIN IMMEDIATE` so they never fail with
//! SQLITE_BUSY half-way, WAL so readers never block the writer, `synchronous=FULL` because a
//! committed key must survive power loss, and a few read-only reader connections that close
//! when idle (see `open.rs`).

mod audit;
mod checks;
mod copy;
mod credentials;
mod installation;
mod keys;
mod leadership;
mod liveness;
mod open;
mod ownership;
mod rotations;
mod rows;
mod state;

use super::{StoreError, StoreResult};
use crate::crypto::Sealer;
pub use liveness::{lock_exclusive, lock_for_daemon, DatabaseLock};
use open::classify_open_error;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The embedded backend: one implementation of every concern of [`Store`](super::Store).
pub struct SqliteStore {
    path: PathBuf,
    writer: SqlitePool,
    reader: SqlitePool,
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    async fn close_pools(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        begin_write(&self.writer, &self.path).await
    }

    /// A write transaction that leaves the store's generation alone: for writes the metrics
    /// do not render (the leadership lease).
    async fn begin_write_unseen(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| classify_open_error(&self.path, e))
    }

    fn sealer(&self) -> StoreResult<&Sealer> {
        self.sealer.as_deref().ok_or(StoreError::MasterKeyRequired)
    }

    pub(super) async fn credential_id(
        tx: &mut Transaction<'static, Sqlite>,
        name: &str,
    ) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT id FROM credentials WHERE name = ? AND removed_at IS NULL")
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::UnknownCredential(name.to_string()))
    }
}

/// Opens a write transaction (`BEGIN IMMEDIATE`) and moves the store's generation.
pub(super) async fn begin_write(
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
