//! The installation row: this database's identity, made at its first open, and the id of
//! the master key its secrets are sealed under, with the checks every sealing write and
//! every opening with a master key make against it. The sealing fence reads the row `FOR
//! SHARE`, so `master-key rotate` (which updates it) waits for sealing writes in flight and
//! they cannot commit a row sealed under a key the database no longer names.

use super::{commit, PgStore, Tx};
use crate::crypto::Sealer;
use crate::store::{InstallationStore, StoreError, StoreResult};
use async_trait::async_trait;
use rand::RngCore;
use sqlx::postgres::PgPool;
use std::path::Path;

/// Gives a database its identity at its first open (a no-op ever after). Plain SQL, made
/// in Rust rather than by the migration, the same way as on SQLite.
pub(super) async fn ensure_installation(pool: &PgPool) -> StoreResult<()> {
    let mut bytes = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    sqlx::query(
        "INSERT INTO installation (id, installation_id) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(hex::encode(bytes))
    .execute(pool)
    .await?;
    Ok(())
}

impl PgStore {
    /// The fence of every sealing write, in its transaction: the database's master key must
    /// be the one `sealer` holds. A database that has none yet takes this one. A process
    /// that still holds the old key after `master-key rotate` gets
    /// [`StoreError::MasterKeyChanged`] instead of writing a row nobody can open.
    pub(super) async fn fence_sealing(tx: &mut Tx, sealer: &Sealer) -> StoreResult<()> {
        // A database with no master key yet takes this one: an UPDATE straight away (two
        // first sealers reading `FOR SHARE` and then both upgrading to write would
        // deadlock); otherwise a shared lock, held to the commit.
        let unset: Option<String> =
            sqlx::query_scalar("SELECT master_key_id FROM installation WHERE id = 1")
                .fetch_one(&mut **tx)
                .await?;
        let current: Option<String> = if unset.is_none() {
            sqlx::query_scalar(
                "UPDATE installation SET master_key_id = COALESCE(master_key_id, $1) WHERE id = 1
                 RETURNING master_key_id",
            )
            .bind(sealer.key_id())
            .fetch_one(&mut **tx)
            .await?
        } else {
            sqlx::query_scalar("SELECT master_key_id FROM installation WHERE id = 1 FOR SHARE")
                .fetch_one(&mut **tx)
                .await?
        };
        match current {
            Some(current) if current != sealer.key_id() => {
                tracing::error!(ours = sealer.key_id(), %current, "the master key of the database changed under this process; refusing to seal a secret nobody could open — restart keyrotd with the new master key");
                Err(StoreError::MasterKeyChanged {
                    ours: sealer.key_id().to_string(),
                    current,
                })
            }
            _ => Ok(()),
        }
    }

    /// Checks, when a process opens the store with a master key, that every sealed row is
    /// sealed under it, by key id: a mismatch is found here, not at the first check or
    /// rotation that opens a row. Rows sealed before key ids existed are opened once with
    /// the key given (all of them, so one the key cannot open is found now as well) and
    /// stamped with its id; a database with no master key yet takes this one.
    pub(super) async fn claim_sealing_key(&self, key_path: &Path) -> StoreResult<()> {
        let sealer = self.sealer()?;
        let mine = sealer.key_id();
        let mut tx = self.begin_write().await?;
        let (current,): (Option<String>,) =
            sqlx::query_as("SELECT master_key_id FROM installation WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let other: Option<(i64, String)> = sqlx::query_as(
            "SELECT COUNT(*), MIN(sealing_key_id) FROM key_versions
             WHERE sealed_secret IS NOT NULL AND sealing_key_id IS NOT NULL AND sealing_key_id <> $1
             HAVING COUNT(*) > 0",
        )
        .bind(mine)
        .fetch_optional(&mut *tx)
        .await?;
        let sealed_rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM key_versions WHERE sealed_secret IS NOT NULL")
                .fetch_one(&mut *tx)
                .await?;
        let refuse = |rows: i64, sealed_with: String| StoreError::SealedUnderOtherKey {
            rows,
            sealed_with,
            given: mine.to_string(),
            path: key_path.to_path_buf(),
        };
        if let Some((rows, sealed_with)) = other {
            return Err(refuse(rows, sealed_with));
        }
        if let Some(current) = current.filter(|c| c != mine) {
            if sealed_rows > 0 {
                return Err(refuse(sealed_rows, current));
            }
        }
        let unstamped: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT v.id, c.name, v.sealed_secret FROM key_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE v.sealed_secret IS NOT NULL AND v.sealing_key_id IS NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, credential, sealed) in &unstamped {
            sealer.open(credential, *id, sealed)?;
        }
        sqlx::query(
            "UPDATE key_versions SET sealing_key_id = $1 WHERE sealed_secret IS NOT NULL AND sealing_key_id IS NULL",
        )
        .bind(mine)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE installation SET master_key_id = $1 WHERE id = 1")
            .bind(mine)
            .execute(&mut *tx)
            .await?;
        commit(tx).await
    }
}

#[async_trait]
impl InstallationStore for PgStore {
    async fn holds_secrets(&self) -> StoreResult<bool> {
        self.any_sealed_secret().await
    }

    async fn verify_master_key(&self) -> StoreResult<()> {
        self.open_newest_secret().await
    }

    async fn claim_master_key(&self, key_path: &Path) -> StoreResult<()> {
        self.claim_sealing_key(key_path).await
    }

    async fn close(&self) {
        self.pool.close().await
    }

    async fn installation_id(&self) -> StoreResult<String> {
        Ok(
            sqlx::query_scalar("SELECT installation_id FROM installation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn rotation_planned(&self, credential: &str, rotation_id: &str) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = $1 AND c.name = $2)",
        )
        .bind(rotation_id)
        .bind(credential)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn master_key_replaced(&self) -> StoreResult<bool> {
        let Some(sealer) = self.sealer.as_deref() else {
            return Ok(false);
        };
        let current: Option<String> =
            sqlx::query_scalar("SELECT master_key_id FROM installation WHERE id = 1")
                .fetch_one(&self.pool)
                .await?;
        Ok(current.is_some_and(|c| c != sealer.key_id()))
    }
}
