//! The promote step: the delivered key becomes current, the old one previous (revoked once
//! its grace period is over), and the next rotation is scheduled.

use super::{CredentialRuntime, Engine, Rotated, RotationError};
use crate::store::{Rotation, StoreError};

impl Engine {
    pub(super) async fn promote(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
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
        self.store.promote(&rotation.id, next, now).await?;
        tracing::info!(credential = %rt.name, fingerprint = %new.fingerprint, "rotation complete; new key is current");
        Ok(Rotated {
            rotation_id: rotation.id.clone(),
            version_id: version,
            fingerprint: new.fingerprint,
        })
    }
}
