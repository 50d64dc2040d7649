//! Key versions: importing, reading and opening sealed secrets, revoking, rolling back, and
//! re-sealing every secret under a new master key. Writes about a credential's keys lock its
//! row first (see the module doc of `postgres`).

use super::rows::{version_columns, version_from_row, VERSION_COLUMNS, VERSION_COLUMN_COUNT};
use super::{commit, PgStore, Tx};
use crate::crypto::Sealer;
use crate::model::{fingerprint, UnixTime};
use crate::store::{EventKind, KeyStore, KeyVersion, NewKey, SealedKey, StoreError, StoreResult};
use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use secrecy::SecretString;
use sqlx::Row;

impl PgStore {
    /// Whether any key version still holds sealed secret material.
    pub(super) async fn any_sealed_secret(&self) -> StoreResult<bool> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE sealed_secret IS NOT NULL)",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Fails unless the master key opens a stored secret (when there is one). Run at
    /// start-up so a wrong key is a clear error, not a failed check hours later.
    pub(super) async fn open_newest_secret(&self) -> StoreResult<()> {
        let row = sqlx::query(
            "SELECT v.id, c.name, v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE v.sealed_secret IS NOT NULL ORDER BY v.id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let sealer = self.sealer.as_ref().ok_or(StoreError::MasterKeyRequired)?;
        sealer.open(row.get(1), row.get(0), row.get::<Vec<u8>, _>(2).as_slice())?;
        Ok(())
    }

    /// Inserts a key version and seals its secret in the same transaction. The version id is
    /// part of the associated data, so the secret is sealed after the insert.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn insert_sealed_version(
        tx: &mut Tx,
        sealer: &Sealer,
        (credential_id, credential): (i64, &str),
        stage: &str,
        fingerprint: &str,
        key: &NewKey,
        rotation_id: Option<&str>,
        now: UnixTime,
    ) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO key_versions (credential_id, stage, fingerprint, provider_key_id, rotation_id, created_at, expires_at, stage_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(credential_id)
        .bind(stage)
        .bind(fingerprint)
        .bind(&key.provider_key_id)
        .bind(rotation_id)
        .bind(now)
        .bind(key.expires_at)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        Self::fence_sealing(tx, sealer).await?;
        let sealed = sealer.seal(credential, id, &key.secret)?;
        sqlx::query(
            "UPDATE key_versions SET sealed_secret = $1, sealing_key_id = $2 WHERE id = $3",
        )
        .bind(sealed)
        .bind(sealer.key_id())
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(id)
    }

    /// One version, read inside a write transaction.
    pub(super) async fn version_in(tx: &mut Tx, id: i64) -> StoreResult<KeyVersion> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = $1"
        ))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
        Ok(version_from_row(&row))
    }
}

impl PgStore {
    /// The name of the credential a version belongs to, its row locked for the rest of the
    /// transaction (planning a rollback binds a version under the same lock).
    async fn credential_of_version(tx: &mut Tx, version_id: i64) -> StoreResult<String> {
        sqlx::query_scalar(
            "SELECT c.name FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = $1
             FOR UPDATE OF c",
        )
        .bind(version_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::UnknownVersion(version_id))
    }

    /// A key bound to a rotation in flight (its new key, or the previous key a rollback is
    /// putting back) may be on its way to the consumers: never revoked or retired under it.
    async fn refuse_if_in_flight(tx: &mut Tx, version_id: i64) -> StoreResult<()> {
        let bound: Option<String> = sqlx::query_scalar(
            "SELECT id FROM rotations WHERE new_version_id = $1 AND finished_at IS NULL",
        )
        .bind(version_id)
        .fetch_optional(&mut **tx)
        .await?;
        match bound {
            Some(rotation) => Err(StoreError::VersionInFlight {
                version: version_id,
                rotation,
            }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KeyStore for PgStore {
    async fn import_key(
        &self,
        credential: &str,
        key: NewKey,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let sealer = self.sealer()?;
        let fp = fingerprint(&key.secret);
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let duplicate: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE credential_id = $1 AND fingerprint = $2 AND stage IN ('pending','current','previous'))",
        )
        .bind(credential_id)
        .bind(&fp)
        .fetch_one(&mut *tx)
        .await?;
        if duplicate {
            return Err(StoreError::DuplicateKey(fp));
        }
        let has_current: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE credential_id = $1 AND stage = 'current')",
        )
        .bind(credential_id)
        .fetch_one(&mut *tx)
        .await?;
        let stage = if has_current { "pending" } else { "current" };
        let id = Self::insert_sealed_version(
            &mut tx,
            sealer,
            (credential_id, credential),
            stage,
            &fp,
            &key,
            key.rotation_id.as_deref(),
            now,
        )
        .await?;
        let detail = format!("{fp} imported as {stage}");
        Self::insert_event(
            &mut tx,
            Some(credential),
            Some(id),
            EventKind::Imported,
            actor,
            &detail,
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, id).await?;
        commit(tx).await?;
        Ok(version)
    }

    async fn versions(&self, credential: &str) -> StoreResult<Vec<KeyVersion>> {
        let rows = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS} FROM key_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE c.name = $1 ORDER BY v.id DESC"
        ))
        .bind(credential)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(version_from_row).collect())
    }

    async fn secret(&self, version_id: i64) -> StoreResult<SecretString> {
        let row = sqlx::query(
            "SELECT c.name, v.sealed_secret FROM key_versions v JOIN credentials c ON c.id = v.credential_id WHERE v.id = $1",
        )
        .bind(version_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::UnknownVersion(version_id))?;
        let sealed: Option<Vec<u8>> = row.get(1);
        let sealed = sealed.ok_or(StoreError::NoSecret(version_id))?;
        Ok(self.sealer()?.open(row.get(0), version_id, &sealed)?)
    }

    async fn current_key(
        &self,
        credential: &str,
    ) -> StoreResult<Option<(KeyVersion, SecretString)>> {
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLUMNS}, v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE c.name = $1 AND v.stage = 'current'"
        ))
        .bind(credential)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let version = version_from_row(&row);
        let sealed: Option<Vec<u8>> = row.get(VERSION_COLUMN_COUNT);
        let sealed = sealed.ok_or(StoreError::NoSecret(version.id))?;
        let secret = self.sealer()?.open(credential, version.id, &sealed)?;
        Ok(Some((version, secret)))
    }

    fn current_keys_sealed(&self) -> BoxStream<'_, StoreResult<SealedKey>> {
        // A literal: the stream borrows its statement for as long as it runs.
        const CURRENT_KEYS_SEALED: &str = concat!(
            "SELECT ",
            version_columns!(),
            ", v.sealed_secret FROM key_versions v
             JOIN credentials c ON c.id = v.credential_id
             WHERE c.removed_at IS NULL AND v.stage = 'current' AND v.sealed_secret IS NOT NULL"
        );
        sqlx::query(CURRENT_KEYS_SEALED)
            .fetch(&self.pool)
            .map_ok(|row| SealedKey::new(version_from_row(&row), row.get(VERSION_COLUMN_COUNT)))
            .map_err(StoreError::from)
            .boxed()
    }

    fn open_sealed(&self, key: &SealedKey) -> StoreResult<SecretString> {
        Ok(self
            .sealer()?
            .open(&key.version.credential, key.version.id, key.sealed())?)
    }

    async fn mark_revoked(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let credential = Self::credential_of_version(&mut tx, version_id).await?;
        Self::refuse_if_in_flight(&mut tx, version_id).await?;
        // Secret material is dropped with the stage change: a revoked key has no use.
        sqlx::query(
            "UPDATE key_versions SET stage = 'revoked', stage_changed_at = $1, sealed_secret = NULL WHERE id = $2 AND stage <> 'current'",
        )
        .bind(now)
        .bind(version_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            EventKind::Revoked,
            actor,
            detail,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(())
    }

    async fn mark_retired(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let credential = Self::credential_of_version(&mut tx, version_id).await?;
        Self::refuse_if_in_flight(&mut tx, version_id).await?;
        sqlx::query(
            "UPDATE key_versions SET stage = 'revoked', stage_changed_at = $1, sealed_secret = NULL WHERE id = $2 AND stage <> 'current'",
        )
        .bind(now)
        .bind(version_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            EventKind::RetiredLocally,
            actor,
            detail,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(())
    }

    async fn record_revocation_failure(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<u32> {
        let mut tx = self.begin_write().await?;
        let credential = Self::credential_of_version(&mut tx, version_id).await?;
        let failures: i64 = sqlx::query_scalar(
            "UPDATE key_versions SET revoke_failures = revoke_failures + 1,
                 revoke_failed_at = COALESCE(revoke_failed_at, $1)
             WHERE id = $2 RETURNING revoke_failures",
        )
        .bind(now)
        .bind(version_id)
        .fetch_one(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            EventKind::RevocationFailed,
            actor,
            detail,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(u32::try_from(failures).unwrap_or(u32::MAX))
    }

    async fn reseal(&self, new: &Sealer, actor: &str, now: UnixTime) -> StoreResult<usize> {
        let old = self.sealer()?;
        let mut tx = self.begin_write().await?;
        // Two rotations take turns on the installation row (the fence below only shares it).
        sqlx::query("SELECT 1 FROM installation WHERE id = 1 FOR UPDATE")
            .execute(&mut *tx)
            .await?;
        // The old key must still be the database's: two rotations racing, or a rotation
        // with a stale key file, fail here with nothing changed.
        Self::fence_sealing(&mut tx, old).await?;
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT v.id, c.name, v.sealed_secret FROM key_versions v JOIN credentials c ON c.id = v.credential_id
             WHERE v.sealed_secret IS NOT NULL",
        )
        .fetch_all(&mut *tx)
        .await?;
        // Open everything before writing anything: one secret the old key cannot open
        // aborts the whole rotation with nothing changed.
        let mut resealed = Vec::with_capacity(rows.len());
        for (id, credential, sealed) in &rows {
            let secret = old.open(credential, *id, sealed)?;
            resealed.push((*id, new.seal(credential, *id, &secret)?));
        }
        for (id, sealed) in &resealed {
            sqlx::query(
                "UPDATE key_versions SET sealed_secret = $1, sealing_key_id = $2 WHERE id = $3",
            )
            .bind(sealed)
            .bind(new.key_id())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        // From this commit on, a process still sealing with the old key is refused.
        sqlx::query("UPDATE installation SET master_key_id = $1 WHERE id = 1")
            .bind(new.key_id())
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            None,
            None,
            EventKind::MasterKeyRotated,
            actor,
            &format!("{} secrets re-sealed", resealed.len()),
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(resealed.len())
    }
}
