//! The state the metrics render: every active credential with its current key, balances and
//! rotation counts, streamed to the reader in one read transaction.

use super::rows::{
    credential_from_row, version_from_row_at, CREDENTIAL_COLUMNS, CREDENTIAL_COLUMN_COUNT,
    VERSION_COLUMNS,
};
use super::SqliteStore;
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

    async fn generation(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT value FROM store_generation WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }
}
