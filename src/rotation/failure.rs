//! A failed step winds the rotation up: the old key stays current and is delivered again
//! wherever the new one may have gone, the new key is discarded (and revoked) unless it is
//! an operator's that may be retried, and the retry waits for the backoff.
//!
//! Restore comes before discard: when a target does not take the current key back, the
//! rotation is not wound up but waits in [`RotationStep::Attention`] with both keys live
//! and nothing revoked; the restore is retried with the retry backoff (the lease ends when
//! the retry is due), one step further after each failed restore (at most 15 minutes
//! apart), until every target confirms, and only then is the new key discarded.

use super::{is_fenced, CredentialRuntime, Engine, RotationError, StepError};
use crate::delivery::Delivery;
use crate::model::Stage;
use crate::store::{Lease, Rotation, RotationFailure, RotationKind, RotationStep};

/// Longest wait between two restores of a rotation in `attention`, whatever
/// `retry_backoff_max` says: a restore is a local write, and an operator who has fixed the
/// target expects the rotation to clear within minutes, not after a six-hour backoff step.
const RESTORE_RETRY_MAX_SECONDS: i64 = 15 * 60;

impl Engine {
    /// After a failed delivery some targets may hold the new key, which is about to be
    /// discarded: put the current key back everywhere so every consumer holds a working key.
    /// Every target must confirm; the error names each one that did not, and why (target
    /// errors never carry key material).
    pub(super) async fn restore_current(&self, rt: &CredentialRuntime) -> Result<(), String> {
        let current = match self.store.versions(&rt.name).await {
            Ok(versions) => versions.into_iter().find(|v| v.stage == Stage::Current),
            Err(error) => return Err(format!("cannot read the current key: {error}")),
        };
        // No current key (a first import that failed): nothing to put back.
        let Some(current) = current else {
            return Ok(());
        };
        let secret = match self.store.secret(current.id).await {
            Ok(secret) => secret,
            Err(error) => return Err(format!("cannot unseal the current key: {error}")),
        };
        let delivery = Delivery {
            credential: &rt.name,
            key: &secret,
            fingerprint: &current.fingerprint,
            version_id: current.id,
        };
        let mut failed = Vec::new();
        for target in &rt.targets {
            if let Err(error) = target.deliver(&delivery).await {
                tracing::error!(credential = %rt.name, target = %target.describe(), %error, "could not restore the current key");
                failed.push(format!("{} ({error})", target.describe()));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    pub(super) async fn fail(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        lease: &Lease,
        error: StepError,
    ) -> RotationError {
        let fenced = || RotationError::Fenced {
            credential: rt.name.to_string(),
            rotation: rotation.id.clone(),
        };
        // Winding up touches targets and the provider: only while still the owner.
        if let Err(renewal) = self.renew(lease, "wind up").await {
            if renewal.fenced {
                return fenced();
            }
        }
        let now = self.clock.now();
        let failures = self
            .store
            .credential(&rt.name)
            .await
            .ok()
            .flatten()
            .map(|c| c.consecutive_failures)
            .unwrap_or(0);
        // Rounded up and at least a second: truncating a sub-second jittered delay (a
        // `retry_backoff` of 1s draws 0.5..1s) would give `retry_at == now`, an immediate
        // retry.
        let backoff = |attempt: i64| {
            let delay = rt
                .retry
                .delay(attempt.clamp(0, 30) as u32, &mut rand::thread_rng());
            (delay.as_secs_f64().ceil() as i64).max(1)
        };
        let attention = rotation.step == RotationStep::Attention;
        // From `verified` on, some targets may hold the new key (a delivery that failed
        // half-way, or succeeded but whose commit did not): put the current key back first,
        // and discard the new key only once every target holds the current one again. A
        // target that did not take it back may hold the new key: revoking that would cut
        // its consumer off, so the rotation waits in `attention` with both keys live.
        if rotation.step >= RotationStep::Verified {
            if let Err(failed) = self.restore_current(rt).await {
                // The credential's failure count moves only when the rotation is wound up,
                // so each failed restore backs off one step further on its own count: at the
                // first step for ever, a target broken for days would have the rotation
                // taken over, restored and logged every `retry_backoff`.
                let retry_in = backoff(failures.saturating_add(rotation.attempts))
                    .min(RESTORE_RETRY_MAX_SECONDS);
                let detail = if attention {
                    format!("current key not restored on: {failed}")
                } else {
                    format!(
                        "{}: {}; current key not restored on: {failed}",
                        error.step, error.reason
                    )
                };
                match self
                    .store
                    .hold_for_attention(lease, &detail, retry_in, now)
                    .await
                {
                    Err(store_error) if is_fenced(&store_error) => return fenced(),
                    // Not recorded: the rotation stays in flight at its step and is
                    // resumed (and restored again) once the lease ends; nothing is revoked.
                    Err(store_error) => {
                        tracing::error!(credential = %rt.name, error = %store_error, "could not record that the rotation needs attention")
                    }
                    Ok(()) => {
                        tracing::error!(credential = %rt.name, rotation = %rotation.id, reason = %detail, retry_in_seconds = retry_in, "rotation needs attention: the current key could not be put back on every target; both keys stay live, nothing is revoked, the restore is retried")
                    }
                }
                return RotationError::NeedsAttention {
                    credential: rt.name.to_string(),
                    rotation: rotation.id.clone(),
                    reason: detail,
                    left: retry_in,
                };
            }
            if attention {
                tracing::info!(credential = %rt.name, rotation = %rotation.id, "every target holds the current key again; winding up the rotation that needed attention");
            }
        }
        let expires_at = self
            .store
            .versions(&rt.name)
            .await
            .ok()
            .and_then(|versions| versions.into_iter().find(|v| v.stage == Stage::Current))
            .and_then(|current| current.expires_at);
        let retry_at =
            rt.policy
                .retry_before_expiry(now, now + backoff(failures), expires_at, rt.retry.base);
        // A key we issued is discarded on any failure (the retry issues a fresh one); an
        // operator's key is kept for a retry unless the provider refused it.
        let ours = rt.issuer.is_some() && rotation.step == RotationStep::Planned
            || self.version_is_ours(rotation).await;
        let rollback = rotation.kind == RotationKind::Rollback;
        // A rollback's key is the previous one: never discarded, and not retried on a
        // schedule (the operator asked once).
        let discard = !rollback && (error.rejected || ours);
        let failure = RotationFailure {
            // Out of `attention` the reason is the stored error of the original failure.
            error: if attention {
                error.reason.clone()
            } else {
                format!("{}: {}", error.step, error.reason)
            },
            discard_pending: discard,
            retry_at: (!rollback).then_some(retry_at),
        };
        // An issue that failed after the provider created the key (a timeout, a lost
        // answer) leaves a key under this rotation's name that nothing else will look for
        // until the next rotation: sweep now, best effort (the next issue sweeps again),
        // while the rotation is still in flight so no other rotation of it can be issuing.
        if !rollback && rotation.step == RotationStep::Planned && error.step == "issue" {
            if let Some(issuer) = &rt.issuer {
                if let Err(sweep) = self.delete_orphans(rt, issuer.as_ref()).await {
                    tracing::warn!(credential = %rt.name, reason = %sweep.reason, "could not sweep orphaned keys yet; the next rotation retries");
                }
            }
        }
        if let Err(store_error) = self.store.fail_rotation(lease, &failure, now).await {
            if is_fenced(&store_error) {
                return fenced();
            }
            // Not recorded as failed: the rotation stays in flight and is resumed, so the
            // new key is not revoked under it.
            tracing::error!(credential = %rt.name, error = %store_error, "could not record the failed rotation");
            return RotationError::Failed {
                credential: rt.name.to_string(),
                step: error.step,
                reason: error.reason,
            };
        }
        tracing::warn!(credential = %rt.name, step = error.step, reason = %error.reason, retry_in_seconds = retry_at - now, "rotation failed; the current key stays");
        if discard {
            if let Some(version) = rotation.new_version_id {
                self.revoke_discarded(rt, version).await;
            }
        }
        RotationError::Failed {
            credential: rt.name.to_string(),
            step: error.step,
            reason: error.reason,
        }
    }

    async fn version_is_ours(&self, rotation: &Rotation) -> bool {
        let Some(version) = rotation.new_version_id else {
            return false;
        };
        self.store
            .versions(&rotation.credential)
            .await
            .map(|versions| {
                versions
                    .iter()
                    .any(|v| v.id == version && v.provider_key_id.is_some())
            })
            .unwrap_or(false)
    }

    async fn revoke_discarded(&self, rt: &CredentialRuntime, version: i64) {
        let Ok(versions) = self.store.versions(&rt.name).await else {
            return;
        };
        if let Some(v) = versions
            .into_iter()
            .find(|v| v.id == version && v.stage == Stage::Failed)
        {
            if let Err(error) = self
                .revoke_version(rt, &v, "rotation", "discarded by a failed rotation")
                .await
            {
                tracing::warn!(credential = %rt.name, %error, "could not revoke a discarded key yet; will retry");
            }
        }
    }
}
