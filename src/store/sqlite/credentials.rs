//! Credentials: the config synced into the store, and reading a credential's row.

use super::rows::{credential_from_row, CREDENTIAL_COLUMNS};
use super::SqliteStore;
use crate::model::UnixTime;
use crate::store::{CredentialRecord, CredentialSpec, CredentialStore, EventKind, StoreResult};
use async_trait::async_trait;
use sqlx::{Sqlite, Transaction};
use std::collections::{HashMap, HashSet};

impl SqliteStore {
    /// Whether the active credentials differ from `specs` (names, providers, kinds). The
    /// rows come back as one JSON array, in name order from the unique index: one row
    /// through sqlx instead of one per credential.
    async fn credentials_differ(&self, specs: &[CredentialSpec]) -> StoreResult<bool> {
        let active: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(name, provider, provider_kind)) FROM
             (SELECT name, provider, provider_kind FROM credentials
              WHERE removed_at IS NULL ORDER BY name)",
        )
        .fetch_one(&self.reader)
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
        // Byte order, as SQLite's BINARY collation sorts the names.
        wanted.sort_unstable();
        Ok(wanted.len() != active.len()
            || wanted
                .iter()
                .zip(&active)
                .any(|(w, a)| (w.0, w.1, w.2) != (a.0.as_str(), a.1.as_str(), a.2.as_str())))
    }
}

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn sync_credentials(&self, specs: &[CredentialSpec], now: UnixTime) -> StoreResult<()> {
        // Every restart with an unchanged config lands here: compare in one read-only query
        // (SQLite walks the specs as JSON against the unique name index) instead of moving
        // every row through sqlx into a write transaction.
        // A change seen here, or one made meanwhile, is handled by the write path below,
        // which reads the rows again inside its transaction.
        if !self.credentials_differ(specs).await? {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
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
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(())
    }

    async fn credential(&self, name: &str) -> StoreResult<Option<CredentialRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CREDENTIAL_COLUMNS} FROM credentials c WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(credential_from_row))
    }
}

/// A credential's row as the config sync compares it: name, provider, provider kind and
/// when it was removed.
type StoredSpec = (String, String, String, Option<i64>);

/// Adds `spec`'s credential, or updates its row when the config changed it or names it
/// again after its removal. Answers whether anything was written.
async fn sync_one(
    tx: &mut Transaction<'static, Sqlite>,
    spec: &CredentialSpec,
    stored: Option<&&StoredSpec>,
    now: UnixTime,
) -> StoreResult<bool> {
    let kind = match stored {
        None => {
            sqlx::query(
                "INSERT INTO credentials (name, provider, provider_kind, created_at) VALUES (?, ?, ?, ?)",
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
                "UPDATE credentials SET provider = ?, provider_kind = ?, removed_at = NULL WHERE name = ?",
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
    SqliteStore::insert_event(tx, Some(&spec.name), None, kind, "config", &detail, now).await?;
    Ok(true)
}

/// Marks removed every active credential the config no longer names; their history stays.
/// Answers whether anything was written.
async fn mark_removed(
    tx: &mut Transaction<'static, Sqlite>,
    existing: &[StoredSpec],
    specs: &[CredentialSpec],
    now: UnixTime,
) -> StoreResult<bool> {
    let wanted: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut changed = false;
    for (name, _, _, removed) in existing {
        if removed.is_none() && !wanted.contains(name.as_str()) {
            changed = true;
            sqlx::query("UPDATE credentials SET removed_at = ? WHERE name = ?")
                .bind(now)
                .bind(name)
                .execute(&mut **tx)
                .await?;
            SqliteStore::insert_event(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditStore, InstallationStore, StateStore};

    fn spec(name: &str, provider: &str, kind: &str) -> CredentialSpec {
        CredentialSpec {
            name: name.into(),
            provider: provider.into(),
            provider_kind: kind.into(),
        }
    }

    async fn kinds(store: &SqliteStore, name: &str) -> Vec<String> {
        let events = store.events(name).await.unwrap();
        events.into_iter().map(|e| e.kind).collect()
    }

    /// The read-only comparison must notice every kind of change, and only changes.
    #[tokio::test]
    async fn sync_writes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), None)
            .await
            .unwrap();
        let initial = vec![spec("b", "p", "openai"), spec("a", "p", "openai")];
        store.sync_credentials(&initial, 1).await.unwrap();
        let generation = store.generation().await.unwrap();

        // Same set in another order: nothing written, the generation stays.
        let reordered = vec![spec("a", "p", "openai"), spec("b", "p", "openai")];
        store.sync_credentials(&reordered, 2).await.unwrap();
        assert_eq!(store.generation().await.unwrap(), generation);
        assert_eq!(kinds(&store, "a").await, ["credential_added"]);

        // Each change is seen: provider, kind, removal, return, addition.
        let changes: [Vec<CredentialSpec>; 5] = [
            vec![spec("a", "q", "openai"), spec("b", "p", "openai")],
            vec![spec("a", "q", "anthropic"), spec("b", "p", "openai")],
            vec![spec("a", "q", "anthropic")],
            vec![spec("a", "q", "anthropic"), spec("b", "p", "openai")],
            vec![
                spec("a", "q", "anthropic"),
                spec("b", "p", "openai"),
                spec("c", "p", "openai"),
            ],
        ];
        for (i, specs) in changes.iter().enumerate() {
            let before = store.generation().await.unwrap();
            store.sync_credentials(specs, 3 + i as i64).await.unwrap();
            assert!(store.generation().await.unwrap() > before, "change {i}");
        }
        assert_eq!(
            kinds(&store, "a").await,
            [
                "credential_added",
                "credential_updated",
                "credential_updated"
            ]
        );
        assert_eq!(
            kinds(&store, "b").await,
            [
                "credential_added",
                "credential_removed",
                "credential_updated"
            ]
        );
        assert_eq!(kinds(&store, "c").await, ["credential_added"]);
        store.close().await;
    }
}
