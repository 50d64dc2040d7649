//! `store copy` on SQLite: the export reads every table in one read transaction (one WAL
//! snapshot); the import writes them all in one `BEGIN IMMEDIATE` transaction, after
//! checking in that transaction that the database holds no data. Ids are written as they
//! are; SQLite's next rowid is the largest plus one, so nothing needs moving past them.
//! Rows go in multi-row INSERTs, as on PostgreSQL: a statement per row costs a round trip
//! to the connection's thread each.

use super::SqliteStore;
use crate::store::copy::{refuse_unless_empty, select, Occupancy, OCCUPANCY};
use crate::store::{Dump, StoreCopy, StoreResult};
use async_trait::async_trait;
use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Sqlite, Transaction};

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

/// Rows per INSERT: the widest table (key_versions, 15 columns) stays below SQLite's
/// 32,766 bound parameters per statement.
const ROWS_PER_INSERT: usize = 1_000;

/// Every row of the dump, parents first (foreign keys are on), ids as they are.
async fn insert_rows(tx: &mut Transaction<'static, Sqlite>, dump: &Dump) -> StoreResult<()> {
    insert_all(
        tx,
        "INSERT INTO credentials (id, name, provider, provider_kind, created_at, removed_at,
             next_rotation_at, last_rotated_at, consecutive_failures, check_status, valid,
             last_check_at, check_detail) ",
        &dump.credentials,
        |mut b, c| {
            b.push_bind(c.id)
                .push_bind(&c.name)
                .push_bind(&c.provider)
                .push_bind(&c.provider_kind)
                .push_bind(c.created_at)
                .push_bind(c.removed_at)
                .push_bind(c.next_rotation_at)
                .push_bind(c.last_rotated_at)
                .push_bind(c.consecutive_failures)
                .push_bind(&c.check_status)
                .push_bind(c.valid)
                .push_bind(c.last_check_at)
                .push_bind(&c.check_detail);
        },
    )
    .await?;
    insert_all(
        tx,
        "INSERT INTO key_versions (id, credential_id, stage, fingerprint, provider_key_id,
             rotation_id, sealed_secret, sealing_key_id, created_at, expires_at,
             stage_changed_at, last_check_at, last_check_status, revoke_failures,
             revoke_failed_at) ",
        &dump.key_versions,
        |mut b, v| {
            b.push_bind(v.id)
                .push_bind(v.credential_id)
                .push_bind(&v.stage)
                .push_bind(&v.fingerprint)
                .push_bind(&v.provider_key_id)
                .push_bind(&v.rotation_id)
                .push_bind(&v.sealed_secret)
                .push_bind(&v.sealing_key_id)
                .push_bind(v.created_at)
                .push_bind(v.expires_at)
                .push_bind(v.stage_changed_at)
                .push_bind(v.last_check_at)
                .push_bind(&v.last_check_status)
                .push_bind(v.revoke_failures)
                .push_bind(v.revoke_failed_at);
        },
    )
    .await?;
    insert_all(
        tx,
        "INSERT INTO rotations (id, credential_id, kind, step, new_version_id, started_at,
             updated_at, finished_at, attempts, error, owner, owner_epoch, lease_expires_at,
             owner_leader_epoch) ",
        &dump.rotations,
        |mut b, r| {
            b.push_bind(&r.id)
                .push_bind(r.credential_id)
                .push_bind(&r.kind)
                .push_bind(&r.step)
                .push_bind(r.new_version_id)
                .push_bind(r.started_at)
                .push_bind(r.updated_at)
                .push_bind(r.finished_at)
                .push_bind(r.attempts)
                .push_bind(&r.error)
                .push_bind(&r.owner)
                .push_bind(r.owner_epoch)
                .push_bind(r.lease_expires_at)
                .push_bind(r.owner_leader_epoch);
        },
    )
    .await?;
    insert_all(
        tx,
        "INSERT INTO credits (credential_id, unit, remaining, reported_at) ",
        &dump.credits,
        |mut b, c| {
            b.push_bind(c.credential_id)
                .push_bind(&c.unit)
                .push_bind(c.remaining)
                .push_bind(c.reported_at);
        },
    )
    .await?;
    insert_all(
        tx,
        "INSERT INTO events (id, at, credential, version_id, kind, actor, detail)
             ",
        &dump.events,
        |mut b, e| {
            b.push_bind(e.id)
                .push_bind(e.at)
                .push_bind(&e.credential)
                .push_bind(e.version_id)
                .push_bind(&e.kind)
                .push_bind(&e.actor)
                .push_bind(&e.detail);
        },
    )
    .await?;
    insert_all(
        tx,
        "INSERT INTO credential_counters (credential, counter, value) ",
        &dump.counters,
        |mut b, c| {
            b.push_bind(&c.credential)
                .push_bind(&c.counter)
                .push_bind(c.value);
        },
    )
    .await
}

/// `rows` in INSERTs of [`ROWS_PER_INSERT`] rows each, `head` naming table and columns.
async fn insert_all<'d, T, F>(
    tx: &mut Transaction<'static, Sqlite>,
    head: &str,
    rows: &'d [T],
    mut push: F,
) -> StoreResult<()>
where
    T: Sync,
    F: FnMut(Separated<'_, 'd, Sqlite, &'static str>, &'d T) + Send,
{
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<Sqlite>::new(head);
        insert.push_values(chunk, &mut push);
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (table, column) pairs a statement of [`select`] reads.
    fn read_by(statement: &str) -> Vec<(String, String)> {
        let text = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let columns = text
            .strip_prefix("SELECT ")
            .and_then(|rest| rest.split(" FROM ").next())
            .unwrap();
        let table = text
            .split(" FROM ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        columns
            .split(',')
            .map(|column| (table.to_string(), column.trim().to_string()))
            .collect()
    }

    /// A column a later migration adds must be copied too, or a copy would drop it: every
    /// column of every table is read by the export, but leadership (not copied) and the
    /// one-row tables' fixed `id`.
    #[tokio::test]
    async fn the_export_reads_every_column_of_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), None)
            .await
            .unwrap();
        let schema: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p
             WHERE m.type = 'table' AND m.name NOT IN ('_sqlx_migrations', 'leadership')",
        )
        .fetch_all(&store.reader)
        .await
        .unwrap();
        let schema: BTreeSet<_> = schema.into_iter().collect();
        let mut read: BTreeSet<_> = [
            select::INSTALLATION,
            select::CREDENTIALS,
            select::KEY_VERSIONS,
            select::ROTATIONS,
            select::CREDITS,
            select::EVENTS,
            select::COUNTERS,
            select::EVENTS_CUTOFF,
            select::GENERATION,
        ]
        .iter()
        .flat_map(|statement| read_by(statement))
        .collect();
        for table in ["installation", "events_prune", "store_generation"] {
            read.insert((table.to_string(), "id".to_string()));
        }
        assert_eq!(schema, read);
        store.close_pools().await;
    }
}
