//! Credentials: the config synced into the store, and reading a credential's row. Replicas
//! sync the same config at start-up and reload: the write path takes a transaction-level
//! advisory lock, so two syncs take turns instead of racing to insert the same name (it is
//! released with the transaction, unlike a session lock, so a dropped connection or
//! PgBouncer in transaction mode cannot leave it behind).

use super::rows::{credential_from_row, CREDENTIAL_COLUMNS};
use super::{commit, PgStore, Tx};
use crate::model::UnixTime;
use crate::store::{CredentialRecord, CredentialSpec, CredentialStore, EventKind, StoreResult};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

impl PgStore {
    /// Whether the active credentials differ from `specs` (names, providers, kinds). The
    /// rows come back as one JSON array, in byte order of their names (`COLLATE "C"`, as
    /// Rust sorts them): one row through sqlx instead of one per credential.
    async fn credentials_differ(&self, specs: &[CredentialSpec]) -> StoreResult<bool> {
        let active: String = sqlx::query_scalar(
            "SELECT COALESCE(json_agg(json_build_array(name, provider, provider_kind)
                                      ORDER BY name COLLATE \"C\"), '[]')::text
             FROM credentials WHERE removed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let Ok(active) = serde_json::from_str::<Vec<(String, String, String)>>(&active) else {
            return Ok(true); // Not what we expected: let the write path look row by row.
        };
        let mut wanted: Vec<(&str, &str, &str)> = specs
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.provider.as_str(),
                    s.provider_kind.as_str(),
                )
            })
            .collect();
        // Byte order, as the query sorts the names.
        wanted.sort_unstable();
        Ok(wanted.len() != active.len()
            || wanted
                .iter()
                .zip(&active)
                .any(|(w, a)| (w.0, w.1, w.2) != (a.0.as_str(), a.1.as_str(), a.2.as_str())))
    }
}

#[async_trait]
impl CredentialStore for PgStore {
    async fn sync_credentials(&self, specs: &[CredentialSpec], now: UnixTime) -> StoreResult<()> {
        // Every restart with an unchanged config lands here: compare in one read-only query
        // instead of moving every row through sqlx into a write transaction.
        // A change seen here, or one made meanwhile, is handled by the write path below,
        // which reads the rows again inside its transaction.
        if !self.credentials_differ(specs).await? {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SYNC_LOCK)
            .execute(&mut *tx)
            .await?;
        let existing: Vec<StoredSpec> =
            sqlx::query_as("SELECT name, provider, provider_kind, removed_at FROM credentials")
                .fetch_all(&mut *tx)
                .await?;
        // Indexed by name, so start-up stays linear in the number of credentials.
        let by_name: HashMap<&str, &StoredSpec> =
            existing.iter().map(|row| (row.0.as_str(), row)).collect();
        let mut changed = false;
        for spec in specs {
            changed |= sync_one(&mut tx, spec, by_name.get(spec.name.as_str()), now).await?;
        }
        changed |= mark_removed(&mut tx, &existing, specs, now).await?;
        // Nothing to change after all (a concurrent sync got there first): roll back instead
        // of committing, which saves an fsync and leaves the generation (and so the metrics
        // cache) alone.
        if changed {
            commit(tx).await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    async fn credential(&self, name: &str) -> StoreResult<Option<CredentialRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(credential_from_row))
    }
}

/// The transaction-level advisory lock key of the config sync ("keyrotd" in ASCII).
const SYNC_LOCK: i64 = 0x006b_6579_726f_7464;

/// A credential's row as the config sync compares it: name, provider, provider kind and
/// when it was removed.
type StoredSpec = (String, String, String, Option<i64>);

/// Adds `spec`'s credential, or updates its row when the config changed it or names it
/// again after its removal. Answers whether anything was written.
async fn sync_one(
    tx: &mut Tx,
    spec: &CredentialSpec,
    stored: Option<&&StoredSpec>,
    now: UnixTime,
) -> StoreResult<bool> {
    let kind = match stored {
        None => {
            sqlx::query(
                "INSERT INTO credentials (name, provider, provider_kind, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(&spec.name)
            .bind(&spec.provider)
            .bind(&spec.provider_kind)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            EventKind::CredentialAdded
        }
        Some((_, provider, kind, removed))
            if provider != &spec.provider || kind != &spec.provider_kind || removed.is_some() =>
        {
            sqlx::query(
                "UPDATE credentials SET provider = $1, provider_kind = $2, removed_at = NULL WHERE name = $3",
            )
            .bind(&spec.provider)
            .bind(&spec.provider_kind)
            .bind(&spec.name)
            .execute(&mut **tx)
            .await?;
            EventKind::CredentialUpdated
        }
        Some(_) => return Ok(false),
    };
    let detail = format!("provider {}", spec.provider);
    PgStore::insert_event(tx, Some(&spec.name), None, kind, "config", &detail, now).await?;
    Ok(true)
}

/// Marks removed every active credential the config no longer names; their history stays.
/// Answers whether anything was written.
async fn mark_removed(
    tx: &mut Tx,
    existing: &[StoredSpec],
    specs: &[CredentialSpec],
    now: UnixTime,
) -> StoreResult<bool> {
    let wanted: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut changed = false;
    for (name, _, _, removed) in existing {
        if removed.is_none() && !wanted.contains(name.as_str()) {
            changed = true;
            sqlx::query("UPDATE credentials SET removed_at = $1 WHERE name = $2")
                .bind(now)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            PgStore::insert_event(
                tx,
                Some(name),
                None,
                EventKind::CredentialRemoved,
                "config",
                "no longer in the config; history kept",
                now,
            )
            .await?;
        }
    }
    Ok(changed)
}
