//! Rotations: each step of a rotation in its own transaction, and the bookkeeping its due
//! time is computed from. Planning locks the credential's row, each step its rotation's
//! row and then the credential's (see `ownership.rs`).

use super::ownership::{rotation_from_row, Held, ROTATION_COLUMNS};
use super::{commit, db_now, PgStore};
use crate::model::{fingerprint, UnixTime};
use crate::store::{
    Claim, EventKind, KeyVersion, Lease, NewKey, Rotation, RotationFailure, RotationKind,
    RotationOutlook, RotationStep, RotationStore, StoreError, StoreResult,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::Row;

#[async_trait]
impl RotationStore for PgStore {
    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)> {
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let planned = Self::insert_rotation(
            &mut tx,
            (credential_id, credential),
            rotation_id,
            RotationKind::Rotate,
            None,
            actor,
            claim,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(planned)
    }

    async fn plan_rollback(
        &self,
        credential: &str,
        rotation_id: &str,
        not_before: UnixTime,
        actor: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)> {
        let mut tx = self.begin_write().await?;
        let credential_id = Self::credential_id(&mut tx, credential).await?;
        let previous: Option<(i64, i64)> = sqlx::query_as(
            "SELECT id, stage_changed_at FROM key_versions WHERE credential_id = $1 AND stage = 'previous' AND sealed_secret IS NOT NULL
             ORDER BY stage_changed_at DESC, id DESC LIMIT 1",
        )
        .bind(credential_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((previous_id, changed_at)) = previous else {
            return Err(StoreError::NoPreviousKey {
                credential: credential.to_string(),
            });
        };
        if changed_at < not_before {
            return Err(StoreError::PastGracePeriod {
                credential: credential.to_string(),
            });
        }
        let planned = Self::insert_rotation(
            &mut tx,
            (credential_id, credential),
            rotation_id,
            RotationKind::Rollback,
            Some(previous_id),
            actor,
            claim,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(planned)
    }

    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>> {
        let rows = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id
             WHERE r.finished_at IS NULL ORDER BY r.started_at, r.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rotation_from_row).collect())
    }

    async fn take_over(
        &self,
        rotation_id: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)> {
        self.take_over_in(rotation_id, claim, now).await
    }

    async fn renew_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.renew_in(lease).await
    }

    async fn record_issued(
        &self,
        lease: &Lease,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let sealer = self.sealer()?;
        let fp = fingerprint(&key.secret);
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential_id,
            credential,
            ..
        } = Self::hold(&mut tx, lease, Some(RotationStep::Planned)).await?;
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
            "UPDATE rotations SET step = 'issued', new_version_id = $1, updated_at = $2 WHERE id = $3 AND owner_epoch = $4",
        )
        .bind(id)
        .bind(now)
        .bind(rotation_id)
        .bind(lease.epoch)
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
        commit(tx).await?;
        Ok(version)
    }

    async fn adopt_pending(
        &self,
        lease: &Lease,
        version_id: i64,
        now: UnixTime,
    ) -> StoreResult<()> {
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential_id,
            credential,
            ..
        } = Self::hold(&mut tx, lease, Some(RotationStep::Planned)).await?;
        let adoptable: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE id = $1 AND credential_id = $2 AND stage = 'pending')",
        )
        .bind(version_id)
        .bind(credential_id)
        .fetch_one(&mut *tx)
        .await?;
        if !adoptable {
            return Err(StoreError::NotAdoptable {
                version: version_id,
                rotation: rotation_id.to_string(),
            });
        }
        sqlx::query(
            "UPDATE rotations SET step = 'issued', new_version_id = $1, updated_at = $2 WHERE id = $3 AND owner_epoch = $4",
        )
        .bind(version_id)
        .bind(now)
        .bind(rotation_id)
        .bind(lease.epoch)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE key_versions SET rotation_id = $1 WHERE id = $2")
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
        commit(tx).await?;
        Ok(())
    }

    async fn advance_rotation(
        &self,
        lease: &Lease,
        expected: RotationStep,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        let Held {
            credential,
            new_version,
            ..
        } = Self::hold_rotation(&mut tx, lease, Some(expected)).await?;
        sqlx::query(
            "UPDATE rotations SET step = $1, updated_at = $2 WHERE id = $3 AND owner_epoch = $4 AND step = $5",
        )
        .bind(step.as_str())
        .bind(now)
        .bind(&lease.rotation)
        .bind(lease.epoch)
        .bind(expected.as_str())
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            new_version,
            EventKind::reached(step),
            "rotation",
            detail,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(())
    }

    async fn promote(
        &self,
        lease: &Lease,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()> {
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential_id,
            credential,
            new_version,
        } = Self::hold(&mut tx, lease, Some(RotationStep::Delivered)).await?;
        let new_version = new_version.ok_or_else(|| StoreError::RotationWithoutKey {
            rotation: rotation_id.to_string(),
        })?;
        sqlx::query(
            "UPDATE key_versions SET stage = 'previous', stage_changed_at = $1 WHERE credential_id = $2 AND stage = 'current'",
        )
        .bind(now)
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        let promoted = sqlx::query(
            "UPDATE key_versions SET stage = 'current', stage_changed_at = $1 WHERE id = $2 AND stage = 'pending'",
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
        Self::finish_done(&mut tx, lease, now).await?;
        // The new key's check state starts fresh: the credential-level status was the old key's.
        sqlx::query(
            "UPDATE credentials SET last_rotated_at = $1, consecutive_failures = 0, next_rotation_at = $2,
                 check_status = 'valid', valid = 1, last_check_at = $3, check_detail = 'verified during rotation'
             WHERE id = $4",
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
        commit(tx).await?;
        Ok(())
    }

    async fn finish_rollback(
        &self,
        lease: &Lease,
        actor: &str,
        hold_off: i64,
        now: UnixTime,
    ) -> StoreResult<KeyVersion> {
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential_id,
            credential,
            new_version,
        } = Self::hold(&mut tx, lease, Some(RotationStep::Delivered)).await?;
        let previous_id = new_version.ok_or_else(|| StoreError::RotationWithoutKey {
            rotation: rotation_id.to_string(),
        })?;
        // The bound key must still be the previous one (nothing revokes it meanwhile: see
        // `mark_revoked`), else the swap would leave no current key.
        let still_previous: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM key_versions WHERE id = $1 AND stage = 'previous' AND sealed_secret IS NOT NULL)",
        )
        .bind(previous_id)
        .fetch_one(&mut *tx)
        .await?;
        if !still_previous {
            return Err(StoreError::NoPreviousKey {
                credential: credential.clone(),
            });
        }
        sqlx::query("UPDATE key_versions SET stage = 'previous', stage_changed_at = $1 WHERE credential_id = $2 AND stage = 'current'")
            .bind(now)
            .bind(credential_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE key_versions SET stage = 'current', stage_changed_at = $1 WHERE id = $2",
        )
        .bind(now)
        .bind(previous_id)
        .execute(&mut *tx)
        .await?;
        Self::finish_done(&mut tx, lease, now).await?;
        // A rollback means the last rotation failed in use: count it as a failure and hold
        // automatic rotation off for a grace period, or a max_age policy would undo the
        // operator's rollback at the next scheduling pass.
        sqlx::query(
            "UPDATE credentials SET consecutive_failures = consecutive_failures + 1, next_rotation_at = $1 WHERE id = $2",
        )
        .bind(now + hold_off.max(60))
        .bind(credential_id)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            Some(previous_id),
            EventKind::RolledBack,
            actor,
            "previous key restored as current; automatic rotation held off for a grace period",
            now,
        )
        .await?;
        let version = Self::version_in(&mut tx, previous_id).await?;
        commit(tx).await?;
        Ok(version)
    }

    async fn fail_rotation(
        &self,
        lease: &Lease,
        failure: &RotationFailure,
        now: UnixTime,
    ) -> StoreResult<()> {
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential_id,
            credential,
            new_version,
        } = Self::hold(&mut tx, lease, None).await?;
        sqlx::query("UPDATE rotations SET step = 'failed', updated_at = $1, finished_at = $2, error = $3, attempts = attempts + 1 WHERE id = $4 AND owner_epoch = $5")
            .bind(now)
            .bind(now)
            .bind(&failure.error)
            .bind(rotation_id)
            .bind(lease.epoch)
            .execute(&mut *tx)
            .await?;
        match (failure.discard_pending, new_version) {
            (true, Some(version)) => {
                sqlx::query("UPDATE key_versions SET stage = 'failed', stage_changed_at = $1 WHERE id = $2 AND stage = 'pending'")
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
                    "UPDATE key_versions SET rotation_id = NULL WHERE id = $1 AND stage = 'pending'",
                )
                .bind(version)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        sqlx::query("UPDATE credentials SET consecutive_failures = consecutive_failures + 1, next_rotation_at = COALESCE($1, next_rotation_at) WHERE id = $2")
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
        commit(tx).await?;
        Ok(())
    }

    async fn hold_for_attention(
        &self,
        lease: &Lease,
        detail: &str,
        retry_after: i64,
        now: UnixTime,
    ) -> StoreResult<()> {
        let rotation_id = lease.rotation.as_str();
        let mut tx = self.begin_write().await?;
        let Held {
            credential,
            new_version,
            ..
        } = Self::hold(&mut tx, lease, None).await?;
        // The lease ends when the retry is due (database clock): nobody, this process
        // included, takes the rotation over before the backoff is over.
        sqlx::query(concat!(
            "UPDATE rotations SET step = 'attention', updated_at = $1, error = $2, attempts = attempts + 1, lease_expires_at = ",
            db_now!(),
            " + $3 WHERE id = $4 AND owner_epoch = $5"
        ))
        .bind(now)
        .bind(detail)
        .bind(retry_after.max(1))
        .bind(rotation_id)
        .bind(lease.epoch)
        .execute(&mut *tx)
        .await?;
        Self::insert_event(
            &mut tx,
            Some(&credential),
            new_version,
            EventKind::NeedsAttention,
            "rotation",
            detail,
            now,
        )
        .await?;
        commit(tx).await?;
        Ok(())
    }

    async fn rotation_outlooks(&self) -> StoreResult<Vec<RotationOutlook>> {
        // One pass over the credentials; the correlated sub-queries use the
        // (credential_id, stage) index. A rotation owned in an earlier leadership term than
        // the current one may be taken over now (its owner is fenced): its lease counts as
        // run out.
        Ok(sqlx::query(concat!(
            "SELECT c.name, c.next_rotation_at, c.last_rotated_at, c.consecutive_failures,
                    cur.created_at, cur.expires_at,
                    EXISTS (SELECT 1 FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'pending' AND v.rotation_id IS NULL
                            AND v.sealed_secret IS NOT NULL),
                    CASE WHEN r.owner_leader_epoch < (SELECT l.epoch FROM leadership l WHERE l.id = 1)
                         THEN LEAST(r.lease_expires_at - ",
            db_now!(),
            ", 0) ELSE r.lease_expires_at - ",
            db_now!(),
            " END,
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'previous' AND v.sealed_secret IS NOT NULL),
                    (SELECT MIN(v.stage_changed_at) FROM key_versions v WHERE v.credential_id = c.id
                            AND v.stage = 'failed' AND v.sealed_secret IS NOT NULL)
             FROM credentials c
             LEFT JOIN key_versions cur ON cur.credential_id = c.id AND cur.stage = 'current'
             LEFT JOIN rotations r ON r.credential_id = c.id AND r.finished_at IS NULL
             WHERE c.removed_at IS NULL"
        ))
        .fetch(&self.pool)
        .map_ok(|row| RotationOutlook {
            credential: row.get(0),
            next_rotation_at: row.get(1),
            last_rotated_at: row.get(2),
            consecutive_failures: row.get(3),
            current: row
                .get::<Option<i64>, _>(4)
                .map(|created| (created, row.get(5))),
            imported_pending: row.get(6),
            in_flight_lease_left: row.get(7),
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
            sqlx::query("UPDATE credentials SET next_rotation_at = $1 WHERE name = $2")
                .bind(at)
                .bind(credential)
                .execute(&mut *tx)
                .await?;
        }
        commit(tx).await?;
        Ok(())
    }
}
