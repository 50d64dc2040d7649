//! The verify step: the new key must answer valid at the provider before anyone is given it.
//!
//! A vendor can take a while to accept a key it has just issued (its key store catches up
//! behind the API that created it), so a new key that does not answer valid is asked again,
//! after a pause that doubles from a second up to [`MAX_PAUSE`], until the credential's
//! `verify_timeout` has passed on the engine's clock. Every answer but valid is asked again
//! within that window: "invalid" from a key seconds old may only mean "not active yet", and
//! a failed check says nothing about the key. Once the window is over, the last answer
//! decides: a verdict on the key (invalid, exhausted) rejects it, a check that could not be
//! made is a transient failure. Either way the new key is discarded.

use super::{CredentialRuntime, Engine, StepError};
use crate::model::{CheckStatus, UnixTime};
use crate::providers::CheckReport;
use crate::store::{Lease, Rotation, RotationKind, RotationStep};
use secrecy::SecretString;
use std::time::Duration;

/// The pause before the second check of a new key; it doubles after every further answer.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two checks: a key that turns valid is taken within this.
const MAX_PAUSE: Duration = Duration::from_secs(10);

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
        let window = match rotation.kind {
            RotationKind::Rotate => rt.verify_timeout,
            RotationKind::Rollback => Duration::ZERO,
        };
        let started = self.clock.now();
        let window_seconds = whole_seconds(window);
        let deadline = started.saturating_add(window_seconds);
        // The pauses taken so far also bound the window: a wall clock stepped back during it
        // (NTP) must not keep the rotation asking for as long as the step.
        let mut paused: UnixTime = 0;
        let mut pause = FIRST_PAUSE;
        let mut checks = 0u32;
        loop {
            self.renew(lease, "verify").await?;
            let report = rt.provider.check(&secret).await;
            checks += 1;
            let now = self.clock.now();
            if report.status == CheckStatus::Valid {
                let detail = if checks == 1 {
                    format!("new key valid: {}", report.detail)
                } else {
                    format!(
                        "new key valid at check {checks}, after {}s: {}",
                        now - started,
                        report.detail
                    )
                };
                self.store
                    .advance_rotation(lease, rotation.step, RotationStep::Verified, &detail, now)
                    .await
                    .map_err(|e| StepError::store("verify", e))?;
                return Ok(());
            }
            let left = deadline
                .saturating_sub(now)
                .min(window_seconds.saturating_sub(paused));
            if left <= 0 {
                return Err(verify_failed(&report, checks, now - started));
            }
            let wait = pause.min(Duration::from_secs(left as u64));
            tracing::info!(credential = %rt.name, rotation = %rotation.id, status = %report.status, check = checks, retry_in_seconds = wait.as_secs(), "the new key does not answer valid yet; asking again");
            self.clock.sleep(wait).await;
            paused = paused.saturating_add(whole_seconds(wait));
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// [`crate::clock::whole_seconds`] as a span of the engine's clock.
fn whole_seconds(window: Duration) -> UnixTime {
    UnixTime::try_from(crate::clock::whole_seconds(window)).unwrap_or(UnixTime::MAX)
}

/// The verdict once the window is over, from the last answer.
fn verify_failed(last: &CheckReport, checks: u32, elapsed: i64) -> StepError {
    let reason = if checks == 1 {
        format!("new key answered {}: {}", last.status, last.detail)
    } else {
        format!(
            "new key still answered {} after {checks} checks over {elapsed}s (`verify_timeout`): {}",
            last.status, last.detail
        )
    };
    if last.status.is_conclusive() {
        StepError::rejected("verify", reason)
    } else {
        StepError::transient("verify", reason)
    }
}
