//! One scheduling pass over a credential: what the daemon's pass queue runs for it when it
//! is due. It records the next due time, rotates when due, takes over a rotation whose
//! owner's lease expired (retrying the restore of one that needs attention once its
//! backoff is over), and revokes what is due.

use super::{CredentialRuntime, Engine, RotationError, MAX_SLEEP};
use crate::model::{Stage, UnixTime};

impl Engine {
    /// One scheduling pass for a credential: record the next due time, rotate when due (or
    /// when an imported key waits), revoke what is due. Returns when to look again: at once
    /// after a rotation was taken over and driven to its end (what is due may have changed);
    /// an error when the store failed, a takeover included (the daemon's pass queue then
    /// waits before the next pass rather than trying again at once).
    pub async fn tick(&self, rt: &CredentialRuntime) -> Result<UnixTime, RotationError> {
        let now = self.clock.now();
        let Some(credential) = self.store.credential(&rt.name).await? else {
            return Ok(now + MAX_SLEEP.as_secs() as i64);
        };
        // A rotation in flight under another process's live lease: look again just after
        // the lease would run out (its owner may die), whatever else is due.
        let mut attention = false;
        let taken_over = self.take_over_abandoned(rt).await?;
        // `left` counts from the end of the takeover, which may have run a restore.
        let after = self.clock.now();
        let lease_ends = match taken_over {
            TakeOver::Done => return Ok(after),
            TakeOver::Live { left } => Some(after + left.max(0) + 1),
            TakeOver::Nothing => None,
            // The restore is retried when the lease (the backoff) ends; no rotation can
            // start meanwhile, and what is due for revocation still is revoked.
            TakeOver::Attention { left } => {
                attention = true;
                Some(after + left.max(0) + 1)
            }
        };
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
        if !attention && ((due && rt.issuer.is_some()) || imported) {
            match self.rotate(rt, "schedule").await {
                Ok(_) => {}
                Err(RotationError::InFlight { owner, left, .. }) => {
                    // Look again when its lease would run out (at most a minute): the
                    // other rotation may run for a while, or its owner may die.
                    tracing::warn!(credential = %rt.name, %owner, "rotation due, but another process's rotation is in flight; waiting for it");
                    return Ok(now + left.clamp(1, 60));
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
        if let Some(at) = lease_ends {
            wake = wake.min(at);
        }
        Ok(wake.max(now))
    }

    /// A rotation left in flight by a process that died (a killed `key rotate`, a previous
    /// run) would block every later rotation of the credential: take it over once its
    /// owner's lease has expired. One under a live lease is its owner's. A store error
    /// (the takeover could not be tried or recorded) is the pass's error: answered as
    /// [`TakeOver::Done`], the pass would look again at once, fail the same way, and so
    /// every second for as long as the store does.
    async fn take_over_abandoned(&self, rt: &CredentialRuntime) -> Result<TakeOver, RotationError> {
        let lock = self.lock_for(&rt.name);
        let _guard = lock.lock().await;
        match self.take_over_in_flight(rt).await {
            Ok(None) => Ok(TakeOver::Nothing),
            Err(RotationError::InFlight { left, .. }) => Ok(TakeOver::Live { left }),
            Err(RotationError::NeedsAttention { left, .. }) => Ok(TakeOver::Attention { left }),
            Ok(Some(_)) => Ok(TakeOver::Done),
            Err(error @ RotationError::Store(_)) => Err(error),
            // Driven to a failure (wound up, or fenced by a newer owner): look again now.
            Err(error) => {
                tracing::warn!(credential = %rt.name, %error, "abandoned rotation did not complete");
                Ok(TakeOver::Done)
            }
        }
    }
}

/// What a pass found of a rotation in flight.
enum TakeOver {
    /// None in flight.
    Nothing,
    /// Taken over and driven to its end (or its failure, or until a newer owner fenced it).
    Done,
    /// Another process's lease on it is live for `left` more seconds.
    Live { left: i64 },
    /// It needs attention (a target did not take the current key back): under a live
    /// lease, or taken over and its restore failed again; the restore is retried in `left`
    /// seconds, when the lease (the backoff) ends.
    Attention { left: i64 },
}
