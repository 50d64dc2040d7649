//! `store copy` on PostgreSQL: the export reads every table in one REPEATABLE READ, READ
//! ONLY transaction (one snapshot, whatever replicas write meanwhile); the import locks the
//! data tables against writers, checks in that transaction that they hold nothing, writes
//! every row with its id in multi-row INSERTs, and moves the identity sequences past the
//! largest copied ids, so the next row a replica inserts does not collide with a copied
//! one. The events triggers refuse UPDATE, DELETE and TRUNCATE; the import only inserts.

use super::{commit, PgStore, Tx};
use crate::store::copy::{refuse_unless_empty, select, Occupancy, OCCUPANCY};
use crate::store::{Dump, StoreCopy, StoreResult};
use async_trait::async_trait;
use sqlx::query_builder::Separated;
use sqlx::{Postgres, QueryBuilder};

/// Rows per INSERT: the widest table (key_versions, 15 columns) stays far below
/// PostgreSQL's 65,535 bind parameters per statement.
const ROWS_PER_INSERT: usize = 1_000;

/// The tables with an identity column, whose sequence must move past the copied ids.
const IDENTITY_TABLES: [&str; 3] = ["credentials", "key_versions", "events"];

#[async_trait]
impl StoreCopy for PgStore {
    async fn export(&self) -> StoreResult<Dump> {
        let mut tx = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
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
        // EXCLUSIVE lets readers (a replica's /metrics) go on and makes every writer wait
        // until this commits, so nothing lands between the emptiness check and the copy.
        sqlx::query(
            "LOCK TABLE installation, credentials, key_versions, rotations, credits, events,
                 credential_counters, events_prune IN EXCLUSIVE MODE",
        )
        .execute(&mut *tx)
        .await?;
        let occupancy: Occupancy = sqlx::query_as(OCCUPANCY).fetch_one(&mut *tx).await?;
        // Dropping the transaction rolls it back: a refused import writes nothing.
        refuse_unless_empty(occupancy)?;
        sqlx::query(
            "UPDATE installation SET installation_id = $1, master_key_id = $2 WHERE id = 1",
        )
        .bind(&dump.installation.installation_id)
        .bind(&dump.installation.master_key_id)
        .execute(&mut *tx)
        .await?;
        insert_rows(&mut tx, dump).await?;
        sqlx::query("UPDATE events_prune SET cutoff = $1 WHERE id = 1")
            .bind(dump.events_cutoff)
            .execute(&mut *tx)
            .await?;
        for table in IDENTITY_TABLES {
            // Next id: the largest copied one plus one, or 1 for an empty table.
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                     GREATEST(COALESCE(MAX(id), 0), 1), MAX(id) IS NOT NULL) FROM {table}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        // `commit` moves the generation once more: past the source's and this database's.
        sqlx::query("UPDATE store_generation SET value = GREATEST(value, $1) WHERE id = 1")
            .bind(dump.generation)
            .execute(&mut *tx)
            .await?;
        commit(tx).await
    }
}

/// Every row of the dump, parents first, ids as they are (`OVERRIDING SYSTEM VALUE`, should
/// an identity column ever be GENERATED ALWAYS).
async fn insert_rows(tx: &mut Tx, dump: &Dump) -> StoreResult<()> {
    insert_all(
        tx,
        "INSERT INTO credentials (id, name, provider, provider_kind, created_at, removed_at,
             next_rotation_at, last_rotated_at, consecutive_failures, check_status, valid,
             last_check_at, check_detail) OVERRIDING SYSTEM VALUE ",
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
             revoke_failed_at) OVERRIDING SYSTEM VALUE ",
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
             OVERRIDING SYSTEM VALUE ",
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
    tx: &mut Tx,
    head: &str,
    rows: &'d [T],
    mut push: F,
) -> StoreResult<()>
where
    T: Sync,
    F: FnMut(Separated<'_, 'd, Postgres, &'static str>, &'d T) + Send,
{
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<Postgres>::new(head);
        insert.push_values(chunk, &mut push);
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}
