//! `store copy` on SQLite: the export reads every table in one read transaction (one WAL
//! snapshot); the import writes them all in one `BEGIN IMMEDIATE` transaction, after
//! checking in that transaction that the database holds no data. Ids are written as they
//! are; SQLite's next rowid is the largest plus one, so nothing needs moving past them.

use super::SqliteStore;
use crate::store::copy::{refuse_unless_empty, select, Occupancy, OCCUPANCY};
use crate::store::{Dump, StoreCopy, StoreResult};
use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};

#[async_trait]
impl StoreCopy for SqliteStore {
    async fn export(&self) -> StoreResult<Dump> {
        let mut tx = self.reader.begin().await?;
        let dump = Dump {
            installation: sqlx::query_as(select::INSTALLATION)
                .fetch_one(&mut *tx)
                .await?,
            credentials: sqlx::query_as(select::CREDENTIALS)
                .fetch_all(&mut *tx)
                .await?,
            key_versions: sqlx::query_as(select::KEY_VERSIONS)
                .fetch_all(&mut *tx)
                .await?,
            rotations: sqlx::query_as(select::ROTATIONS)
                .fetch_all(&mut *tx)
                .await?,
            credits: sqlx::query_as(select::CREDITS).fetch_all(&mut *tx).await?,
            events: sqlx::query_as(select::EVENTS).fetch_all(&mut *tx).await?,
            counters: sqlx::query_as(select::COUNTERS).fetch_all(&mut *tx).await?,
            events_cutoff: sqlx::query_scalar(select::EVENTS_CUTOFF)
                .fetch_one(&mut *tx)
                .await?,
            generation: sqlx::query_scalar(select::GENERATION)
                .fetch_one(&mut *tx)
                .await?,
        };
        tx.rollback().await?;
        Ok(dump)
    }

    async fn import(&self, dump: &Dump) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let occupancy: Occupancy = sqlx::query_as(OCCUPANCY).fetch_one(&mut *tx).await?;
        // Dropping the transaction rolls it back: a refused import writes nothing.
        refuse_unless_empty(occupancy)?;
        sqlx::query("UPDATE installation SET installation_id = ?, master_key_id = ? WHERE id = 1")
            .bind(&dump.installation.installation_id)
            .bind(&dump.installation.master_key_id)
            .execute(&mut *tx)
            .await?;
        insert_rows(&mut tx, dump).await?;
        sqlx::query("UPDATE events_prune SET cutoff = ? WHERE id = 1")
            .bind(dump.events_cutoff)
            .execute(&mut *tx)
            .await?;
        // Past both the source's generation and this database's own, so no reader that
        // cached either mistakes the copied data for what it saw.
        sqlx::query("UPDATE store_generation SET value = MAX(value, ?) + 1 WHERE id = 1")
            .bind(dump.generation)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Every row of the dump, parents first (foreign keys are on). A statement per row: SQLite
/// runs in this process, so a row costs microseconds, and sqlx keeps the statement prepared.
async fn insert_rows(tx: &mut Transaction<'static, Sqlite>, dump: &Dump) -> StoreResult<()> {
    for c in &dump.credentials {
        sqlx::query(
            "INSERT INTO credentials (id, name, provider, provider_kind, created_at, removed_at,
                 next_rotation_at, last_rotated_at, consecutive_failures, check_status, valid,
                 last_check_at, check_detail)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(c.id)
        .bind(&c.name)
        .bind(&c.provider)
        .bind(&c.provider_kind)
        .bind(c.created_at)
        .bind(c.removed_at)
        .bind(c.next_rotation_at)
        .bind(c.last_rotated_at)
        .bind(c.consecutive_failures)
        .bind(&c.check_status)
        .bind(c.valid)
        .bind(c.last_check_at)
        .bind(&c.check_detail)
        .execute(&mut **tx)
        .await?;
    }
    for v in &dump.key_versions {
        sqlx::query(
            "INSERT INTO key_versions (id, credential_id, stage, fingerprint, provider_key_id,
                 rotation_id, sealed_secret, sealing_key_id, created_at, expires_at,
                 stage_changed_at, last_check_at, last_check_status, revoke_failures,
                 revoke_failed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(v.id)
        .bind(v.credential_id)
        .bind(&v.stage)
        .bind(&v.fingerprint)
        .bind(&v.provider_key_id)
        .bind(&v.rotation_id)
        .bind(&v.sealed_secret)
        .bind(&v.sealing_key_id)
        .bind(v.created_at)
        .bind(v.expires_at)
        .bind(v.stage_changed_at)
        .bind(v.last_check_at)
        .bind(&v.last_check_status)
        .bind(v.revoke_failures)
        .bind(v.revoke_failed_at)
        .execute(&mut **tx)
        .await?;
    }
    for r in &dump.rotations {
        sqlx::query(
            "INSERT INTO rotations (id, credential_id, kind, step, new_version_id, started_at,
                 updated_at, finished_at, attempts, error, owner, owner_epoch, lease_expires_at,
                 owner_leader_epoch)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(r.credential_id)
        .bind(&r.kind)
        .bind(&r.step)
        .bind(r.new_version_id)
        .bind(r.started_at)
        .bind(r.updated_at)
        .bind(r.finished_at)
        .bind(r.attempts)
        .bind(&r.error)
        .bind(&r.owner)
        .bind(r.owner_epoch)
        .bind(r.lease_expires_at)
        .bind(r.owner_leader_epoch)
        .execute(&mut **tx)
        .await?;
    }
    for c in &dump.credits {
        sqlx::query(
            "INSERT INTO credits (credential_id, unit, remaining, reported_at) VALUES (?, ?, ?, ?)",
        )
        .bind(c.credential_id)
        .bind(&c.unit)
        .bind(c.remaining)
        .bind(c.reported_at)
        .execute(&mut **tx)
        .await?;
    }
    for e in &dump.events {
        sqlx::query(
            "INSERT INTO events (id, at, credential, version_id, kind, actor, detail)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.id)
        .bind(e.at)
        .bind(&e.credential)
        .bind(e.version_id)
        .bind(&e.kind)
        .bind(&e.actor)
        .bind(&e.detail)
        .execute(&mut **tx)
        .await?;
    }
    for c in &dump.counters {
        sqlx::query(
            "INSERT INTO credential_counters (credential, counter, value) VALUES (?, ?, ?)",
        )
        .bind(&c.credential)
        .bind(&c.counter)
        .bind(c.value)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
