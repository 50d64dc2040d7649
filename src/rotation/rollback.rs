//! Rollback: the previous key put back as current while it is inside its grace period, on
//! an operator's word.

use super::deliver::deliver_to_all;
use super::{CredentialRuntime, Engine, RotationError};
use crate::model::{CheckStatus, Stage};
use crate::store::KeyVersion;

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
        let previous = self
            .store
            .versions(&rt.name)
            .await?
            .into_iter()
            .find(|v| v.stage == Stage::Previous && v.has_secret)
            .ok_or_else(|| {
                RotationError::Refused(format!("{} has no previous key to roll back to", rt.name))
            })?;
        if previous.stage_changed_at < not_before {
            return Err(RotationError::Refused(format!(
                "the previous key of {} left its grace period; rollback refused",
                rt.name
            )));
        }
        let secret = self.store.secret(previous.id).await?;
        let report = rt.provider.check(&secret).await;
        if report.status != CheckStatus::Valid {
            return Err(RotationError::Refused(format!(
                "the previous key answered {} ({}); rollback refused",
                report.status, report.detail
            )));
        }
        if let Err(error) = deliver_to_all(rt, previous.id, &previous.fingerprint, &secret).await {
            self.restore_current(rt).await;
            return Err(RotationError::Failed {
                credential: rt.name.to_string(),
                step: "deliver",
                reason: error.to_string(),
            });
        }
        Ok(self
            .store
            .rollback(&rt.name, not_before, actor, now)
            .await?)
    }
}
