//! The audit trail: events appended inside the transaction of the change they record, or on
//! their own.

use super::SqliteStore;
use crate::model::UnixTime;
use crate::store::{AuditStore, Event, EventKind, StoreResult};
use async_trait::async_trait;
use sqlx::{Row, Sqlite, Transaction};

impl SqliteStore {
    /// Appends an event inside `tx`, so it commits (or not) with the change it records.
    pub(super) async fn insert_event(
        tx: &mut Transaction<'static, Sqlite>,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: EventKind,
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
        .bind(kind.as_str())
        .bind(actor)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl AuditStore for SqliteStore {
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
        tx.commit().await?;
        Ok(())
    }
}
