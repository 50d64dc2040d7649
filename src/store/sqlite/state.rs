//! The state the metrics render: every active credential with its current key, balances and
//! rotation counts, streamed to the reader in one read transaction.

use super::rows::{
    credential_from_row, version_from_row_at, CREDENTIAL_COLUMNS, CREDENTIAL_COLUMN_COUNT,
    VERSION_COLUMNS,
};
use super::SqliteStore;
use crate::store::state::SideTables;
use crate::store::{CredentialState, StateStore, StoreResult};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::Row;

#[async_trait]
impl StateStore for SqliteStore {
    async fn visit_states(
        &self,
        visit: &mut (dyn FnMut(CredentialState) + Send),
    ) -> StoreResult<i64> {
        let mut tx = self.reader.begin().await?;
        let generation: i64 = sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?;
        // The side tables first (few rows: balances are reported by few providers, and the
        // totals are a handful of rows per credential), then one pass over the credentials.
        let credit_rows: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT c.name, k.unit, k.remaining FROM credits k JOIN credentials c ON c.id = k.credential_id
             WHERE c.removed_at IS NULL ORDER BY k.unit",
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
        let mut side = SideTables::from_rows(counter_rows, failing_rows, credit_rows, attention);
        // Each credential is handed over as its row arrives (at most one current key each,
        // by the unique index): the whole table of records is never held at once.
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
                visit(side.state_of(credential, current));
            }
        }
        tx.commit().await?;
        Ok(generation)
    }

    async fn generation(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
