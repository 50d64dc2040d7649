//! Ownership of a rotation in SQL: planning (the planner owns it), takeover once the lease
//! expired (or once its owner's leadership term is over), renewal, the leader fence, and
//! the compare-and-set every step starts with. Lease times are the database's own.
//!
//! Where SQLite's single writer makes "read, compare, write" atomic, this backend locks:
//! a step reads its rotation row `FOR UPDATE`, then locks its credential's row, then (when
//! it acts for a leader) the leadership row `FOR SHARE`, always in that order; a takeover
//! is one `UPDATE` of the rotation row, so it waits for a step in flight and then re-reads
//! the row it compares. The leadership row comes last because a claim of leadership
//! waiting for it makes later shared lockers queue behind the claim: taken before a lock
//! another transaction holds while it queues there, it would close a deadlock cycle.

use super::{db_now, PgStore, Tx};
use crate::model::UnixTime;
use crate::store::{
    Claim, EventKind, LeaderToken, Lease, Rotation, RotationKind, RotationStep, StoreError,
    StoreResult,
};
use sqlx::postgres::PgRow;
use sqlx::Row;

/// The columns of a [`Rotation`], read from `rotations r JOIN credentials c`.
pub(super) const ROTATION_COLUMNS: &str = "r.id, c.name, r.kind, r.step, r.new_version_id,
    r.started_at, r.updated_at, r.error, r.owner, r.owner_epoch, r.lease_expires_at, r.attempts";

pub(super) fn rotation_from_row(row: &PgRow) -> Rotation {
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

impl PgStore {
    /// The leader fence: a write made for a leader (`token`) is refused with
    /// [`StoreError::Fenced`] unless that leader still holds the lease at its epoch, on the
    /// database's clock. The row stays share-locked to the commit, so the lease cannot
    /// change hands under the write.
    pub(super) async fn leader_fence(
        tx: &mut Tx,
        token: Option<&LeaderToken>,
        rotation: &str,
        epoch: i64,
    ) -> StoreResult<()> {
        let Some(token) = token else { return Ok(()) };
        let holds: Option<i32> = sqlx::query_scalar(concat!(
            "SELECT 1 FROM leadership WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > ",
            db_now!(),
            " FOR SHARE"
        ))
        .bind(&token.holder)
        .bind(token.epoch)
        .fetch_optional(&mut **tx)
        .await?;
        match holds {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced {
                rotation: rotation.to_string(),
                epoch,
            }),
        }
    }

    /// Inserts a rotation owned by `claim` (epoch 1) after checking none is in flight. The
    /// caller holds the credential's row lock ([`PgStore::credential_id`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn insert_rotation(
        tx: &mut Tx,
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
            "SELECT id FROM rotations WHERE credential_id = $1 AND finished_at IS NULL",
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
             VALUES ($1, $2, $3, 'planned', $4, $5, $6, $7, 1, $8, ",
            db_now!(),
            " + $9)"
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
        .await
        .map_err(|error| match super::unique_violation(&error).as_deref() {
            // Behind the credential's row lock this cannot happen; the index stands anyway.
            Some("rotations_one_in_flight") => StoreError::RotationInFlight {
                credential: credential.to_string(),
                rotation: "(another)".into(),
            },
            _ => StoreError::Database(error),
        })?;
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

    pub(super) async fn rotation_in(tx: &mut Tx, rotation_id: &str) -> StoreResult<Rotation> {
        let row = sqlx::query(&format!(
            "SELECT {ROTATION_COLUMNS} FROM rotations r JOIN credentials c ON c.id = r.credential_id WHERE r.id = $1"
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
    pub(super) async fn finish_done(tx: &mut Tx, lease: &Lease, now: UnixTime) -> StoreResult<()> {
        sqlx::query("UPDATE rotations SET step = 'done', updated_at = $1, finished_at = $2, error = NULL WHERE id = $3 AND owner_epoch = $4")
            .bind(now)
            .bind(now)
            .bind(&lease.rotation)
            .bind(lease.epoch)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The compare-and-set every step starts with, inside its write transaction: the
    /// rotation is unfinished, still at `expected` (any step when `None`), owned at the
    /// lease's epoch and, for a leader, the leader still holds its term; its lease is
    /// renewed. The rotation row stays locked to the commit, so no takeover lands between
    /// this check and the step's write.
    pub(super) async fn hold(
        tx: &mut Tx,
        lease: &Lease,
        expected: Option<RotationStep>,
    ) -> StoreResult<Held> {
        Self::hold_with(tx, lease, expected, KeysChange::Yes).await
    }

    /// [`PgStore::hold`] for a step that changes no key of the credential (a step marker:
    /// `verified`, `delivered`): the credential's row is not locked, one round trip less.
    pub(super) async fn hold_rotation(
        tx: &mut Tx,
        lease: &Lease,
        expected: Option<RotationStep>,
    ) -> StoreResult<Held> {
        Self::hold_with(tx, lease, expected, KeysChange::No).await
    }

    async fn hold_with(
        tx: &mut Tx,
        lease: &Lease,
        expected: Option<RotationStep>,
        keys: KeysChange,
    ) -> StoreResult<Held> {
        /// credential id and name, new version, step, owner epoch, finished at
        type HeldRow = (i64, String, Option<i64>, String, i64, Option<i64>);
        // Locks the rotation row and renews the lease in one round trip. The renewal is
        // conditional on nothing: every refusal below returns an error, and the caller's
        // transaction is then rolled back with it.
        let row: Option<HeldRow> = sqlx::query_as(concat!(
            "UPDATE rotations r SET lease_expires_at = ",
            db_now!(),
            " + $2
             FROM credentials c WHERE r.id = $1 AND c.id = r.credential_id
             RETURNING c.id, c.name, r.new_version_id, r.step, r.owner_epoch, r.finished_at"
        ))
        .bind(&lease.rotation)
        .bind(lease.seconds)
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
        if keys == KeysChange::Yes {
            // The credential's keys change under this step: writes about them take turns.
            sqlx::query("SELECT 1 FROM credentials WHERE id = $1 FOR UPDATE")
                .bind(credential_id)
                .execute(&mut **tx)
                .await?;
        }
        // Last of the locks that can be waited for (see the module doc); a deposed leader
        // is fenced whatever the step, as on SQLite.
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
        // The compare-and-set: only an unfinished rotation whose lease has expired on the
        // database's clock, or one owned in an earlier leadership term than the claimant's
        // (its owner is fenced by the leader epoch already).
        let taken = sqlx::query(concat!(
            "UPDATE rotations SET owner = $1, owner_epoch = owner_epoch + 1, owner_leader_epoch = $2,
                 updated_at = $3, lease_expires_at = ",
            db_now!(),
            " + $4 WHERE id = $5 AND finished_at IS NULL AND (lease_expires_at <= ",
            db_now!(),
            " OR owner_leader_epoch < $2)"
        ))
        .bind(&claim.owner)
        .bind(leader_epoch)
        .bind(now)
        .bind(claim.lease_seconds)
        .bind(rotation_id)
        .execute(&mut *tx)
        .await?;
        // After the rotation row's lock, as in every step; a fenced claimant's update is
        // rolled back with the transaction. A deposed leader is told so first.
        Self::leader_fence(
            &mut tx,
            claim.leader.as_ref(),
            rotation_id,
            leader_epoch.unwrap_or_default(),
        )
        .await?;
        if taken.rows_affected() != 1 {
            let row: Option<(String, i64, i64, Option<i64>)> = sqlx::query_as(concat!(
                "SELECT owner, lease_expires_at, lease_expires_at - ",
                db_now!(),
                ", finished_at FROM rotations WHERE id = $1"
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
        super::commit(tx).await?;
        let lease = Lease::of(&rotation, claim);
        Ok((rotation, lease))
    }

    /// Renews the lease in one statement on the usual path, since the owner renews before
    /// every external effect and each round trip to the server counts. It takes no lock on
    /// the leadership row: a renewal that commits just after a new term began only extends
    /// a lease the new leader does not wait for (it takes over a rotation of an earlier
    /// term at once). The lease is not rendered state, so the generation stays. When the
    /// statement matches nothing, the locking path says why (fenced, finished, gone).
    pub(super) async fn renew_in(&self, lease: &Lease) -> StoreResult<()> {
        let renewed = sqlx::query(concat!(
            "UPDATE rotations SET lease_expires_at = ",
            db_now!(),
            " + $1 WHERE id = $2 AND owner_epoch = $3 AND finished_at IS NULL
               AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM leadership
                    WHERE id = 1 AND holder = $4 AND epoch = $5 AND expires_at > ",
            db_now!(),
            "))"
        ))
        .bind(lease.seconds)
        .bind(&lease.rotation)
        .bind(lease.epoch)
        .bind(lease.leader.as_ref().map(|token| token.holder.as_str()))
        .bind(lease.leader.as_ref().map(|token| token.epoch))
        .execute(&self.pool)
        .await?;
        if renewed.rows_affected() == 1 {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        Self::hold(&mut tx, lease, None).await?;
        super::commit(tx).await
    }
}

/// Whether a step changes the credential's keys (and so takes the credential's row lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeysChange {
    Yes,
    No,
}
