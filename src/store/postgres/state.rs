//! The state the metrics render: every active credential with its current key, balances and
//! rotation counts, streamed to the reader in one read transaction. REPEATABLE READ, so the
//! generation read first and every row after it come from one snapshot: a cache keyed by
//! the generation never holds rows of another.

use super::rows::{
    credential_from_row, version_from_row_at, CREDENTIAL_COLUMNS, CREDENTIAL_COLUMN_COUNT,
    VERSION_COLUMNS,
};
use super::PgStore;
use crate::store::{Counter, CredentialState, Revocations, StateStore, StoreResult};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::Row;
use std::collections::HashMap;

/// A credential's running totals as read for one snapshot.
#[derive(Default)]
struct Totals {
    /// (succeeded, failed) rotations.
    rotations: (u64, u64),
    revocations: Revocations,
}

#[async_trait]
impl StateStore for PgStore {
    async fn visit_states(
        &self,
        visit: &mut (dyn FnMut(CredentialState) + Send),
    ) -> StoreResult<i64> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let generation: i64 = sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // The side tables first (few rows: balances are reported by few providers, and the
        // totals are a handful of rows per credential), then one pass over the credentials.
        let credit_rows: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT c.name, k.unit, k.remaining FROM credits k JOIN credentials c ON c.id = k.credential_id
             WHERE c.removed_at IS NULL ORDER BY k.unit COLLATE \"C\"",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Running totals kept beside the events (one row per credential and counter), not
        // a scan of every finished rotation: the cost follows the credentials, not history.
        let counter_rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT k.credential, k.counter, k.value FROM credential_counters k
             JOIN credentials c ON c.name = k.credential WHERE c.removed_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Keys whose revocation failed and that are still live: a partial index holds only
        // those, so this reads nothing when revocations work.
        let failing_rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT c.name, COUNT(*), MIN(v.revoke_failed_at) FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE v.revoke_failed_at IS NOT NULL AND v.sealed_secret IS NOT NULL
               AND v.stage IN ('previous', 'failed') AND c.removed_at IS NULL
             GROUP BY c.name",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Rotations waiting in attention: only unfinished rotations are read (the partial
        // one-in-flight index), never the history.
        let attention: std::collections::HashSet<String> = sqlx::query_scalar(
            "SELECT c.name FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.finished_at IS NULL AND r.step = 'attention' AND c.removed_at IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut totals_by_name: HashMap<String, Totals> = HashMap::new();
        for (name, counter, value) in counter_rows {
            let totals = totals_by_name.entry(name).or_default();
            let value = value.max(0) as u64;
            match Counter::parse(&counter) {
                Some(Counter::RotationSuccess) => totals.rotations.0 = value,
                Some(Counter::RotationFailure) => totals.rotations.1 = value,
                Some(Counter::RevocationSuccess) => totals.revocations.succeeded = value,
                Some(Counter::RevocationFailure) => totals.revocations.failed = value,
                Some(Counter::RevocationRetiredLocally) => {
                    totals.revocations.retired_locally = value
                }
                // Written by a newer keyrotd: not ours to show.
                None => {}
            }
        }
        for (name, count, since) in failing_rows {
            let totals = totals_by_name.entry(name).or_default();
            totals.revocations.past_grace = count.max(0) as u64;
            totals.revocations.failing_since = Some(since);
        }
        let mut credits_by_name: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        for (name, unit, remaining) in credit_rows {
            credits_by_name
                .entry(name)
                .or_default()
                .push((unit, remaining));
        }
        // Each credential is handed over as its row arrives (at most one current key each,
        // by the unique index): the whole table of records is never held at once.
        {
            let sql = format!(
                "SELECT {CREDENTIAL_COLUMNS}, {VERSION_COLUMNS} FROM credentials c
                 LEFT JOIN key_versions v ON v.credential_id = c.id AND v.stage = 'current'
                 WHERE c.removed_at IS NULL ORDER BY c.name COLLATE \"C\""
            );
            let mut rows = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let credential = credential_from_row(&row);
                let current = row
                    .get::<Option<i64>, _>(CREDENTIAL_COLUMN_COUNT)
                    .map(|_| version_from_row_at(&row, CREDENTIAL_COLUMN_COUNT));
                let totals = totals_by_name.remove(&credential.name).unwrap_or_default();
                visit(CredentialState {
                    rotations_succeeded: totals.rotations.0,
                    rotations_failed: totals.rotations.1,
                    revocations: totals.revocations,
                    current,
                    credits: credits_by_name.remove(&credential.name).unwrap_or_default(),
                    needs_attention: attention.contains(&credential.name),
                    credential,
                });
            }
        }
        tx.commit().await?;
        Ok(generation)
    }

    async fn generation(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
