//! The audit trail: events appended inside the transaction of the change they record, or on
//! their own, and the retention prune the delete trigger lets through.

use super::{commit, PgStore, Tx};
use crate::model::UnixTime;
use crate::store::{AuditStore, Counter, Event, EventKind, StoreResult};
use async_trait::async_trait;
use sqlx::Row;

impl PgStore {
    /// Appends an event inside `tx`, so it commits (or not) with the change it records.
    pub(super) async fn insert_event(
        tx: &mut Tx,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: EventKind,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO events (at, credential, version_id, kind, actor, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(now)
        .bind(credential)
        .bind(version_id)
        .bind(kind.as_str())
        .bind(actor)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        if let (Some(counter), Some(credential)) = (kind.counter(), credential) {
            Self::bump_counter(tx, credential, counter).await?;
        }
        Ok(())
    }

    /// Adds one to a credential's running total inside `tx` (see [`Counter`]).
    async fn bump_counter(tx: &mut Tx, credential: &str, counter: Counter) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO credential_counters (credential, counter, value) VALUES ($1, $2, 1)
             ON CONFLICT (credential, counter) DO UPDATE SET value = credential_counters.value + 1",
        )
        .bind(credential)
        .bind(counter.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for PgStore {
    async fn events(&self, credential: &str) -> StoreResult<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, at, credential, version_id, kind, actor, detail FROM events WHERE credential = $1 ORDER BY id",
        )
        .bind(credential)
        .fetch_all(&self.pool)
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

    async fn prune_events(&self, cutoff: UnixTime, batch: u32) -> StoreResult<u64> {
        // The cutoff is recorded in the same transaction: the delete trigger refuses any
        // event at or after it, so nothing but this prune can delete. The row lock on
        // `events_prune` keeps two prunes from moving the cutoff under each other.
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE events_prune SET cutoff = $1 WHERE id = 1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query(
            "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY at LIMIT $2)",
        )
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        commit(tx).await?;
        Ok(deleted)
    }

    async fn append_event(
        &self,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: EventKind,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        Self::insert_event(&mut tx, credential, version_id, kind, actor, detail, now).await?;
        commit(tx).await
    }
}
