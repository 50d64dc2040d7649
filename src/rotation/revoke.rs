//! Revocation: a key leaves the provider once it is no longer needed (a previous key after
//! its grace period, a key a failed rotation discarded, or on an operator's word).

use super::{CredentialRuntime, Engine, RotationError};
use crate::model::{Stage, UnixTime};
use crate::store::{KeyVersion, StoreError};

impl Engine {
    /// Revokes a version at the provider and drops its secret: by value through the revoker
    /// when there is one (it checks the value is still live: Anthropic by key hint, Azure by
    /// slot), else by provider key id through an issuer that can revoke, else only retires
    /// it locally (a `retired_locally` event: the key is still live at the provider). A
    /// provider failure leaves the version as it is, to be retried, and is recorded as a
    /// `revocation_failed` event. The current key is never revoked here.
    pub async fn revoke_version(
        &self,
        rt: &CredentialRuntime,
        version: &KeyVersion,
        actor: &str,
        why: &str,
    ) -> Result<(), RotationError> {
        self.try_revoke(rt, version, actor, why)
            .await
            .map_err(|(error, _)| error)
    }

    /// [`Engine::revoke_version`], answering with a failure the number of failed attempts
    /// so far (0 for a refusal or a store error), which the retry backs off by. A provider
    /// failure is recorded: an event with the reason, the failure counter, the version's
    /// failure count.
    async fn try_revoke(
        &self,
        rt: &CredentialRuntime,
        version: &KeyVersion,
        actor: &str,
        why: &str,
    ) -> Result<(), (RotationError, u32)> {
        if version.stage == Stage::Current {
            return Err((
                RotationError::Refused(format!(
                    "version {} is the current key of {}; rotate or roll back first",
                    version.id, rt.name
                )),
                0,
            ));
        }
        if version.stage == Stage::Revoked {
            return Ok(());
        }
        let store_failed = |e: StoreError| (RotationError::from(e), 0);
        // Checked before the provider is asked (the store refuses again when recording):
        // a key a rotation in flight is delivering, or a rollback is putting back, may be
        // what consumers hold next.
        if let Some(rotation) = self
            .store
            .rotations_in_flight()
            .await
            .map_err(store_failed)?
            .into_iter()
            .find(|r| r.new_version_id == Some(version.id))
        {
            return Err(store_failed(StoreError::VersionInFlight {
                version: version.id,
                rotation: rotation.id,
            }));
        }
        // A key the provider refused at import may not be ours to kill: only retire it.
        let by_value = rt.revoker.as_ref().filter(|_| {
            version.has_secret
                && !(version.stage == Stage::Failed && version.provider_key_id.is_none())
        });
        let by_id = rt.issuer.as_ref().filter(|issuer| issuer.can_revoke());
        let outcome = match (by_value, by_id, &version.provider_key_id) {
            (Some(revoker), _, remote) => {
                let secret = self.store.secret(version.id).await.map_err(store_failed)?;
                revoker
                    .deactivate(&secret, remote.as_deref())
                    .await
                    .map(|()| {
                        format!(
                            "{} deactivated at the provider ({why})",
                            version.fingerprint
                        )
                    })
            }
            (None, Some(issuer), Some(remote)) => issuer
                .revoke(remote)
                .await
                .map(|()| format!("{} revoked at the provider ({why})", version.fingerprint)),
            _ => {
                // Nothing here can revoke it: drop the secret so it is not kept forever, and
                // say loudly that the key itself still works at the provider.
                let detail = format!(
                    "{} retired locally ({why}): provider {} has no revocation API here, so the key is still live there; deactivate it at the provider",
                    version.fingerprint, rt.provider_name
                );
                self.store
                    .mark_retired(version.id, actor, &detail, self.clock.now())
                    .await
                    .map_err(store_failed)?;
                tracing::warn!(credential = %rt.name, fingerprint = %version.fingerprint, "key retired locally; it is still live at the provider");
                return Ok(());
            }
        };
        match outcome {
            Ok(detail) => {
                self.store
                    .mark_revoked(version.id, actor, &detail, self.clock.now())
                    .await
                    .map_err(store_failed)?;
                tracing::info!(credential = %rt.name, fingerprint = %version.fingerprint, "key revoked");
                Ok(())
            }
            Err(error) => {
                let reason = error.to_string();
                let detail = format!(
                    "revoking {} failed ({why}): {reason}; it stays live and is retried",
                    version.fingerprint
                );
                let failures = self
                    .store
                    .record_revocation_failure(version.id, actor, &detail, self.clock.now())
                    .await
                    .map_err(store_failed)?;
                Err((
                    RotationError::Failed {
                        credential: rt.name.to_string(),
                        step: "revoke",
                        reason,
                    },
                    failures,
                ))
            }
        }
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
                if let Err((error, failures)) = self.try_revoke(rt, &version, "rotation", why).await
                {
                    // The credential's retry backoff, by this key's failed attempts: a
                    // provider that keeps refusing is asked less and less often, up to the cap.
                    let wait = rt
                        .retry
                        .delay(failures.saturating_sub(1), &mut rand::thread_rng());
                    let retry_at = now + (wait.as_secs() as i64).max(1);
                    tracing::warn!(credential = %rt.name, %error, failures, retry_in_seconds = retry_at - now, "revocation failed; will retry");
                    next = Some(next.map_or(retry_at, |n| n.min(retry_at)));
                }
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        Ok(next)
    }
}
