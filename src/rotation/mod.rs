//! Rotation: the persisted state machine plan → issue → verify → deliver → promote, and
//! revocation of the previous key once its grace period is over.
//!
//! Every step is committed to the store before the next external effect, so a crash at any
//! point resumes from the last committed step (the daemon's [`pass_queue`] resumes it at
//! start-up). Issued keys carry the rotation id in their provider-side name; a key issued
//! just before a crash (and so never stored) is found by that name and deleted before a new
//! one is issued. The old key is never revoked before the new one is verified and delivered,
//! and any failure leaves it current.
//!
//! This module holds the [`Engine`] and the loop that drives a rotation from step to step;
//! each step lives in a module of its own ([`issue`], [`verify`], [`deliver`], [`promote`]),
//! as do the winding-up of a failed step ([`failure`]), [`revoke`], [`rollback`] and the
//! daemon's scheduling pass over a credential ([`tick`]).

mod deliver;
mod failure;
mod issue;
mod orphans;
pub mod pass_queue;
pub(crate) mod policy;
mod promote;
mod revoke;
mod rollback;
mod tick;
mod verify;

pub(crate) use policy::Policy;

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::{self, Target};
use crate::model::Stage;
use crate::providers::{self, Issuer, Provider, ProviderAdapters, ProviderTelemetry, Revoker};
use crate::store::{KeyVersion, Rotation, RotationStep, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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

/// The provider-side name of a key issued by a rotation:
/// `keyrotd/<installation>/<credential>/<rotation id>`. The installation id (the store's
/// [`installation_id`](crate::store::InstallationStore::installation_id)) lets the orphan
/// sweep tell this database's keys from another installation's sharing the account, and
/// from keys issued before the database was lost; see `issue.rs`.
pub fn issued_key_name(installation: &str, credential: &str, rotation_id: &str) -> String {
    format!("keyrotd/{installation}/{credential}/{rotation_id}")
}

/// Drives rotations. One per process; holds a lock per credential so that two rotations of
/// one credential never run at once (the store's in-flight index guards across processes).
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Provider keys named like keyrotd's that the orphan sweep could not place.
    unplaced: orphans::UnplacedKeys,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            store,
            clock,
            locks: std::sync::Mutex::new(HashMap::new()),
            unplaced: orphans::UnplacedKeys::default(),
        }
    }

    /// `keyrotd_provider_keys_unplaced{credential}`, for the daemon to register: keys at
    /// the provider named like keyrotd's that the orphan sweep found but cannot place (another
    /// installation's, or issued before this database existed), which it never deletes.
    pub fn unplaced_keys_gauge(&self) -> prometheus::IntGaugeVec {
        self.unplaced.gauge()
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
                    // pending, e.g. an operator revoked it mid-rotation) is wound up like
                    // any other failed step: left in flight, the rotation would block
                    // every later one.
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
