//! The promote step: the delivered key becomes current, the old one previous (revoked once
//! its grace period is over), and the next rotation is scheduled. A rollback ends with the
//! swap instead: the previous key it delivered is current again.

use super::{CredentialRuntime, Engine, Rotated, RotationError};
use crate::store::{Lease, Rotation, StoreError};

impl Engine {
    pub(super) async fn promote(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
    ) -> Result<Rotated, RotationError> {
        let now = self.clock.now();
        let version = rotation
            .new_version_id
            .ok_or_else(|| RotationError::Refused("rotation has no new key".into()))?;
        let new = self
            .store
            .versions(&rt.name)
            .await?
            .into_iter()
            .find(|v| v.id == version)
            .ok_or(StoreError::UnknownVersion(version))?;
        let next = rt.policy.next_due(now, new.expires_at, Some(now));
        self.store.promote(lease, next, now).await?;
        tracing::info!(credential = %rt.name, fingerprint = %new.fingerprint, "rotation complete; new key is current");
        Ok(Rotated {
            rotation_id: rotation.id.clone(),
            version_id: version,
            fingerprint: new.fingerprint,
            taken_over_from: None,
        })
    }

    pub(super) async fn finish_rollback(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
    ) -> Result<Rotated, RotationError> {
        let hold_off = rt.policy.grace.as_secs() as i64;
        let restored = self
            .store
            .finish_rollback(lease, "rotation", hold_off, self.clock.now())
            .await?;
        tracing::info!(credential = %rt.name, fingerprint = %restored.fingerprint, "rollback complete; the previous key is current again");
        Ok(Rotated {
            rotation_id: rotation.id.clone(),
            version_id: restored.id,
            fingerprint: restored.fingerprint,
            taken_over_from: None,
        })
    }
}
