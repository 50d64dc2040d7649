//! The verify step: the new key must answer valid at the provider before anyone is given it.
//! Providers may take a moment to accept a key they have just issued, so it is asked a few
//! times.

use super::{CredentialRuntime, Engine, StepError};
use crate::model::CheckStatus;
use crate::store::{Lease, Rotation, RotationKind, RotationStep};
use secrecy::SecretString;
use std::time::Duration;

/// Attempts at verifying a new key before giving up on it.
const VERIFY_ATTEMPTS: u32 = 3;
const VERIFY_SPACING: Duration = Duration::from_secs(1);

impl Engine {
    pub(super) async fn new_secret(
        &self,
        rotation: &Rotation,
        step: &'static str,
    ) -> Result<(i64, SecretString), StepError> {
        let version = rotation
            .new_version_id
            .ok_or_else(|| StepError::transient(step, "rotation has no new key"))?;
        let secret = self
            .store
            .secret(version)
            .await
            .map_err(|e| StepError::transient(step, e.to_string()))?;
        Ok((version, secret))
    }

    pub(super) async fn verify(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
    ) -> Result<(), StepError> {
        let (_, secret) = self.new_secret(rotation, "verify").await?;
        // A rollback's key has been in use for long: one answer is enough.
        let attempts = match rotation.kind {
            RotationKind::Rotate => VERIFY_ATTEMPTS,
            RotationKind::Rollback => 1,
        };
        let mut last = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(VERIFY_SPACING * attempt).await;
            }
            self.renew(lease, "verify").await?;
            let report = rt.provider.check(&secret).await;
            if report.status == CheckStatus::Valid {
                self.store
                    .advance_rotation(
                        lease,
                        rotation.step,
                        RotationStep::Verified,
                        &format!("new key valid: {}", report.detail),
                        self.clock.now(),
                    )
                    .await
                    .map_err(|e| StepError::store("verify", e))?;
                return Ok(());
            }
            last = Some(report);
        }
        let report = last.expect("at least one attempt");
        let reason = format!("new key answered {}: {}", report.status, report.detail);
        if report.status.is_conclusive() {
            Err(StepError::rejected("verify", reason))
        } else {
            Err(StepError::transient("verify", reason))
        }
    }
}
