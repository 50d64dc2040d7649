//! One scheduling pass over a credential: what the daemon's pass queue runs for it when it
//! is due. It records the next due time, rotates when due, takes over a rotation another
//! process abandoned, and revokes what is due.

use super::{CredentialRuntime, Engine, RotationError, MAX_SLEEP, STALE_ROTATION};
use crate::model::{Stage, UnixTime};

impl Engine {
    /// One scheduling pass for a credential: record the next due time, rotate when due (or
    /// when an imported key waits), revoke what is due. Returns when to look again.
    pub async fn tick(&self, rt: &CredentialRuntime) -> Result<UnixTime, RotationError> {
        let now = self.clock.now();
        let Some(credential) = self.store.credential(&rt.name).await? else {
            return Ok(now + MAX_SLEEP.as_secs() as i64);
        };
        if self.take_over_abandoned(rt, now).await? {
            return Ok(self.clock.now());
        }
        let versions = self.store.versions(&rt.name).await?;
        let current = versions.iter().find(|v| v.stage == Stage::Current);
        let imported_waiting = versions
            .iter()
            .any(|v| v.stage == Stage::Pending && v.rotation_id.is_none() && v.has_secret);
        let next_due = rt.policy.due(
            current.map(|c| (c.created_at, c.expires_at)),
            credential.last_rotated_at,
            credential.consecutive_failures,
            credential.next_rotation_at,
        );
        if let (Some(key), Some(due)) = (current, next_due) {
            let held_back =
                rt.policy
                    .held_back(key.created_at, key.expires_at, credential.last_rotated_at);
            if credential.consecutive_failures == 0
                && due > now
                && held_back.is_some_and(|at| at <= now)
            {
                tracing::warn!(
                    credential = %rt.name,
                    fingerprint = %key.fingerprint,
                    due_at = due,
                    min_age = %crate::config::format_duration(rt.policy.min_age),
                    "rotation held back by the runaway guard: the key's expiry makes it due already, but it has not been current for min_age; is rotate_before_expiry at least the lifetime of the keys the provider issues?"
                );
            }
        }
        if next_due != credential.next_rotation_at {
            self.store.set_next_rotation(&rt.name, next_due).await?;
        }
        let due = next_due.is_some_and(|at| at <= now);
        // An imported key kept after a failed attempt waits for the backoff like any retry,
        // not retried on every pass.
        let imported = imported_waiting && (credential.consecutive_failures == 0 || due);
        if (due && rt.issuer.is_some()) || imported {
            match self.rotate(rt, "schedule").await {
                Ok(_) => {}
                Err(RotationError::InFlight(_)) => {
                    // Look again in a minute rather than every second: the other
                    // rotation may run for a while (or be abandoned, see above).
                    tracing::warn!(credential = %rt.name, "rotation due, but another rotation is in flight; waiting for it");
                    return Ok(now + 60);
                }
                Err(error) => {
                    tracing::warn!(credential = %rt.name, %error, "scheduled rotation failed")
                }
            }
            // Re-read: the rotation moved next_due.
            return Ok(self.clock.now());
        }
        let next_revocation = self.revoke_due(rt).await?;
        let mut wake = now + MAX_SLEEP.as_secs() as i64;
        // An imported key kept after a failed attempt is retried when the backoff is over.
        if rt.issuer.is_some() || imported_waiting {
            if let Some(at) = next_due {
                wake = wake.min(at);
            }
        }
        if let Some(at) = next_revocation {
            wake = wake.min(at);
        }
        Ok(wake.max(now))
    }

    /// The daemon resumes its own rotations at start-up only. One left in flight by another
    /// process that died (a killed `key rotate`) would block every later rotation of the
    /// credential, silently (each attempt answers "in flight"), until the daemon restarted:
    /// take it over once it is clearly abandoned. Answers whether it did.
    async fn take_over_abandoned(
        &self,
        rt: &CredentialRuntime,
        now: UnixTime,
    ) -> Result<bool, RotationError> {
        let Some(stale) = self
            .store
            .rotations_in_flight()
            .await?
            .into_iter()
            .find(|r| *r.credential == *rt.name)
        else {
            return Ok(false);
        };
        let idle = now - stale.updated_at;
        if idle < STALE_ROTATION.as_secs() as i64 {
            return Ok(false);
        }
        tracing::warn!(credential = %rt.name, rotation = %stale.id, idle_seconds = idle, "taking over a rotation abandoned in flight");
        if let Err(error) = self.resume(rt).await {
            tracing::warn!(credential = %rt.name, %error, "abandoned rotation did not complete");
        }
        Ok(true)
    }
}
