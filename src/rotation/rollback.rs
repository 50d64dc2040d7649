//! Rollback: the previous key put back as current while it is inside its grace period, on
//! an operator's word. A persisted rotation of kind `rollback`: planned (bound to the
//! previous key, which cannot be revoked while it is in flight) → verified (the previous
//! key answers valid) → delivered → done (stages swapped in one compare-and-set), so a crash
//! anywhere resumes or winds it up like any rotation.

use super::{new_rotation_id, CredentialRuntime, Engine, RotationError};
use crate::store::{KeyVersion, StoreError};

impl Engine {
    /// Puts the previous key back as current while it is inside its grace period: checks it
    /// still works, delivers it, then swaps the stages.
    pub async fn rollback(
        &self,
        rt: &CredentialRuntime,
        actor: &str,
    ) -> Result<KeyVersion, RotationError> {
        let lock = self.lock_for(&rt.name);
        let _guard = lock.lock().await;
        let now = self.clock.now();
        let not_before = now - rt.policy.grace.as_secs() as i64;
        let planned = self
            .store
            .plan_rollback(
                &rt.name,
                &new_rotation_id(),
                not_before,
                actor,
                &self.claim,
                now,
            )
            .await;
        let (rotation, lease) = match planned {
            Ok(planned) => planned,
            Err(StoreError::NoPreviousKey { .. }) => {
                return Err(RotationError::Refused(format!(
                    "{} has no previous key to roll back to",
                    rt.name
                )))
            }
            Err(StoreError::PastGracePeriod { .. }) => {
                return Err(RotationError::Refused(format!(
                    "the previous key of {} left its grace period; rollback refused",
                    rt.name
                )))
            }
            Err(StoreError::RotationInFlight { rotation, .. }) => {
                return Err(RotationError::Refused(format!(
                    "rotation {rotation} of {} is in flight; roll back once it has finished",
                    rt.name
                )))
            }
            Err(other) => return Err(other.into()),
        };
        tracing::info!(credential = %rt.name, rotation = %rotation.id, actor, "rollback planned");
        let done = self.drive(rt, rotation, lease).await?;
        self.store
            .versions(&rt.name)
            .await?
            .into_iter()
            .find(|v| v.id == done.version_id)
            .ok_or(StoreError::UnknownVersion(done.version_id).into())
    }
}
