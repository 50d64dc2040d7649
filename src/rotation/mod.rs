//! Rotation: the persisted state machine plan → issue → verify → deliver → promote, and
//! revocation of the previous key once its grace period is over.
//!
//! Every step is committed to the store before the next external effect, so a crash at any
//! point resumes from the last committed step (the daemon's [`schedule`] resumes it at start-up). Issued keys carry the
//! rotation id in their provider-side name; a key issued just before a crash (and so never
//! stored) is found by that name and deleted before a new one is issued. The old key is never
//! revoked before the new one is verified and delivered, and any failure leaves it current.

pub mod policy;
pub mod schedule;

pub use policy::Policy;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{self, Delivery, Target};
use crate::model::{fingerprint, CheckStatus, Stage, UnixTime};
use crate::providers::{
    self, CurrentKey, Issuer, Provider, ProviderAdapters, ProviderTelemetry, Revoker,
};
use crate::store::{
    EventKind, KeyVersion, NewKey, Rotation, RotationFailure, RotationStep, Store, StoreError,
};
use secrecy::SecretString;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Attempts at verifying a new key before giving up on it: providers may take a moment to
/// accept a key they have just issued.
const VERIFY_ATTEMPTS: u32 = 3;
const VERIFY_SPACING: Duration = Duration::from_secs(1);
/// A rotation in flight whose row has not moved for this long was abandoned by a process
/// that died (a `keyrotd key rotate` killed while the daemon runs): the daemon takes it over.
/// Far longer than any step takes (issue and verify are a few provider timeouts, delivery
/// the targets' timeouts), so a live rotation in another process is never taken over.
pub const STALE_ROTATION: Duration = Duration::from_secs(30 * 60);
/// Longest sleep of a credential's scheduling loop: it re-reads the store at least this often.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// Everything needed to rotate one credential, built from the config.
pub struct CredentialRuntime {
    pub name: Arc<str>,
    /// One allocation per provider, shared by its credentials.
    pub provider_name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub issuer: Option<Arc<dyn Issuer>>,
    /// Deactivates keys known only by value (imported keys: Anthropic Admin API, Azure).
    pub revoker: Option<Arc<dyn Revoker>>,
    pub targets: Vec<Arc<dyn Target>>,
    pub policy: Policy,
    pub retry: Backoff,
}

/// Builds the runtime of every credential; fails on the first provider or target that
/// cannot be built (the config validated their shape already).
pub fn build_runtimes(
    config: &Config,
    telemetry: &ProviderTelemetry,
) -> anyhow::Result<HashMap<String, Arc<CredentialRuntime>>> {
    runtimes_from(config, &providers::build_all(config, telemetry)?)
}

/// Builds the runtime of every credential on provider adapters already built (the daemon
/// shares them with its checks); fails on the first delivery target that cannot be built.
pub fn runtimes_from(
    config: &Config,
    providers: &HashMap<String, ProviderAdapters>,
) -> anyhow::Result<HashMap<String, Arc<CredentialRuntime>>> {
    let mut runtimes = HashMap::new();
    for credential in &config.credentials {
        let Some(adapters) = providers.get(credential.provider()) else {
            continue;
        };
        let targets = credential
            .deliver
            .iter()
            .map(|target| delivery::build(target).map(Arc::from))
            .collect::<Result<Vec<Arc<dyn Target>>, _>>()?;
        runtimes.insert(
            credential.name().to_string(),
            Arc::new(CredentialRuntime {
                name: Arc::from(credential.name()),
                provider_name: adapters.name.clone(),
                provider: adapters.checker.clone(),
                issuer: adapters.issuer.clone(),
                revoker: adapters.revoker.clone(),
                targets,
                policy: Policy::from_config(credential),
                retry: credential.rotation.retry_backoff(),
            }),
        );
    }
    Ok(runtimes)
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("a rotation of {0} is already in flight")]
    InFlight(String),
    #[error("{0}: the provider has no key-issuing API; import the new key with `keyrotd key import {0}` (stdin) and it will be verified, delivered and promoted")]
    NoIssuer(String),
    #[error("rotation of {credential} failed at {step}: {reason}; the previous key stays current")]
    Failed {
        credential: String,
        step: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a completed rotation produced.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub rotation_id: String,
    pub version_id: i64,
    pub fingerprint: String,
}

/// A step's failure: `rejected` means the new key itself is bad and must not be retried.
struct StepError {
    step: &'static str,
    reason: String,
    rejected: bool,
}

impl StepError {
    fn transient(step: &'static str, reason: impl Into<String>) -> Self {
        StepError {
            step,
            reason: reason.into(),
            rejected: false,
        }
    }
    fn rejected(step: &'static str, reason: impl Into<String>) -> Self {
        StepError {
            step,
            reason: reason.into(),
            rejected: true,
        }
    }
}

/// The provider-side name of a key issued by a rotation; recovery lists keys by it.
pub fn issued_key_name(credential: &str, rotation_id: &str) -> String {
    format!("keyrotd/{credential}/{rotation_id}")
}

/// Drives rotations. One per process; holds a lock per credential so that two rotations of
/// one credential never run at once (the store's in-flight index guards across processes).
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            store,
            clock,
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn lock_for(&self, credential: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(credential.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Rotates now: issues (or adopts an imported pending key), verifies, delivers, promotes.
    pub async fn rotate(
        &self,
        rt: &CredentialRuntime,
        actor: &str,
    ) -> Result<Rotated, RotationError> {
        let lock = self.lock_for(&rt.name);
        let _guard = lock.lock().await;
        let imported = self.imported_pending(&rt.name).await?;
        if rt.issuer.is_none() && imported.is_none() {
            return Err(RotationError::NoIssuer(rt.name.to_string()));
        }
        let rotation_id = new_rotation_id();
        let rotation = match self
            .store
            .plan_rotation(&rt.name, &rotation_id, actor, self.clock.now())
            .await
        {
            Ok(rotation) => rotation,
            Err(StoreError::RotationInFlight { .. }) => {
                return Err(RotationError::InFlight(rt.name.to_string()))
            }
            Err(other) => return Err(other.into()),
        };
        tracing::info!(credential = %rt.name, rotation = %rotation.id, actor, "rotation planned");
        self.drive(rt, rotation).await
    }

    /// Resumes the credential's rotation left in flight by a previous run, if any.
    pub async fn resume(&self, rt: &CredentialRuntime) -> Result<(), RotationError> {
        let in_flight = self
            .store
            .rotations_in_flight()
            .await?
            .into_iter()
            .find(|r| *r.credential == *rt.name);
        let Some(rotation) = in_flight else {
            return Ok(());
        };
        let lock = self.lock_for(&rt.name);
        let _guard = lock.lock().await;
        tracing::info!(credential = %rt.name, rotation = %rotation.id, step = rotation.step.as_str(), "resuming rotation");
        match self.drive(rt, rotation).await {
            Ok(done) => {
                tracing::info!(credential = %rt.name, fingerprint = %done.fingerprint, "resumed rotation completed");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// A pending key imported by an operator, not yet taken into a rotation.
    async fn imported_pending(&self, credential: &str) -> Result<Option<KeyVersion>, StoreError> {
        Ok(self
            .store
            .versions(credential)
            .await?
            .into_iter()
            .find(|v| v.stage == Stage::Pending && v.rotation_id.is_none() && v.has_secret))
    }

    async fn drive(
        &self,
        rt: &CredentialRuntime,
        mut rotation: Rotation,
    ) -> Result<Rotated, RotationError> {
        loop {
            let result = match rotation.step {
                RotationStep::Planned => self.issue(rt, &rotation).await.map(|version| {
                    rotation.new_version_id = Some(version);
                    RotationStep::Issued
                }),
                RotationStep::Issued => self
                    .verify(rt, &rotation)
                    .await
                    .map(|_| RotationStep::Verified),
                RotationStep::Verified => self
                    .deliver(rt, &rotation)
                    .await
                    .map(|_| RotationStep::Delivered),
                RotationStep::Delivered => {
                    // A promotion the store refuses for good (the new key is no longer
                    // pending, e.g. an operator revoked it mid-rotation) used to return
                    // without finishing the rotation: it stayed in flight and blocked
                    // every later rotation. Wind it up like any other failed step.
                    return match self.promote(rt, &rotation).await {
                        Err(RotationError::Store(
                            refused @ (StoreError::RotationNotInStep { .. }
                            | StoreError::RotationWithoutKey { .. }
                            | StoreError::NoLongerPending { .. }),
                        )) => Err(self
                            .fail(
                                rt,
                                &rotation,
                                StepError::transient("promote", refused.to_string()),
                            )
                            .await),
                        other => other,
                    };
                }
                RotationStep::Done | RotationStep::Failed => {
                    return Err(RotationError::Refused(format!(
                        "rotation {} is finished",
                        rotation.id
                    )))
                }
            };
            match result {
                Ok(step) => rotation.step = step,
                Err(error) => return Err(self.fail(rt, &rotation, error).await),
            }
        }
    }

    async fn issue(&self, rt: &CredentialRuntime, rotation: &Rotation) -> Result<i64, StepError> {
        let now = self.clock.now();
        if let Some(version) = self
            .imported_pending(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?
        {
            self.store
                .adopt_pending(&rotation.id, version.id, now)
                .await
                .map_err(|e| StepError::transient("issue", e.to_string()))?;
            return Ok(version.id);
        }
        let issuer = rt
            .issuer
            .as_ref()
            .ok_or_else(|| StepError::transient("issue", "no issuing API and no imported key"))?;
        let name = issued_key_name(&rt.name, &rotation.id);
        self.delete_orphans(rt, issuer.as_ref()).await?;
        // The key in use, for providers whose new key depends on it (Azure's other slot).
        let current = self
            .store
            .versions(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?
            .into_iter()
            .find(|v| v.stage == Stage::Current);
        let current_secret = match &current {
            Some(v) if v.provider_key_id.is_none() && v.has_secret => {
                self.store.secret(v.id).await.ok()
            }
            _ => None,
        };
        let current = current.as_ref().map(|v| CurrentKey {
            remote_id: v.provider_key_id.as_deref(),
            secret: current_secret.as_ref(),
        });
        let issued = issuer.issue_after(&name, current).await.map_err(|e| {
            if e.is_transient() {
                StepError::transient("issue", e.to_string())
            } else {
                StepError::rejected("issue", e.to_string())
            }
        })?;
        let remote_id = issued.remote_id.clone();
        let stored = self
            .store
            .record_issued(
                &rotation.id,
                NewKey {
                    secret: issued.secret,
                    expires_at: issued.expires_at,
                    provider_key_id: Some(remote_id.clone()),
                    rotation_id: Some(rotation.id.clone()),
                },
                self.clock.now(),
            )
            .await;
        match stored {
            Ok(version) => {
                tracing::info!(credential = %rt.name, fingerprint = %version.fingerprint, remote_id = %remote_id, "new key issued");
                Ok(version.id)
            }
            Err(error) => {
                // The provider holds a key we could not store: delete it now rather than
                // leave an orphan (recovery would find it by name otherwise).
                if let Err(revoke) = issuer.revoke(&remote_id).await {
                    tracing::error!(credential = %rt.name, %remote_id, error = %revoke, "could not delete a key that failed to store; recovery will retry by name");
                }
                Err(StepError::transient(
                    "issue",
                    format!("storing the issued key failed: {error}"),
                ))
            }
        }
    }

    /// Keys issued under this credential's rotation names that the store does not hold
    /// (issued just before a crash, or created by a provider whose answer never arrived)
    /// have a lost secret: delete them before issuing another.
    ///
    /// The sweep covers every `keyrotd/<credential>/<rotation id>` key, not only this
    /// rotation's name: a rotation that failed at issue (the provider created the key but
    /// the answer timed out) is finished, and no later rotation would ever look for its name
    /// again, so the key stayed live at the provider forever. Only called with this
    /// credential's rotation in flight (the store allows one), so no other rotation of it
    /// can be issuing concurrently. A key is known, and kept, when its provider id or its
    /// rotation name belongs to a pending, current or previous version.
    async fn delete_orphans(
        &self,
        rt: &CredentialRuntime,
        issuer: &dyn Issuer,
    ) -> Result<(), StepError> {
        let prefix = format!("keyrotd/{}/", rt.name);
        let listed = match issuer.list(&prefix).await {
            Ok(listed) => listed,
            Err(providers::ProviderError::Unsupported { .. }) => return Ok(()),
            Err(error) => {
                return Err(StepError::transient(
                    "issue",
                    format!("listing keys for orphans failed: {error}"),
                ))
            }
        };
        let versions = self
            .store
            .versions(&rt.name)
            .await
            .map_err(|e| StepError::transient("issue", e.to_string()))?;
        let live: Vec<&KeyVersion> = versions
            .iter()
            .filter(|v| matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous))
            .collect();
        let known = |remote_id: &str, name: &str| {
            live.iter().any(|v| {
                v.provider_key_id.as_deref() == Some(remote_id)
                    || v.provider_key_id.as_deref() == Some(name)
                    || v.rotation_id
                        .as_deref()
                        .is_some_and(|r| issued_key_name(&rt.name, r) == name)
            })
        };
        for orphan in listed.into_iter().filter(|k| {
            // `keyrotd/app/<id>` only: not `keyrotd/app/x/<id>` of a credential "app/x".
            k.name
                .strip_prefix(&prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                && !known(&k.remote_id, &k.name)
        }) {
            let name = &orphan.name;
            issuer.revoke(&orphan.remote_id).await.map_err(|e| {
                StepError::transient(
                    "issue",
                    format!("deleting orphan {}: {e}", orphan.remote_id),
                )
            })?;
            tracing::warn!(credential = %rt.name, remote_id = %orphan.remote_id, "deleted an orphaned key from an interrupted rotation");
            let _ = self
                .store
                .append_event(
                    Some(&rt.name),
                    None,
                    EventKind::OrphanDeleted,
                    "recovery",
                    &format!(
                        "provider key {} ({name}) was issued but never stored",
                        orphan.remote_id
                    ),
                    self.clock.now(),
                )
                .await;
        }
        Ok(())
    }

    async fn new_secret(
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

    async fn verify(&self, rt: &CredentialRuntime, rotation: &Rotation) -> Result<(), StepError> {
        let (_, secret) = self.new_secret(rotation, "verify").await?;
        let mut last = None;
        for attempt in 0..VERIFY_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(VERIFY_SPACING * attempt).await;
            }
            let report = rt.provider.check(&secret).await;
            if report.status == CheckStatus::Valid {
                self.store
                    .advance_rotation(
                        &rotation.id,
                        RotationStep::Verified,
                        &format!("new key valid: {}", report.detail),
                        self.clock.now(),
                    )
                    .await
                    .map_err(|e| StepError::transient("verify", e.to_string()))?;
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

    async fn deliver(&self, rt: &CredentialRuntime, rotation: &Rotation) -> Result<(), StepError> {
        let (version, secret) = self.new_secret(rotation, "deliver").await?;
        let fp = fingerprint(&secret);
        if let Err(error) = deliver_to_all(rt, version, &fp, &secret).await {
            self.restore_current(rt).await;
            return Err(StepError::transient("deliver", error.to_string()));
        }
        let described: Vec<String> = rt.targets.iter().map(|t| t.describe()).collect();
        self.store
            .advance_rotation(
                &rotation.id,
                RotationStep::Delivered,
                &if described.is_empty() {
                    "no delivery targets".to_string()
                } else {
                    format!("delivered to {}", described.join(", "))
                },
                self.clock.now(),
            )
            .await
            .map_err(|e| StepError::transient("deliver", e.to_string()))
    }

    /// Delivers the current key to every target (the first key of a credential, which
    /// becomes current without a rotation). Stops at the first failing target.
    pub async fn deliver_current(&self, rt: &CredentialRuntime) -> Result<usize, RotationError> {
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

    /// After a failed delivery some targets may hold the new key, which is about to be
    /// discarded: put the current key back everywhere so every consumer holds a working key.
    async fn restore_current(&self, rt: &CredentialRuntime) {
        let current = match self.store.versions(&rt.name).await {
            Ok(versions) => versions.into_iter().find(|v| v.stage == Stage::Current),
            Err(error) => {
                tracing::error!(credential = %rt.name, %error, "cannot read the current key to restore it");
                return;
            }
        };
        let Some(current) = current else { return };
        let Ok(secret) = self.store.secret(current.id).await else {
            return;
        };
        let delivery = Delivery {
            credential: &rt.name,
            key: &secret,
            fingerprint: &current.fingerprint,
            version_id: current.id,
        };
        for target in &rt.targets {
            if let Err(error) = target.deliver(&delivery).await {
                tracing::error!(credential = %rt.name, target = %target.describe(), %error, "could not restore the current key");
            }
        }
    }

    async fn promote(
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

    async fn fail(
        &self,
        rt: &CredentialRuntime,
        rotation: &Rotation,
        error: StepError,
    ) -> RotationError {
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
        // `retry_backoff` of 1s draws 0.5..1s) gave `retry_at == now`, an immediate retry.
        let delay = rt
            .retry
            .delay(failures.clamp(0, 30) as u32, &mut rand::thread_rng());
        let retry_at = now + (delay.as_secs_f64().ceil() as i64).max(1);
        // A key we issued is discarded on any failure (the retry issues a fresh one); an
        // operator's key is kept for a retry unless the provider refused it.
        let ours = rt.issuer.is_some() && rotation.step == RotationStep::Planned
            || self.version_is_ours(rotation).await;
        let discard = error.rejected || ours;
        let failure = RotationFailure {
            error: format!("{}: {}", error.step, error.reason),
            discard_pending: discard,
            retry_at: Some(retry_at),
        };
        // An issue that failed after the provider created the key (a timeout, a lost
        // answer) leaves a key under this rotation's name that nothing else will look for
        // until the next rotation: sweep now, best effort (the next issue sweeps again),
        // while the rotation is still in flight so no other rotation of it can be issuing.
        if rotation.step == RotationStep::Planned && error.step == "issue" {
            if let Some(issuer) = &rt.issuer {
                if let Err(sweep) = self.delete_orphans(rt, issuer.as_ref()).await {
                    tracing::warn!(credential = %rt.name, reason = %sweep.reason, "could not sweep orphaned keys yet; the next rotation retries");
                }
            }
        }
        if let Err(store_error) = self.store.fail_rotation(&rotation.id, &failure, now).await {
            tracing::error!(credential = %rt.name, error = %store_error, "could not record the failed rotation");
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

    /// One scheduling pass for a credential: record the next due time, rotate when due (or
    /// when an imported key waits), revoke what is due. Returns when to look again.
    pub async fn tick(&self, rt: &CredentialRuntime) -> Result<UnixTime, RotationError> {
        let now = self.clock.now();
        let Some(credential) = self.store.credential(&rt.name).await? else {
            return Ok(now + MAX_SLEEP.as_secs() as i64);
        };
        // The daemon resumes its own rotations at start-up only. One left in flight by
        // another process that died (a killed `key rotate`) blocked every later rotation
        // of the credential, silently (each attempt answered "in flight" and was ignored),
        // until the daemon restarted: take it over once it is clearly abandoned.
        if let Some(stale) = self
            .store
            .rotations_in_flight()
            .await?
            .into_iter()
            .find(|r| *r.credential == *rt.name)
        {
            let idle = now - stale.updated_at;
            if idle >= STALE_ROTATION.as_secs() as i64 {
                tracing::warn!(credential = %rt.name, rotation = %stale.id, idle_seconds = idle, "taking over a rotation abandoned in flight");
                if let Err(error) = self.resume(rt).await {
                    tracing::warn!(credential = %rt.name, %error, "abandoned rotation did not complete");
                }
                return Ok(self.clock.now());
            }
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
        if next_due != credential.next_rotation_at {
            self.store.set_next_rotation(&rt.name, next_due).await?;
        }
        let due = next_due.is_some_and(|at| at <= now);
        // An imported key kept after a failed attempt waits for the backoff like any retry
        // (it used to be retried on every pass, once a second).
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
}

/// Hands one key version to every target of the credential, in order, stopping at the
/// first failure (the caller decides how to undo). Restoring after a failure is the one
/// place that goes on past a failing target, see `Engine::restore_current`.
async fn deliver_to_all(
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

fn new_rotation_id() -> String {
    // Sortable by time, unique, short enough for provider-side key names.
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        &id[..8]
    )
}
