//! The deliver step: the new key handed to every consumer of the credential, and the
//! delivery of a credential's first key, which becomes current without a rotation.

use super::{CredentialRuntime, Engine, RotationError, StepError};
use crate::delivery::{self, Delivery};
use crate::model::{fingerprint, Stage};
use crate::store::{EventKind, Lease, Rotation, RotationStep};
use secrecy::SecretString;

impl Engine {
    pub(super) async fn deliver(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
    ) -> Result<(), StepError> {
        let (version, secret) = self.new_secret(rotation, "deliver").await?;
        let fp = fingerprint(&secret);
        self.renew(lease, "deliver").await?;
        if let Err(error) = deliver_to_all(rt, version, &fp, &secret).await {
            // Winding up (`fail`) puts the current key back on every target.
            return Err(StepError::transient("deliver", error.to_string()));
        }
        let described: Vec<String> = rt.targets.iter().map(|t| t.describe()).collect();
        self.store
            .advance_rotation(
                lease,
                RotationStep::Verified,
                RotationStep::Delivered,
                &if described.is_empty() {
                    "no delivery targets".to_string()
                } else {
                    format!("delivered to {}", described.join(", "))
                },
                self.clock.now(),
            )
            .await
            .map_err(|e| StepError::store("deliver", e))
    }

    /// Delivers the current key to every target (the first key of a credential, which
    /// becomes current without a rotation). Stops at the first failing target.
    pub(crate) async fn deliver_current(
        &self,
        rt: &CredentialRuntime,
    ) -> Result<usize, RotationError> {
        if rt.targets.is_empty() {
            return Ok(0);
        }
        let current = self
            .store
            .versions(&rt.name)
            .await?
            .into_iter()
            .find(|v| v.stage == Stage::Current)
            .ok_or_else(|| RotationError::Refused(format!("{} has no current key", rt.name)))?;
        let secret = self.store.secret(current.id).await?;
        deliver_to_all(rt, current.id, &current.fingerprint, &secret)
            .await
            .map_err(|error| RotationError::Failed {
                credential: rt.name.to_string(),
                step: "deliver",
                reason: error.to_string(),
            })?;
        let _ = self
            .store
            .append_event(
                Some(&rt.name),
                Some(current.id),
                EventKind::Delivered,
                "cli",
                &format!(
                    "{} delivered to {} targets",
                    current.fingerprint,
                    rt.targets.len()
                ),
                self.clock.now(),
            )
            .await;
        Ok(rt.targets.len())
    }
}

/// Hands one key version to every target of the credential, in order, stopping at the
/// first failure (the caller decides how to undo). Restoring after a failure is the one
/// place that goes on past a failing target, see `Engine::restore_current`.
pub(super) async fn deliver_to_all(
    rt: &CredentialRuntime,
    version_id: i64,
    fingerprint: &str,
    secret: &SecretString,
) -> Result<(), delivery::DeliveryError> {
    let delivery = Delivery {
        credential: &rt.name,
        key: secret,
        fingerprint,
        version_id,
    };
    for target in &rt.targets {
        target.deliver(&delivery).await?;
    }
    Ok(())
}
