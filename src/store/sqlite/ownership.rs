//! Ownership of a rotation in SQL: planning (the planner owns it), takeover once the lease
//! expired (or once its owner's leadership term is over), renewal, the leader fence, and
//! the compare-and-set every step starts with. Lease times are the database's own
//! (`strftime('%s','now')`), never the caller's clock; `store/postgres/ownership.rs` keeps
//! the same rules with row locks where this relies on the single writer.

use super::SqliteStore;
use crate::model::UnixTime;
use crate::store::{
    Claim, EventKind, LeaderToken, Lease, Rotation, RotationKind, RotationStep, StoreError,
    StoreResult,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

/// The database's now, in Unix seconds.
macro_rules! db_now {
    () => {
        "CAST(strftime('%s','now') AS INTEGER)"
    };
}
pub(super) use db_now;

/// The columns of a [`Rotation`], read from `rotations r JOIN credentials c`.
pub(super) const ROTATION_COLUMNS: &str = "r.id, c.name, r.kind, r.step, r.new_version_id,
    r.started_at, r.updated_at, r.error, r.owner, r.owner_epoch, r.lease_expires_at, r.attempts";

pub(super) fn rotation_from_row(row: &SqliteRow) -> Rotation {
    Rotation {
        id: row.get(0),
        credential: row.get(1),
        kind: RotationKind::parse(&row.get::<String, _>(2)),
        step: RotationStep::parse(&row.get::<String, _>(3)).unwrap_or(RotationStep::Planned),
        new_version_id: row.get(4),
        started_at: row.get(5),
        updated_at: row.get(6),
        error: row.get(7),
        owner: row.get(8),
        owner_epoch: row.get(9),
        lease_expires_at: row.get(10),
        attempts: row.get(11),
    }
}

/// What a step holding the lease needs of its rotation.
pub(super) struct Held {
    pub credential_id: i64,
    pub credential: String,
    pub new_version: Option<i64>,
}

impl SqliteStore {
    /// The leader fence: a write made for a leader (`token`) is refused with
    /// [`StoreError::Fenced`] unless that leader still holds the lease at its epoch, on the
    /// database's clock. Inside the write transaction, which no other writer interleaves.
    pub(super) async fn leader_fence(
        tx: &mut Transaction<'static, Sqlite>,
        token: Option<&LeaderToken>,
        rotation: &str,
        epoch: i64,
    ) -> StoreResult<()> {
        let Some(token) = token else { return Ok(()) };
        let holds: bool = sqlx::query_scalar(concat!(
            "SELECT EXISTS (SELECT 1 FROM leadership WHERE id = 1 AND holder = ? AND epoch = ? AND expires_at > ",
            db_now!(),
            ")"
        ))
        .bind(&token.holder)
        .bind(token.epoch)
        .fetch_one(&mut **tx)
        .await?;
        if holds {
            Ok(())
        } else {
            Err(StoreError::Fenced {
                rotation: rotation.to_string(),
                epoch,
            })
        }
    }

    /// Inserts a rotation owned by `claim` (epoch 1) after checking none is in flight.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn insert_rotation(
        tx: &mut Transaction<'static, Sqlite>,
        (credential_id, credential): (i64, &str),
        rotation_id: &str,
        kind: RotationKind,
        new_version: Option<i64>,
        actor: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)> {
        let leader_epoch = claim.leader.as_ref().map(|t| t.epoch);
        Self::leader_fence(
            tx,
            claim.leader.as_ref(),
            rotation_id,
            leader_epoch.unwrap_or_default(),
        )
        .await?;
        let in_flight: Option<String> = sqlx::query_scalar(
            "SELECT id FROM rotations WHERE credential_id = ? AND finished_at IS NULL",
        )
        .bind(credential_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(other) = in_flight {
            return Err(StoreError::RotationInFlight {
                credential: credential.to_string(),
                rotation: other,
            });
        }
        sqlx::query(concat!(
            "INSERT INTO rotations (id, credential_id, kind, step, new_version_id, started_at, updated_at,
                 owner, owner_epoch, owner_leader_epoch, lease_expires_at)
             VALUES (?, ?, ?, 'planned', ?, ?, ?, ?, 1, ?, ",
            db_now!(),
            " + ?)"
        ))
        .bind(rotation_id)
        .bind(credential_id)
        .bind(kind.as_str())
        .bind(new_version)
        .bind(now)
        .bind(now)
        .bind(&claim.owner)
        .bind(leader_epoch)
        .bind(claim.lease_seconds)
        .execute(&mut **tx)
        .await?;
        let detail = match kind {
            RotationKind::Rotate => format!("rotation {rotation_id}"),
            RotationKind::Rollback => format!(
                "rollback {rotation_id} to version {}",
                new_version.unwrap_or_default()
            ),
        };
        Self::insert_event(
            tx,
            Some(credential),
            new_version,
            EventKind::RotationPlanned,
            actor,
            &detail,
            now,
        )
        .await?;
        let rotation = Self::rotation_in(tx, rotation_id).await?;
        let lease = Lease::of(&rotation, claim);
        Ok((rotation, lease))
    }

    pub(super) async fn rotation_in(
        tx: &mut Transaction<'static, Sqlite>,
        rotation_id: &str,
    ) -> StoreResult<Rotation> {
        let row = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id WHERE r.id = ?"
        ))
        .bind(rotation_id)
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::RotationNotInFlight {
            rotation: rotation_id.to_string(),
        })?;
        Ok(rotation_from_row(&row))
    }

    /// Marks the held rotation done (a promotion, or a rollback's swap), under the lease's
    /// epoch like every step.
    pub(super) async fn finish_done(
        tx: &mut Transaction<'static, Sqlite>,
        lease: &Lease,
        now: UnixTime,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE rotations SET step = 'done', updated_at = ?, finished_at = ?, error = NULL WHERE id = ? AND owner_epoch = ?")
            .bind(now)
            .bind(now)
            .bind(&lease.rotation)
            .bind(lease.epoch)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The compare-and-set every step starts with, inside its write transaction: the
    /// rotation is unfinished, still at `expected` (any step when `None`) and owned at the
    /// lease's epoch; its lease is renewed. The step's own UPDATE repeats the epoch
    /// condition, so on a backend without `BEGIN IMMEDIATE` a concurrent takeover still
    /// makes it match no row.
    pub(super) async fn hold(
        tx: &mut Transaction<'static, Sqlite>,
        lease: &Lease,
        expected: Option<RotationStep>,
    ) -> StoreResult<Held> {
        /// credential id and name, new version, step, owner epoch, finished at
        type HeldRow = (i64, String, Option<i64>, String, i64, Option<i64>);
        let row: Option<HeldRow> = sqlx::query_as(
            "SELECT c.id, c.name, r.new_version_id, r.step, r.owner_epoch, r.finished_at
             FROM rotations r JOIN credentials c ON c.id = r.credential_id WHERE r.id = ?",
        )
        .bind(&lease.rotation)
        .fetch_optional(&mut **tx)
        .await?;
        let Some((credential_id, credential, new_version, step, epoch, finished)) = row else {
            return Err(StoreError::RotationNotInFlight {
                rotation: lease.rotation.clone(),
            });
        };
        if epoch != lease.epoch {
            return Err(StoreError::Fenced {
                rotation: lease.rotation.clone(),
                epoch: lease.epoch,
            });
        }
        Self::leader_fence(tx, lease.leader.as_ref(), &lease.rotation, lease.epoch).await?;
        if finished.is_some() {
            return Err(StoreError::RotationNotInFlight {
                rotation: lease.rotation.clone(),
            });
        }
        if let Some(expected) = expected {
            if RotationStep::parse(&step) != Some(expected) {
                return Err(StoreError::RotationNotInStep {
                    rotation: lease.rotation.clone(),
                    expected,
                });
            }
        }
        sqlx::query(concat!(
            "UPDATE rotations SET lease_expires_at = ",
            db_now!(),
            " + ? WHERE id = ? AND owner_epoch = ?"
        ))
        .bind(lease.seconds)
        .bind(&lease.rotation)
        .bind(lease.epoch)
        .execute(&mut **tx)
        .await?;
        Ok(Held {
            credential_id,
            credential,
            new_version,
        })
    }

    pub(super) async fn take_over_in(
        &self,
        rotation_id: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)> {
        let mut tx = self.begin_write().await?;
        let leader_epoch = claim.leader.as_ref().map(|t| t.epoch);
        Self::leader_fence(
            &mut tx,
            claim.leader.as_ref(),
            rotation_id,
            leader_epoch.unwrap_or_default(),
        )
        .await?;
        // The compare-and-set: only an unfinished rotation whose lease has expired on the
        // database's clock, or one owned in an earlier leadership term than the claimant's
        // (its owner is fenced by the leader epoch already, so a new leader need not wait
        // out the rotation lease).
        let taken = sqlx::query(concat!(
            "UPDATE rotations SET owner = ?1, owner_epoch = owner_epoch + 1, owner_leader_epoch = ?2,
                 updated_at = ?3, lease_expires_at = ",
            db_now!(),
            " + ?4 WHERE id = ?5 AND finished_at IS NULL AND (lease_expires_at <= ",
            db_now!(),
            " OR owner_leader_epoch < ?2)"
        ))
        .bind(&claim.owner)
        .bind(leader_epoch)
        .bind(now)
        .bind(claim.lease_seconds)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() != 1 {
            let row: Option<(String, i64, i64, Option<i64>)> = sqlx::query_as(concat!(
                "SELECT owner, lease_expires_at, lease_expires_at - ",
                db_now!(),
                ", finished_at FROM rotations WHERE id = ?"
            ))
            .bind(rotation_id)
            .fetch_optional(&mut *tx)
            .await?;
            return Err(match row {
                Some((owner, until, left, None)) => StoreError::LeaseLive {
                    rotation: rotation_id.to_string(),
                    owner,
                    until,
                    left,
                },
                _ => StoreError::RotationNotInFlight {
                    rotation: rotation_id.to_string(),
                },
            });
        }
        let rotation = Self::rotation_in(&mut tx, rotation_id).await?;
        Self::insert_event(
            &mut tx,
            Some(&rotation.credential),
            rotation.new_version_id,
            EventKind::RotationTakenOver,
            &claim.owner,
            &format!(
                "{} {} at step {}: the previous owner's lease expired or its leadership term ended; epoch {}",
                rotation.kind.as_str(),
                rotation.id,
                rotation.step,
                rotation.owner_epoch
            ),
            now,
        )
        .await?;
        tx.commit().await?;
        let lease = Lease::of(&rotation, claim);
        Ok((rotation, lease))
    }

    pub(super) async fn renew_in(&self, lease: &Lease) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        Self::hold(&mut tx, lease, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
