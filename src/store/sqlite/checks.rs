//! Check results: written in batches, three fixed statements per batch.

use super::{begin_write, SqliteStore};
use crate::model::{CheckStatus, UnixTime};
use crate::store::{CheckRecord, CheckStore, CheckToRecord, StoreError, StoreResult};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Check results waiting to be written: concurrent [`Store::record_check`] calls share one
/// transaction (group commit). With `synchronous=FULL` every commit is an fsync (4 ms on the
/// benchmark host), so one transaction per check capped a sweep at ~250 checks/s whatever
/// the concurrency; batched, a sweep of 10,000 keys commits a few dozen times.
#[derive(Default)]
pub(super) struct CheckQueue {
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

#[async_trait]
impl CheckStore for SqliteStore {
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

    async fn last_checks(&self) -> StoreResult<HashMap<String, UnixTime>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT name, last_check_at FROM credentials WHERE removed_at IS NULL AND last_check_at IS NOT NULL",
        )
        .fetch(&self.reader)
        .try_collect()
        .await?)
    }
}
