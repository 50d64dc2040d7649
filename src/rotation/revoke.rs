//! Revocation: a key leaves the provider once it is no longer needed (a previous key after
//! its grace period, a key a failed rotation discarded, or on an operator's word).

use super::{CredentialRuntime, Engine, RotationError};
use crate::model::{Stage, UnixTime};
use crate::providers;
use crate::store::{KeyVersion, StoreError};

impl Engine {
    /// Revokes a version at the provider and drops its secret: by value through the revoker
    /// when there is one (it checks the value is still live: Anthropic by key hint, Azure by
    /// slot), else by provider key id through the issuer, else only retires it locally. A
    /// provider failure leaves the version as it is, to be retried. The current key is never
    /// revoked here.
    pub async fn revoke_version(
        &self,
        rt: &CredentialRuntime,
        version: &KeyVersion,
        actor: &str,
        why: &str,
    ) -> Result<(), RotationError> {
        if version.stage == Stage::Current {
            return Err(RotationError::Refused(format!(
                "version {} is the current key of {}; rotate or roll back first",
                version.id, rt.name
            )));
        }
        if version.stage == Stage::Revoked {
            return Ok(());
        }
        // Checked before the provider is asked (the store refuses again when recording):
        // a key a rotation in flight is delivering, or a rollback is putting back, may be
        // what consumers hold next.
        if let Some(rotation) = self
            .store
            .rotations_in_flight()
            .await?
            .into_iter()
            .find(|r| r.new_version_id == Some(version.id))
        {
            return Err(RotationError::Store(StoreError::VersionInFlight {
                version: version.id,
                rotation: rotation.id,
            }));
        }
        let failed = |e: providers::ProviderError| RotationError::Failed {
            credential: rt.name.to_string(),
            step: "revoke",
            reason: e.to_string(),
        };
        // A key the provider refused at import may not be ours to kill: only retire it.
        let by_value = rt.revoker.as_ref().filter(|_| {
            version.has_secret
                && !(version.stage == Stage::Failed && version.provider_key_id.is_none())
        });
        let detail = match (by_value, &rt.issuer, &version.provider_key_id) {
            (Some(revoker), _, remote) => {
                let secret = self.store.secret(version.id).await?;
                revoker
                    .deactivate(&secret, remote.as_deref())
                    .await
                    .map_err(failed)?;
                format!(
                    "{} deactivated at the provider ({why})",
                    version.fingerprint
                )
            }
            (None, Some(issuer), Some(remote)) => {
                issuer.revoke(remote).await.map_err(failed)?;
                format!("{} revoked at the provider ({why})", version.fingerprint)
            }
            _ => format!(
                "{} retired ({why}); the provider has no revocation API here, deactivate it there",
                version.fingerprint
            ),
        };
        self.store
            .mark_revoked(version.id, actor, &detail, self.clock.now())
            .await?;
        tracing::info!(credential = %rt.name, fingerprint = %version.fingerprint, "key revoked");
        Ok(())
    }

    /// Revokes previous keys whose grace period is over and discarded keys still live at the
    /// provider. Returns when the next one falls due.
    pub async fn revoke_due(
        &self,
        rt: &CredentialRuntime,
    ) -> Result<Option<UnixTime>, RotationError> {
        let now = self.clock.now();
        let grace = rt.policy.grace.as_secs() as i64;
        let mut next: Option<UnixTime> = None;
        for version in self.store.versions(&rt.name).await? {
            let due = match version.stage {
                Stage::Previous if version.has_secret => version.stage_changed_at + grace,
                Stage::Failed if version.has_secret => version.stage_changed_at,
                _ => continue,
            };
            if due <= now {
                let why = if version.stage == Stage::Previous {
                    "grace period over"
                } else {
                    "discarded key"
                };
                if let Err(error) = self.revoke_version(rt, &version, "rotation", why).await {
                    tracing::warn!(credential = %rt.name, %error, "revocation failed; will retry");
                    next = Some(next.map_or(now + 300, |n| n.min(now + 300)));
                }
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next)
    }
}
