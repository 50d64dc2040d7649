//! The PostgreSQL backend, shared by several keyrotd replicas: one file per concern of the
//! store's traits, mirroring `store/sqlite/`, with the same tables and columns (see
//! `migrations/postgres/`).
//!
//! # Concurrency
//!
//! SQLite has one writer, so its backend reads and then writes inside `BEGIN IMMEDIATE`
//! without a second thought. PostgreSQL runs write transactions side by side at READ
//! COMMITTED, and this backend serialises what must be serialised with explicit row locks
//! instead of SERIALIZABLE and retries:
//!
//! - every write about one credential first locks its `credentials` row (`FOR UPDATE`,
//!   [`PgStore::credential_id`]), so import, planning, promotion and revocation of one
//!   credential take turns, as they do on SQLite, while different credentials proceed in
//!   parallel;
//! - every rotation step first locks the rotation row (`FOR UPDATE`), then its credential's
//!   row (always in that order), and compares step and owner epoch under that lock: a
//!   takeover (an `UPDATE` of the same row) waits for the step to commit, or the step sees
//!   the raised epoch and is [`Fenced`](crate::store::StoreError::Fenced); a step that
//!   changes none of the credential's keys (`verified`, `delivered`) skips the credential's
//!   row, and a lease renewal is a single `UPDATE` of the rotation row on its usual path
//!   (each is a round trip the owner pays before every external effect);
//! - a write made for a leader checks the leadership row `FOR SHARE`, after those locks: a
//!   change of leader (an upsert of that row) waits until the write commits, so no write
//!   lands under a term that is already over;
//! - check batches lock their credentials' rows in name order first, so two batches never
//!   wait on each other in a cycle;
//! - the store's generation is bumped last, just before the commit
//!   ([`commit`]), so its row lock is held only for the commit itself and a reader's
//!   snapshot sees the generation and the data it counts together.
//!
//! Unique indexes still stand behind the locks (one current key, one rotation in flight);
//! should one fire anyway, the violation maps to the same [`StoreError`] variant SQLite's
//! checks answer. Every time the store compares is the database's:
//! `floor(extract(epoch from clock_timestamp()))` (not `now()`, which is frozen at the start
//! of the transaction).

mod audit;
mod checks;
mod copy;
mod credentials;
mod installation;
mod keys;
mod leadership;
mod open;
mod ownership;
mod rotations;
mod rows;
mod state;

use super::{StoreError, StoreResult};
use crate::crypto::Sealer;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use std::sync::Arc;

/// The database's now, in Unix seconds, as the clock reads at the statement (not the
/// transaction's start).
macro_rules! db_now {
    () => {
        "floor(extract(epoch from clock_timestamp()))::bigint"
    };
}
pub(super) use db_now;

/// The shared backend: one implementation of every concern of [`Store`](super::Store).
pub struct PgStore {
    /// The database as it may be logged (no password, no query string).
    target: String,
    pool: PgPool,
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

type Tx = Transaction<'static, Postgres>;

impl PgStore {
    /// The database this store speaks to, as it may be logged: no password, no query string.
    pub fn describe(&self) -> &str {
        &self.target
    }

    async fn begin_write(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin().await?)
    }

    fn sealer(&self) -> StoreResult<&Sealer> {
        self.sealer.as_deref().ok_or(StoreError::MasterKeyRequired)
    }

    /// An active credential's id, its row locked for the rest of the transaction: writes
    /// about one credential take turns (see the module doc).
    pub(super) async fn credential_id(tx: &mut Tx, name: &str) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT id FROM credentials WHERE name = $1 AND removed_at IS NULL FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::UnknownCredential(name.to_string()))
    }
}

/// Moves the store's generation and commits. Every write transaction ends here (a
/// transaction that changed nothing rolls back instead): the generation row is locked
/// only from here to the commit.
pub(super) async fn commit(mut tx: Tx) -> StoreResult<()> {
    sqlx::query("UPDATE store_generation SET value = value + 1 WHERE id = 1")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The name of the constraint a statement violated, if it failed on a unique index.
pub(super) fn unique_violation(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => Some(
            db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .and_then(|pg| pg.constraint())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => None,
    }
}
