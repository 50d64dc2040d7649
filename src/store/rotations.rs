//! Rotations: the durable steps of replacing a credential's key, and the bookkeeping its
//! next due time is computed from. Each step commits before the next external effect, so a
//! rotation interrupted anywhere resumes from its last committed step.
//!
//! # Ownership (the contract every backend keeps)
//!
//! A rotation in flight has one owner: an instance identity ([`Claim::owner`]) holding a
//! lease that expires on the *database's* clock, never the caller's, so processes on hosts
//! with skewed clocks agree on it. Planning a rotation makes the planner its owner with
//! epoch 1; [`RotationStore::take_over`] makes another process the owner only once the
//! lease has expired, raising `owner_epoch` in the same compare-and-set. Every later write
//! ([`RotationStore::record_issued`], [`RotationStore::adopt_pending`],
//! [`RotationStore::advance_rotation`], [`RotationStore::promote`],
//! [`RotationStore::finish_rollback`], [`RotationStore::fail_rotation`],
//! [`RotationStore::hold_for_attention`], [`RotationStore::renew_lease`]) is a compare-and-set on (rotation id, expected step,
//! owner epoch) and renews the lease: a write by an owner that was taken over matches no
//! row and answers [`StoreError::Fenced`](super::StoreError::Fenced), and the caller stops
//! without any side effect (the new owner is responsible now).

use super::{KeyVersion, LeaderToken, NewKey, StoreResult};
use crate::model::UnixTime;
use async_trait::async_trait;

/// Where a rotation is. Each step is durable before the next external effect. Ordered as
/// a rotation moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RotationStep {
    /// Recorded before any call to the provider.
    Planned,
    /// The new key is stored as `pending`.
    Issued,
    /// The new key answered a check as valid.
    Verified,
    /// Every delivery target holds the new key.
    Delivered,
    /// Needs attention: the rotation failed after the new key may have been delivered, and
    /// putting the current key back did not succeed on every target. Both keys stay live
    /// and sealed, nothing is revoked, and the rotation stays unfinished (so no other
    /// rotation of the credential starts) until every target takes the current key again;
    /// then it is wound up as failed. Unfinished.
    Attention,
    /// Promoted: the new key is current. Finished.
    Done,
    /// Abandoned; the old key stayed current. Finished.
    Failed,
}

impl RotationStep {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RotationStep::Planned => "planned",
            RotationStep::Issued => "issued",
            RotationStep::Verified => "verified",
            RotationStep::Delivered => "delivered",
            RotationStep::Attention => "attention",
            RotationStep::Done => "done",
            RotationStep::Failed => "failed",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<RotationStep> {
        [
            RotationStep::Planned,
            RotationStep::Issued,
            RotationStep::Verified,
            RotationStep::Delivered,
            RotationStep::Attention,
            RotationStep::Done,
            RotationStep::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for RotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rotation row replaces: the current key by a new one, or by the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationKind {
    /// A new key is issued (or an imported one adopted), verified, delivered, promoted.
    Rotate,
    /// The previous key (bound at planning) is verified, delivered and made current again.
    Rollback,
}

impl RotationKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RotationKind::Rotate => "rotate",
            RotationKind::Rollback => "rollback",
        }
    }

    pub(crate) fn parse(text: &str) -> RotationKind {
        if text == "rollback" {
            RotationKind::Rollback
        } else {
            RotationKind::Rotate
        }
    }
}

/// A rotation's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub id: String,
    pub credential: String,
    pub kind: RotationKind,
    pub step: RotationStep,
    pub new_version_id: Option<i64>,
    pub started_at: UnixTime,
    /// Last time a step was committed.
    pub updated_at: UnixTime,
    pub error: Option<String>,
    /// The instance driving it (see [`Claim::owner`]).
    pub owner: String,
    /// Rises at every takeover; every write compares it.
    pub owner_epoch: i64,
    /// When the owner's lease ends, in Unix seconds on the database's clock.
    pub lease_expires_at: UnixTime,
    /// Failures recorded against it: while it is unfinished, how many restores failed
    /// (each [`RotationStore::hold_for_attention`]), which the next restore backs off by.
    pub attempts: i64,
}

/// Who asks to own a rotation, and for how long at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The instance identity, e.g. `daemon:<host>:<pid>:<random>`: unique per process run,
    /// so two runs on one host never mistake each other's lease for their own.
    pub owner: String,
    /// Lease length; every write by the owner renews it for this long.
    pub lease_seconds: i64,
    /// The leadership term the owner acts in, when it is a replica that leads (the daemon);
    /// `None` for the CLI. Every write by such an owner is refused once that term is over
    /// (see `store/leadership.rs`), and a rotation owned in an earlier term may be taken over
    /// by the current leader without waiting out its lease.
    pub leader: Option<LeaderToken>,
}

/// The right to write one rotation: returned by planning and takeover, passed to every step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub rotation: String,
    pub owner: String,
    /// The epoch this owner holds; a takeover raises the row's, fencing this lease off.
    pub epoch: i64,
    pub seconds: i64,
    /// See [`Claim::leader`].
    pub leader: Option<LeaderToken>,
}

impl Lease {
    pub(crate) fn of(rotation: &Rotation, claim: &Claim) -> Lease {
        Lease {
            rotation: rotation.id.clone(),
            owner: claim.owner.clone(),
            epoch: rotation.owner_epoch,
            seconds: claim.lease_seconds,
            leader: claim.leader.clone(),
        }
    }
}

/// How a failed rotation is wound up.
#[derive(Debug, Clone)]
pub struct RotationFailure {
    pub error: String,
    /// Mark the pending version `failed` (an issued key that must not be retried).
    pub discard_pending: bool,
    /// When to try again.
    pub retry_at: Option<UnixTime>,
}

/// One credential's rotation bookkeeping, reduced to what its next due time depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationOutlook {
    pub credential: String,
    pub next_rotation_at: Option<UnixTime>,
    pub last_rotated_at: Option<UnixTime>,
    pub consecutive_failures: i64,
    /// `created_at` and `expires_at` of the current key.
    pub current: Option<(UnixTime, Option<UnixTime>)>,
    /// A key imported by an operator waits to be taken into a rotation.
    pub imported_pending: bool,
    /// Seconds left on the lease of the rotation in flight, if any (zero or less: expired,
    /// so the rotation may be taken over); measured on the database's clock. Zero or less
    /// as well when the rotation was planned or taken over by a leader of an earlier term
    /// than the current one (see [`Claim::leader`]).
    pub in_flight_lease_left: Option<i64>,
    /// Earliest `stage_changed_at` of previous keys that still hold their secret.
    pub oldest_previous: Option<UnixTime>,
    /// Earliest `stage_changed_at` of discarded (failed) keys that still hold their secret.
    pub oldest_discarded: Option<UnixTime>,
}

#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Records a new rotation before anything is asked of the provider, owned by `claim`
    /// (epoch 1, lease from the database's now). Fails with
    /// [`StoreError::RotationInFlight`](super::StoreError::RotationInFlight) while another
    /// rotation of the credential is in flight.
    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)>;

    /// Records a rollback: a rotation of kind [`RotationKind::Rollback`] bound to the
    /// previous key, refused ([`StoreError::NoPreviousKey`](super::StoreError::NoPreviousKey),
    /// [`StoreError::PastGracePeriod`](super::StoreError::PastGracePeriod)) unless that key
    /// still holds its secret and changed stage no earlier than `not_before`. While it is in
    /// flight the previous key cannot be revoked (see [`KeyStore::mark_revoked`](super::KeyStore::mark_revoked)).
    async fn plan_rollback(
        &self,
        credential: &str,
        rotation_id: &str,
        not_before: UnixTime,
        actor: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)>;

    /// Unfinished rotations, with their owners and leases.
    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>>;

    /// Makes `claim` the owner of a rotation in flight whose lease has expired (on the
    /// database's clock), raising its epoch, in one compare-and-set. A live lease answers
    /// [`StoreError::LeaseLive`](super::StoreError::LeaseLive); a finished rotation
    /// [`StoreError::RotationNotInFlight`](super::StoreError::RotationNotInFlight).
    async fn take_over(
        &self,
        rotation_id: &str,
        claim: &Claim,
        now: UnixTime,
    ) -> StoreResult<(Rotation, Lease)>;

    /// Extends the lease while its holder still owns the rotation; a lease that was taken
    /// over answers [`StoreError::Fenced`](super::StoreError::Fenced). Called before every
    /// external effect, so an owner that was paused past its lease finds out before it
    /// touches a provider or a target.
    async fn renew_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// Stores the key the provider issued as `pending`, bound to the rotation
    /// (planned → issued, compare-and-set on the lease).
    async fn record_issued(
        &self,
        lease: &Lease,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// Binds an operator-imported pending version to the rotation (planned → issued,
    /// compare-and-set on the lease).
    async fn adopt_pending(&self, lease: &Lease, version_id: i64, now: UnixTime)
        -> StoreResult<()>;

    /// Moves a rotation from `expected` to `step` (verified or delivered), with an event;
    /// a rotation at another step answers
    /// [`StoreError::RotationNotInStep`](super::StoreError::RotationNotInStep), one owned by
    /// another epoch [`StoreError::Fenced`](super::StoreError::Fenced).
    async fn advance_rotation(
        &self,
        lease: &Lease,
        expected: RotationStep,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// In one transaction, from `delivered` under the lease: current → previous,
    /// pending → current, rotation done, failures reset, next rotation set.
    async fn promote(
        &self,
        lease: &Lease,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Finishes a rollback from `delivered` under the lease, in one transaction: the bound
    /// previous key → current, current → previous, rotation done, automatic rotation held
    /// off for `hold_off` seconds. Returns the key that is current again.
    async fn finish_rollback(
        &self,
        lease: &Lease,
        actor: &str,
        hold_off: i64,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// Winds up a failed rotation under the lease (from any unfinished step, including
    /// [`RotationStep::Attention`]); the current key is untouched.
    async fn fail_rotation(
        &self,
        lease: &Lease,
        failure: &RotationFailure,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Puts the rotation in (or keeps it in) [`RotationStep::Attention`] under the lease:
    /// the current key could not be put back on every target, so the new key is neither
    /// discarded nor revoked and the rotation stays unfinished. Records `detail` (which
    /// targets failed and why; never secrets) as its error and in a `needs_attention`
    /// event, counts the failed restore in [`Rotation::attempts`] (the credential's failure
    /// count moves only when the rotation is wound up), and sets the lease to end in
    /// `retry_after` seconds (on the database's clock): the lease doubles as the retry
    /// backoff, so whichever process takes it over after that retries the restore.
    async fn hold_for_attention(
        &self,
        lease: &Lease,
        detail: &str,
        retry_after: i64,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// What the rotation schedule of every active credential depends on, in one read (the
    /// daemon's start-up and its hourly re-read; see `rotation::pass_queue`).
    async fn rotation_outlooks(&self) -> StoreResult<Vec<RotationOutlook>>;

    async fn set_next_rotation(&self, credential: &str, at: Option<UnixTime>) -> StoreResult<()> {
        self.set_next_rotations(&[(credential.to_string(), at)])
            .await
    }

    /// Records the next due time of many credentials in one transaction (start-up records
    /// every credential's at once, not with a commit each).
    async fn set_next_rotations(&self, due: &[(String, Option<UnixTime>)]) -> StoreResult<()>;
}
