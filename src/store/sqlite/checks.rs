//! Check results: written in batches, three fixed statements per batch.

use super::{begin_write, SqliteStore};
use crate::model::{CheckStatus, UnixTime};
use crate::store::{CheckRecord, CheckStore, CheckToRecord, EventKind, StoreError, StoreResult};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Writes a batch of check results in one transaction and answers each record in its
/// place. If the batch fails (one record names a credential removed meanwhile, say), each
/// record is written on its own so one bad record fails alone.
async fn commit_checks(
    writer: SqlitePool,
    path: PathBuf,
    batch: Vec<CheckToRecord>,
) -> Vec<StoreResult<()>> {
    async fn write(writer: &SqlitePool, path: &Path, batch: &[CheckToRecord]) -> StoreResult<()> {
        let mut tx = begin_write(writer, path).await?;
        for chunk in batch.chunks(CHECKS_PER_STATEMENT) {
            apply_checks(&mut tx, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }
    match write(&writer, &path, &batch).await {
        Ok(()) => batch.iter().map(|_| Ok(())).collect(),
        Err(error) if batch.len() == 1 => vec![Err(error)],
        Err(_) => {
            let mut written = Vec::with_capacity(batch.len());
            for record in &batch {
                written.push(write(&writer, &path, std::slice::from_ref(record)).await);
            }
            written
        }
    }
}

/// A check result whose batch ended without answering it (its writer was cancelled).
fn check_not_written() -> StoreError {
    StoreError::ChecksNotWritten {
        reason: "the writer stopped before answering".into(),
    }
}

/// Check results written by one statement of [`apply_checks`]: bounds the JSON text a
/// statement binds.
const CHECKS_PER_STATEMENT: usize = 500;

/// The batch of [`apply_checks`] as a table: one JSON array of
/// `[name, version_id, status, at, detail, valid, expires_at]` records, bound as `?1`.
/// The statements' text is fixed whatever the batch's size, so the writer compiles each
/// once and keeps it (one `VALUES` row per record would compile every batch afresh).
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
/// batch, not some per record: every statement of sqlx's SQLite driver is a round trip to
/// the connection's thread.
///
/// Fails when a record's credential is unknown or removed, or when one credential appears
/// twice (the caller then writes the records one by one, which names the culprit).
async fn apply_checks(
    tx: &mut Transaction<'static, Sqlite>,
    batch: &[CheckToRecord],
) -> StoreResult<()> {
    // Events first: they compare with the status before this batch. The kind is bound
    // as `?2`.
    const EVENTS: &str = concat!(
        checks_batch!(),
        "INSERT INTO events (at, credential, version_id, kind, actor, detail)
         SELECT b.at, b.name, b.version_id, ?2, 'checker',
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
        .bind(EventKind::CheckStatusChanged.as_str())
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
        return Err(StoreError::CheckBatchMismatch {
            unmatched: batch.len() as u64 - updated.min(batch.len() as u64),
            records: batch.len(),
        });
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
    async fn record_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
        if checks.is_empty() {
            return Vec::new();
        }
        let count = checks.len();
        // Spawned: a caller cancelled mid-write (a check task aborted by a reload) leaves
        // the transaction to finish or fail whole.
        let commit = tokio::spawn(commit_checks(
            self.writer.clone(),
            self.path.clone(),
            checks,
        ));
        match commit.await {
            Ok(written) => written,
            Err(_) => (0..count).map(|_| Err(check_not_written())).collect(),
        }
    }

    async fn last_checks(&self) -> StoreResult<HashMap<String, UnixTime>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT name, last_check_at FROM credentials WHERE removed_at IS NULL AND last_check_at IS NOT NULL",
        )
        .fetch(&self.reader)
        .try_collect()
        .await?)
    }

    async fn credits(&self, credential: &str) -> StoreResult<Vec<(String, f64)>> {
        Ok(sqlx::query_as::<_, (String, f64)>(
            "SELECT k.unit, k.remaining FROM credits k JOIN credentials c ON c.id = k.credential_id
             WHERE c.name = ? ORDER BY k.unit",
        )
        .bind(credential)
        .fetch_all(&self.reader)
        .await?)
    }
}
