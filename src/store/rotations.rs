//! Rotations: the durable steps of replacing a credential's key, and the bookkeeping its
//! next due time is computed from. Each step commits before the next external effect, so a
//! rotation interrupted anywhere resumes from its last committed step.

use super::{KeyVersion, NewKey, StoreResult};
use crate::model::UnixTime;
use async_trait::async_trait;

/// Where a rotation is. Each step is durable before the next external effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Recorded before any call to the provider.
    Planned,
    /// The new key is stored as `pending`.
    Issued,
    /// The new key answered a check as valid.
    Verified,
    /// Every delivery target holds the new key.
    Delivered,
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

/// A rotation's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub id: String,
    pub credential: String,
    pub step: RotationStep,
    pub new_version_id: Option<i64>,
    pub started_at: UnixTime,
    /// Last time a step was committed: a rotation in flight that has not moved for long
    /// was abandoned by a process that died (see `rotation::STALE_ROTATION`).
    pub updated_at: UnixTime,
    pub error: Option<String>,
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
    /// `updated_at` of the rotation in flight, if any.
    pub in_flight_since: Option<UnixTime>,
    /// Earliest `stage_changed_at` of previous keys that still hold their secret.
    pub oldest_previous: Option<UnixTime>,
    /// Earliest `stage_changed_at` of discarded (failed) keys that still hold their secret.
    pub oldest_discarded: Option<UnixTime>,
}

#[async_trait]
pub trait RotationStore: Send + Sync {
    /// Records a new rotation before anything is asked of the provider. Fails with
    /// [`StoreError::RotationInFlight`](super::StoreError::RotationInFlight) while another rotation of the credential is in
    /// flight.
    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<Rotation>;

    /// Unfinished rotations (to resume at start-up).
    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>>;

    /// Stores the key the provider issued as `pending`, bound to the rotation (step → issued).
    async fn record_issued(
        &self,
        rotation_id: &str,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// Binds an operator-imported pending version to the rotation (step → issued).
    async fn adopt_pending(
        &self,
        rotation_id: &str,
        version_id: i64,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Moves a rotation to `verified` or `delivered`, with an event.
    async fn advance_rotation(
        &self,
        rotation_id: &str,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// In one transaction: current → previous, pending → current, rotation done, failures
    /// reset, next rotation set.
    async fn promote(
        &self,
        rotation_id: &str,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Winds up a failed rotation; the current key is untouched.
    async fn fail_rotation(
        &self,
        rotation_id: &str,
        failure: &RotationFailure,
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
