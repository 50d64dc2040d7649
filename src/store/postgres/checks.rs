//! Check results: written in batches, one transaction per batch and four fixed statements
//! per chunk of it (a lock, then three writes), the records bound as parallel arrays and
//! read back with `UNNEST`.

use super::{commit, PgStore, Tx};
use crate::model::{CheckStatus, UnixTime};
use crate::store::{CheckRecord, CheckStore, CheckToRecord, EventKind, StoreError, StoreResult};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::postgres::PgPool;
use std::collections::HashMap;

/// Writes a batch of check results in one transaction and answers each record in its
/// place. If the batch fails (one record names a credential removed meanwhile, say), each
/// record is written on its own so one bad record fails alone.
async fn commit_checks(pool: PgPool, batch: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
    async fn write(pool: &PgPool, batch: &[CheckToRecord]) -> StoreResult<()> {
        let mut tx = pool.begin().await?;
        for chunk in batch.chunks(CHECKS_PER_STATEMENT) {
            apply_checks(&mut tx, chunk).await?;
        }
        commit(tx).await
    }
    match write(&pool, &batch).await {
        Ok(()) => batch.iter().map(|_| Ok(())).collect(),
        Err(error) if batch.len() == 1 => vec![Err(error)],
        Err(_) => {
            let mut written = Vec::with_capacity(batch.len());
            for record in &batch {
                written.push(write(&pool, std::slice::from_ref(record)).await);
            }
            written
        }
    }
}

/// Check results written by one statement of [`apply_checks`]: bounds the arrays a
/// statement binds.
const CHECKS_PER_STATEMENT: usize = 500;

/// The batch of [`apply_checks`] as a table, from seven arrays bound as `$1`..`$7`. The
/// statements' text is fixed whatever the batch's size, so the server plans each once per
/// connection.
macro_rules! checks_batch {
    () => {
        "WITH b(name, version_id, status, at, detail, valid, expires_at) AS (
           SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[],
                                $6::bigint[], $7::bigint[])) "
    };
}

/// The batch as parallel arrays, one per column of [`checks_batch!`].
#[derive(Default)]
struct Columns<'a> {
    names: Vec<&'a str>,
    versions: Vec<i64>,
    statuses: Vec<&'static str>,
    ats: Vec<i64>,
    details: Vec<&'a str>,
    valid: Vec<Option<i64>>,
    expires: Vec<Option<i64>>,
}

impl<'a> Columns<'a> {
    fn of(batch: &'a [CheckToRecord]) -> Columns<'a> {
        let mut columns = Columns::default();
        for p in batch {
            let check = &p.check;
            // Only a conclusive result changes validity; a blip keeps the last known state.
            let valid = match check.status {
                CheckStatus::Invalid => Some(0),
                CheckStatus::Valid | CheckStatus::Exhausted => Some(1),
                _ => None,
            };
            columns.names.push(&p.credential);
            columns.versions.push(p.version_id);
            columns.statuses.push(check.status.as_str());
            columns.ats.push(check.at);
            columns.details.push(&check.detail);
            columns.valid.push(valid);
            columns.expires.push(check.expires_at);
        }
        columns
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.names)
            .bind(&self.versions)
            .bind(&self.statuses)
            .bind(&self.ats)
            .bind(&self.details)
            .bind(&self.valid)
            .bind(&self.expires)
    }
}

/// Records checks inside `tx`, as SQLite's backend does: each updates its credential's
/// status and last check (only a conclusive result changes validity), its key version's
/// last check and reported expiry, and its balances; a change of status is also an event.
///
/// Fails when a record's credential is unknown or removed, or when one credential appears
/// twice (the caller then writes the records one by one, which names the culprit).
async fn apply_checks(tx: &mut Tx, batch: &[CheckToRecord]) -> StoreResult<()> {
    // Events first: they compare with the status before this batch. The kind is `$8`.
    const EVENTS: &str = concat!(
        checks_batch!(),
        "INSERT INTO events (at, credential, version_id, kind, actor, detail)
         SELECT b.at, b.name, b.version_id, $8, 'checker',
                COALESCE(c.check_status, 'unchecked') || ' -> ' || b.status || ': ' || b.detail
         FROM b JOIN credentials c ON c.name = b.name AND c.removed_at IS NULL
         WHERE c.check_status IS DISTINCT FROM b.status"
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
    // Two batches updating the same credentials in different orders would deadlock: take
    // their rows' locks in one order (by name) first.
    const LOCK: &str = "SELECT 1 FROM credentials WHERE name = ANY($1) AND removed_at IS NULL
                        ORDER BY name COLLATE \"C\" FOR UPDATE";
    let columns = Columns::of(batch);
    sqlx::query(LOCK)
        .bind(&columns.names)
        .execute(&mut **tx)
        .await?;
    columns
        .bind(sqlx::query(EVENTS))
        .bind(EventKind::CheckStatusChanged.as_str())
        .execute(&mut **tx)
        .await?;
    // PostgreSQL updates a row once per statement even when two batch rows name it, so a
    // repeated credential shows as a count short of the batch, as on SQLite.
    let updated = columns
        .bind(sqlx::query(CREDENTIALS))
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
    columns
        .bind(sqlx::query(VERSIONS))
        .execute(&mut **tx)
        .await?;
    // Balances are reported by few providers; those records replace their set one by one.
    for p in batch.iter().filter(|p| !p.check.credits.is_empty()) {
        let credential_id = PgStore::credential_id(tx, &p.credential).await?;
        replace_credits(tx, credential_id, &p.check).await?;
    }
    Ok(())
}

/// Replaces a credential's reported balances with those of `check`.
async fn replace_credits(tx: &mut Tx, credential_id: i64, check: &CheckRecord) -> StoreResult<()> {
    sqlx::query("DELETE FROM credits WHERE credential_id = $1")
        .bind(credential_id)
        .execute(&mut **tx)
        .await?;
    let (units, remaining): (Vec<&str>, Vec<f64>) = check
        .credits
        .iter()
        .map(|(unit, remaining)| (unit.as_str(), *remaining))
        .unzip();
    sqlx::query(
        "INSERT INTO credits (credential_id, unit, remaining, reported_at)
         SELECT $1, u.unit, u.remaining, $4 FROM UNNEST($2::text[], $3::float8[]) AS u(unit, remaining)",
    )
    .bind(credential_id)
    .bind(&units)
    .bind(&remaining)
    .bind(check.at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl CheckStore for PgStore {
    async fn record_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
        if checks.is_empty() {
            return Vec::new();
        }
        let count = checks.len();
        // Spawned: a caller cancelled mid-write (a check task aborted by a reload) leaves
        // the transaction to finish or fail whole.
        let commit = tokio::spawn(commit_checks(self.pool.clone(), checks));
        match commit.await {
            Ok(written) => written,
            Err(_) => (0..count)
                .map(|_| {
                    Err(StoreError::ChecksNotWritten {
                        reason: "the writer stopped before answering".into(),
                    })
                })
                .collect(),
        }
    }

    async fn last_checks(&self) -> StoreResult<HashMap<String, UnixTime>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT name, last_check_at FROM credentials WHERE removed_at IS NULL AND last_check_at IS NOT NULL",
        )
        .fetch(&self.pool)
        .try_collect()
        .await?)
    }

    async fn credits(&self, credential: &str) -> StoreResult<Vec<(String, f64)>> {
        Ok(sqlx::query_as::<_, (String, f64)>(
            "SELECT k.unit, k.remaining FROM credits k JOIN credentials c ON c.id = k.credential_id
             WHERE c.name = $1 ORDER BY k.unit COLLATE \"C\"",
        )
        .bind(credential)
        .fetch_all(&self.pool)
        .await?)
    }
}
