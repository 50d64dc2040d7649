//! The leadership lease in SQL (see `store/leadership.rs`): one upsert on the database's
//! clock that renews the caller's live lease or takes a free or expired one. The upsert
//! waits for rotation writes that checked the lease `FOR SHARE` (see `ownership.rs`), so a
//! new term starts only after the last write of the old one committed.

use super::{db_now, PgStore};
use crate::store::{LeaderClaim, LeaderStore, LeaderToken, Leadership, StoreResult};
use async_trait::async_trait;

const LEADERSHIP_COLUMNS: &str = concat!(
    "holder, epoch, acquired_at, expires_at, expires_at - ",
    db_now!()
);

type LeadershipRow = (String, i64, i64, i64, i64);

fn leadership_from(row: LeadershipRow) -> Leadership {
    let (holder, epoch, acquired_at, expires_at, left) = row;
    Leadership {
        holder,
        epoch,
        acquired_at,
        expires_at,
        left,
    }
}

#[async_trait]
impl LeaderStore for PgStore {
    async fn claim_leadership(&self, holder: &str, ttl_seconds: i64) -> StoreResult<LeaderClaim> {
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO leadership (id, holder, epoch, acquired_at, expires_at)
             VALUES (1, $1, 1, ",
            db_now!(),
            ", ",
            db_now!(),
            " + $2)
             ON CONFLICT (id) DO UPDATE SET
                epoch = CASE WHEN leadership.holder = excluded.holder AND leadership.expires_at > ",
            db_now!(),
            " THEN leadership.epoch ELSE leadership.epoch + 1 END,
                acquired_at = CASE WHEN leadership.holder = excluded.holder AND leadership.expires_at > ",
            db_now!(),
            " THEN leadership.acquired_at ELSE excluded.acquired_at END,
                holder = excluded.holder,
                expires_at = excluded.expires_at
             WHERE leadership.holder = excluded.holder OR leadership.expires_at <= ",
            db_now!()
        ))
        .bind(holder)
        .bind(ttl_seconds)
        .execute(&mut *tx)
        .await?;
        let row: Option<LeadershipRow> = sqlx::query_as(&format!(
            "SELECT {LEADERSHIP_COLUMNS} FROM leadership WHERE id = 1"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        // Not `commit`: the lease is not state the metrics render, and moving the store's
        // generation at every renewal would re-render every per-key series at every scrape.
        tx.commit().await?;
        let lease = row.map(leadership_from);
        Ok(match lease {
            Some(lease) if lease.holder == holder => LeaderClaim::Leading(lease),
            other => LeaderClaim::Following(other),
        })
    }

    async fn release_leadership(&self, token: &LeaderToken) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(concat!(
            "UPDATE leadership SET expires_at = ",
            db_now!(),
            " WHERE id = 1 AND holder = $1 AND epoch = $2"
        ))
        .bind(&token.holder)
        .bind(token.epoch)
        .execute(&mut *tx)
        .await?;
        // Not `commit`: the lease is not state the metrics render, and moving the store's
        // generation at every renewal would re-render every per-key series at every scrape.
        tx.commit().await?;
        Ok(())
    }

    async fn leadership(&self) -> StoreResult<Option<Leadership>> {
        let row: Option<LeadershipRow> = sqlx::query_as(&format!(
            "SELECT {LEADERSHIP_COLUMNS} FROM leadership WHERE id = 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(leadership_from))
    }
}
