//! Rotations: each step of a rotation in its own transaction, and the bookkeeping its due
//! time is computed from.

use super::SqliteStore;
use crate::model::{fingerprint, UnixTime};
use crate::store::{
    EventKind, KeyVersion, NewKey, Rotation, RotationFailure, RotationOutlook, RotationStep,
    RotationStore, StoreError, StoreResult,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::Row;

#[async_trait]
impl RotationStore for SqliteStore {
    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<Rotation> {
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let in_flight: Option<String> = sqlx::query_scalar(
            "SELECT id FROM rotations WHERE credential_id = ? AND finished_at IS NULL",
        )
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(other) = in_flight {
            return Err(StoreError::RotationInFlight {
                credential: credential.to_string(),
                rotation: other,
            });
        }
        sqlx::query(
            "INSERT INTO rotations (id, credential_id, step, started_at, updated_at) VALUES (?, ?, 'planned', ?, ?)",
        )
        .bind(rotation_id)
        .bind(credential_id)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(credential),
            None,
            EventKind::RotationPlanned,
            actor,
            &format!("rotation {rotation_id}"),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(Rotation {
            id: rotation_id.to_string(),
            credential: credential.to_string(),
            step: RotationStep::Planned,
            new_version_id: None,
            started_at: now,
            updated_at: now,
            error: None,
        })
    }

    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>> {
        let rows = sqlx::query(
            "SELECT r.id, c.name, r.step, r.new_version_id, r.started_at, r.error, r.updated_at
             FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.finished_at IS NULL ORDER BY r.started_at",
        )
        .fetch_all(&self.writer)
        .await?;
        Ok(rows
            .iter()
            .map(|row| Rotation {
                id: row.get(0),
                credential: row.get(1),
                step: RotationStep::parse(&row.get::<String, _>(2))
                    .unwrap_or(RotationStep::Planned),
                new_version_id: row.get(3),
                started_at: row.get(4),
                updated_at: row.get(6),
                error: row.get(5),
            })
            .collect())
    }

    async fn record_issued(
        &self,
        rotation_id: &str,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let sealer = self.sealer()?;
        let fp = fingerprint(&key.secret);
        let mut tx = self.begin_write().await?;
        let (credential_id, credential): (i64, String) = sqlx::query_as(
            "SELECT c.id, c.name FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL AND r.step = 'planned'",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::RotationNotInStep {
            rotation: rotation_id.to_string(),
            expected: RotationStep::Planned,
        })?;
        let id = Self::insert_sealed_version(
            &mut tx,
            sealer,
            (credential_id, &credential),
            "pending",
            &fp,
            &key,
            Some(rotation_id),
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE rotations SET step = 'issued', new_version_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(id)
        .bind(now)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "{fp} issued as pending (provider key id {})",
            key.provider_key_id.as_deref().unwrap_or("-")
        );
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(id),
            EventKind::Issued,
            "rotation",
            &detail,
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn adopt_pending(
        &self,
        rotation_id: &str,
        version_id: i64,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let credential: String = sqlx::query_scalar(
            "SELECT c.name FROM rotations r JOIN credentials c ON c.id = r.credential_id
             JOIN key_versions v ON v.credential_id = c.id
             WHERE r.id = ? AND r.step = 'planned' AND r.finished_at IS NULL AND v.id = ? AND v.stage = 'pending'",
        )
        .bind(rotation_id)
        .bind(version_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotAdoptable {
            version: version_id,
            rotation: rotation_id.to_string(),
        })?;
        sqlx::query(
            "UPDATE rotations SET step = 'issued', new_version_id = ?, updated_at = ? WHERE id = ?",
        )
        .bind(version_id)
        .bind(now)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE key_versions SET rotation_id = ? WHERE id = ?")
            .bind(rotation_id)
            .bind(version_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(version_id),
            EventKind::Adopted,
            "rotation",
            "operator-imported pending key taken into the rotation",
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn advance_rotation(
        &self,
        rotation_id: &str,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential, version): (String, Option<i64>) = sqlx::query_as(
            "SELECT c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::RotationNotInFlight {
            rotation: rotation_id.to_string(),
        })?;
        sqlx::query("UPDATE rotations SET step = ?, updated_at = ? WHERE id = ?")
            .bind(step.as_str())
            .bind(now)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            version,
            EventKind::reached(step),
            "rotation",
            detail,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn promote(
        &self,
        rotation_id: &str,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential_id, credential, new_version): (i64, String, Option<i64>) = sqlx::query_as(
            "SELECT c.id, c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL AND r.step = 'delivered'",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::RotationNotInStep {
            rotation: rotation_id.to_string(),
            expected: RotationStep::Delivered,
        })?;
        let new_version = new_version.ok_or_else(|| StoreError::RotationWithoutKey {
            rotation: rotation_id.to_string(),
        })?;
        sqlx::query(
            "UPDATE key_versions SET stage = 'previous', stage_changed_at = ? WHERE credential_id = ? AND stage = 'current'",
        )
        .bind(now)
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        let promoted = sqlx::query(
            "UPDATE key_versions SET stage = 'current', stage_changed_at = ? WHERE id = ? AND stage = 'pending'",
        )
        .bind(now)
        .bind(new_version)
        .execute(&mut *tx)
        .await?;
        if promoted.rows_affected() != 1 {
            return Err(StoreError::NoLongerPending {
                version: new_version,
            });
        }
        sqlx::query("UPDATE rotations SET step = 'done', updated_at = ?, finished_at = ?, error = NULL WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        // The new key's check state starts fresh: the credential-level status was the old key's.
        sqlx::query(
            "UPDATE credentials SET last_rotated_at = ?, consecutive_failures = 0, next_rotation_at = ?,
                 check_status = 'valid', valid = 1, last_check_at = ?, check_detail = 'verified during rotation'
             WHERE id = ?",
        )
        .bind(now)
        .bind(next_rotation_at)
        .bind(now)
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(new_version),
            EventKind::Promoted,
            "rotation",
            &format!(
                "rotation {rotation_id} done; the previous key stays valid for the grace period"
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fail_rotation(
        &self,
        rotation_id: &str,
        failure: &RotationFailure,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let (credential_id, credential, new_version): (i64, String, Option<i64>) = sqlx::query_as(
            "SELECT c.id, c.name, r.new_version_id FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.id = ? AND r.finished_at IS NULL",
        )
        .bind(rotation_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::RotationNotInFlight {
            rotation: rotation_id.to_string(),
        })?;
        sqlx::query("UPDATE rotations SET step = 'failed', updated_at = ?, finished_at = ?, error = ?, attempts = attempts + 1 WHERE id = ?")
            .bind(now)
            .bind(now)
            .bind(&failure.error)
            .bind(rotation_id)
            .execute(&mut *tx)
            .await?;
        match (failure.discard_pending, new_version) {
            (true, Some(version)) => {
                sqlx::query("UPDATE key_versions SET stage = 'failed', stage_changed_at = ? WHERE id = ? AND stage = 'pending'")
                    .bind(now)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            (false, Some(version)) => {
                // A kept (operator-imported) key is released from the failed rotation, so
                // the retry can adopt it again: a pending key bound to a finished rotation
                // is neither "imported, waiting" nor in flight, and would stay stuck (and
                // block re-importing it as a duplicate).
                sqlx::query(
                    "UPDATE key_versions SET rotation_id = NULL WHERE id = ? AND stage = 'pending'",
                )
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        sqlx::query("UPDATE credentials SET consecutive_failures = consecutive_failures + 1, next_rotation_at = COALESCE(?, next_rotation_at) WHERE id = ?")
            .bind(failure.retry_at)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            new_version,
            EventKind::RotationFailed,
            "rotation",
            &failure.error,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotation_outlooks(&self) -> StoreResult<Vec<RotationOutlook>> {
        // One pass over the credentials; the correlated sub-queries use the
        // (credential_id, stage) index.
        Ok(sqlx::query(
            "SELECT c.name, c.next_rotation_at, c.last_rotated_at, c.consecutive_failures,
                    cur.created_at, cur.expires_at,
                    EXISTS (SELECT 1 FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'pending' AND v.rotation_id IS NULL
                            AND v.sealed_secret IS NOT NULL),
                    r.updated_at,
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'previous' AND v.sealed_secret IS NOT NULL),
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'failed' AND v.sealed_secret IS NOT NULL)
             FROM credentials c
             LEFT JOIN key_versions cur ON cur.credential_id = c.id AND cur.stage = 'current'
             LEFT JOIN rotations r ON r.credential_id = c.id AND r.finished_at IS NULL
             WHERE c.removed_at IS NULL",
        )
        .fetch(&self.reader)
        .map_ok(|row| RotationOutlook {
            credential: row.get(0),
            next_rotation_at: row.get(1),
            last_rotated_at: row.get(2),
            consecutive_failures: row.get(3),
            current: row
                .get::<Option<i64>, _>(4)
                .map(|created| (created, row.get(5))),
            imported_pending: row.get(6),
            in_flight_since: row.get(7),
            oldest_previous: row.get(8),
            oldest_discarded: row.get(9),
        })
        .try_collect()
        .await?)
    }

    async fn set_next_rotations(&self, due: &[(String, Option<UnixTime>)]) -> StoreResult<()> {
        if due.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for (credential, at) in due {
            sqlx::query("UPDATE credentials SET next_rotation_at = ? WHERE name = ?")
                .bind(at)
                .bind(credential)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
