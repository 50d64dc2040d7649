//! Rotation: the persisted state machine plan → issue → verify → deliver → promote, and
//! revocation of the previous key once its grace period is over. A rollback is a rotation
//! of its own kind: plan (bound to the previous key) → verify → deliver → swap.
//!
//! Every step is committed to the store before the next external effect, so a crash at any
//! point resumes from the last committed step (the daemon's [`pass_queue`] resumes it at
//! start-up). Issued keys carry the rotation id in their provider-side name; a key issued
//! just before a crash (and so never stored) is found by that name and deleted before a new
//! one is issued. The old key is never revoked before the new one is verified and delivered,
//! and any failure leaves it current. A failure after delivery may have begun discards the
//! new key only once every target holds the current key again; until then the rotation
//! waits in `attention` with both keys live (see [`failure`]).
//!
//! # Ownership
//!
//! A rotation has one owner at a time: the [`Engine`] that planned it, or the one that took
//! it over after the owner's lease expired (on the database's clock; see
//! [`RotationStore`](crate::store::RotationStore)). The owner renews its lease every third of
//! its length and right before every external effect (a provider call, a delivery); every
//! step is a compare-and-set on the rotation's step and the owner's epoch. An owner that
//! finds itself fenced (taken over while it was paused or cut off) stops at once, with no
//! cleanup: no `fail`, no revocation, no restore, because the new owner is responsible now.
//!
//! The CLI and the daemon share work through that same lease, not through a control
//! socket: `keyrotd key rotate` beside a running daemon plans and drives its rotation
//! itself, and the daemon never resumes it while its lease is live. A lease survives
//! either process being killed at any moment (the other takes over once it expires), needs
//! no daemon for the CLI to work, and is the model several daemons on one PostgreSQL
//! database will need anyway; a socket would add a second protocol and still need the
//! lease for a daemon that dies mid-command.
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
use crate::store::{
    Claim, KeyVersion, LeaderToken, Lease, Rotation, RotationKind, RotationStep, Store, StoreError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an owner's lease on a rotation lasts unless `[daemon] rotation_lease` says.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
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
    /// How long the verify step keeps asking a new key (`verify_timeout`).
    pub verify_timeout: Duration,
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
                verify_timeout: credential.rotation.verify_timeout(),
            }),
        );
    }
    Ok(runtimes)
}

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("a rotation of {credential} is in flight (rotation {rotation}, owned by {owner}, lease until {until_text})", until_text = render_time(*until))]
    InFlight {
        credential: String,
        rotation: String,
        owner: String,
        /// End of the owner's lease, Unix seconds on the database's clock.
        until: i64,
        /// Seconds left on it.
        left: i64,
    },
    #[error("rotation {rotation} of {credential} was taken over by another process while this one was paused or cut off; stopped without touching any provider or target")]
    Fenced {
        credential: String,
        rotation: String,
    },
    #[error("{0}: the provider has no key-issuing API; import the new key with `keyrotd key import {0}` (stdin) and it will be verified, delivered and promoted")]
    NoIssuer(String),
    #[error("rotation of {credential} failed at {step}: {reason}; the previous key stays current")]
    Failed {
        credential: String,
        step: &'static str,
        reason: String,
    },
    #[error("{credential} needs attention: rotation {rotation} could not put the current key back on every delivery target ({reason}); both keys stay live and nothing is revoked until every target holds the current key again. Fix the target; the restore is retried {retry_text} (see \"Rotation needs attention\" in docs/runbook.md)", retry_text = retry_text(*left))]
    NeedsAttention {
        credential: String,
        rotation: String,
        /// Which targets did not take the current key back, and why.
        reason: String,
        /// Seconds until the restore is retried (the lease's end).
        left: i64,
    },
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn retry_text(left: i64) -> String {
    if left > 0 {
        format!("in {left}s")
    } else {
        "at the daemon's next pass, or now by `keyrotd key rotate`".to_string()
    }
}

fn render_time(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| at.to_string())
}

impl RotationError {
    fn from_store(credential: &str, error: StoreError) -> RotationError {
        match error {
            StoreError::LeaseLive {
                rotation,
                owner,
                until,
                left,
            } => RotationError::InFlight {
                credential: credential.to_string(),
                rotation,
                owner,
                until,
                left,
            },
            StoreError::Fenced { rotation, .. } => RotationError::Fenced {
                credential: credential.to_string(),
                rotation,
            },
            other => RotationError::Store(other),
        }
    }
}

/// A store answer that means "not yours any more": stop, touch nothing.
fn is_fenced(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Fenced { .. }
            | StoreError::RotationNotInStep { .. }
            | StoreError::RotationNotInFlight { .. }
    )
}

/// What a completed rotation produced.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub rotation_id: String,
    pub version_id: i64,
    pub fingerprint: String,
    /// The owner whose expired lease this process took the rotation over from, if it did.
    pub taken_over_from: Option<String>,
}

/// A step's failure: `rejected` means the new key itself is bad and must not be retried;
/// `fenced` that the rotation is no longer this process's to drive.
struct StepError {
    step: &'static str,
    reason: String,
    rejected: bool,
    fenced: bool,
}

impl StepError {
    fn transient(step: &'static str, reason: impl Into<String>) -> Self {
        StepError {
            step,
            reason: reason.into(),
            rejected: false,
            fenced: false,
        }
    }
    fn rejected(step: &'static str, reason: impl Into<String>) -> Self {
        StepError {
            step,
            reason: reason.into(),
            rejected: true,
            fenced: false,
        }
    }
    /// A store refusal: fenced when it says the rotation is someone else's now.
    fn store(step: &'static str, error: StoreError) -> Self {
        StepError {
            step,
            fenced: is_fenced(&error),
            reason: error.to_string(),
            rejected: false,
        }
    }
}

/// Renews a lease every third of its length while a rotation is driven (a step such as
/// verify or a slow delivery can outlast a lease); aborted when dropped.
struct Renewal(Option<tokio::task::JoinHandle<()>>);

impl Renewal {
    fn start(store: Arc<dyn Store>, lease: Lease) -> Renewal {
        // Leases shorter than this (tests) are renewed by the steps alone.
        if lease.seconds < 3 {
            return Renewal(None);
        }
        let every = Duration::from_secs((lease.seconds / 3) as u64);
        Renewal(Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                match store.renew_lease(&lease).await {
                    Ok(()) => {}
                    Err(error) if is_fenced(&error) => {
                        tracing::warn!(rotation = %lease.rotation, %error, "lease lost");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(rotation = %lease.rotation, %error, "could not renew the lease; retrying")
                    }
                }
            }
        })))
    }
}

impl Drop for Renewal {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// This process's identity as an owner of rotations: `<role>:<host>:<pid>:<random>`.
fn instance_identity(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{role}:{host}:{}:{}", std::process::id(), &random[..8])
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
/// one credential never run at once in it, and owns each rotation it drives through a lease
/// in the store (see the module doc's "Ownership").
pub struct Engine {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Shared with the engines of later leadership terms ([`Engine::with_leader`]).
    locks: Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    /// Provider keys named like keyrotd's that the orphan sweep could not place.
    unplaced: Arc<orphans::UnplacedKeys>,
    claim: Claim,
}

impl Engine {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            store,
            clock,
            locks: Arc::new(std::sync::Mutex::new(HashMap::new())),
            unplaced: Arc::new(orphans::UnplacedKeys::default()),
            claim: Claim {
                owner: instance_identity("engine"),
                lease_seconds: DEFAULT_LEASE.as_secs() as i64,
                leader: None,
            },
        }
    }

    /// `keyrotd_provider_keys_unplaced{credential}`, for the daemon to register: keys at
    /// the provider named like keyrotd's that the orphan sweep found but cannot place (another
    /// installation's, or issued before this database existed), which it never deletes.
    pub fn unplaced_keys_gauge(&self) -> prometheus::IntGaugeVec {
        self.unplaced.gauge()
    }

    /// Names this process's role in its owner identity (`daemon`, `cli`).
    pub fn with_role(mut self, role: &str) -> Engine {
        self.claim.owner = instance_identity(role);
        self
    }

    /// Sets the lease length (`[daemon] rotation_lease`).
    pub fn with_lease(mut self, lease: Duration) -> Engine {
        self.claim.lease_seconds = lease.as_secs() as i64;
        self
    }

    /// The engine of one leadership term (the daemon's leader): every rotation it plans or
    /// takes over is written under `leader`, so the store refuses its writes once that term
    /// is over, whatever this process still believes. It shares this engine's store, clock,
    /// lease length, per-credential locks and unplaced-keys gauge; its owner identity is
    /// this one's with the term's epoch, so two terms of one process never share a lease.
    pub fn with_leader(&self, leader: LeaderToken) -> Engine {
        Engine {
            store: self.store.clone(),
            clock: self.clock.clone(),
            locks: self.locks.clone(),
            unplaced: self.unplaced.clone(),
            claim: Claim {
                owner: format!("{}:term{}", self.claim.owner, leader.epoch),
                lease_seconds: self.claim.lease_seconds,
                leader: Some(leader),
            },
        }
    }

    /// This engine's owner identity.
    pub fn owner(&self) -> &str {
        &self.claim.owner
    }

    /// Renews the lease right before an external effect: a fenced owner stops here.
    async fn renew(&self, lease: &Lease, step: &'static str) -> Result<(), StepError> {
        self.store
            .renew_lease(lease)
            .await
            .map_err(|e| StepError::store(step, e))
    }

    fn lock_for(&self, credential: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .entry(credential.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone()
    }

    /// Rotates now: issues (or adopts an imported pending key), verifies, delivers, promotes.
    /// A rotation of the credential already in flight is taken over and finished when its
    /// owner's lease expired ([`Rotated::taken_over_from`]), else refused as
    /// [`RotationError::InFlight`].
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
        let (rotation, lease) = match self
            .store
            .plan_rotation(&rt.name, &rotation_id, actor, &self.claim, self.clock.now())
            .await
        {
            Ok(planned) => planned,
            Err(StoreError::RotationInFlight { .. }) => {
                return match self.take_over_in_flight(rt).await? {
                    Some(done) => Ok(done),
                    None => Err(RotationError::Refused(format!(
                        "a rotation of {} was in flight and has just finished; try again",
                        rt.name
                    ))),
                };
            }
            Err(other) => return Err(other.into()),
        };
        tracing::info!(credential = %rt.name, rotation = %rotation.id, actor, owner = %lease.owner, "rotation planned");
        self.drive(rt, rotation, lease).await
    }

    /// Resumes the credential's rotation left in flight by a process whose lease expired
    /// (a previous run, a killed CLI), if any; one whose owner's lease is live is left to it.
    pub async fn resume(&self, rt: &CredentialRuntime) -> Result<(), RotationError> {
        let lock = self.lock_for(&rt.name);
        let _guard = lock.lock().await;
        match self.take_over_in_flight(rt).await {
            Ok(Some(done)) => {
                tracing::info!(credential = %rt.name, fingerprint = %done.fingerprint, "resumed rotation completed");
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(RotationError::InFlight { owner, until, .. }) => {
                tracing::debug!(credential = %rt.name, %owner, until, "rotation in flight under a live lease; not resuming");
                Ok(())
            }
            Err(RotationError::NeedsAttention { left, .. }) => {
                tracing::debug!(credential = %rt.name, retry_in_seconds = left, "rotation needs attention; the restore is retried later");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Takes over the credential's rotation in flight once its owner's lease has expired,
    /// and drives it to its end. `None` when nothing is in flight. Called with the
    /// credential's lock held.
    async fn take_over_in_flight(
        &self,
        rt: &CredentialRuntime,
    ) -> Result<Option<Rotated>, RotationError> {
        let Some(in_flight) = self
            .store
            .rotations_in_flight()
            .await?
            .into_iter()
            .find(|r| *r.credential == *rt.name)
        else {
            return Ok(None);
        };
        let (rotation, lease) = match self
            .store
            .take_over(&in_flight.id, &self.claim, self.clock.now())
            .await
        {
            Ok(taken) => taken,
            Err(StoreError::RotationNotInFlight { .. }) => return Ok(None),
            // In attention, the lease ends when the restore is to be retried.
            Err(StoreError::LeaseLive { left, .. })
                if in_flight.step == RotationStep::Attention =>
            {
                return Err(RotationError::NeedsAttention {
                    credential: rt.name.to_string(),
                    rotation: in_flight.id,
                    reason: in_flight.error.unwrap_or_default(),
                    left,
                })
            }
            Err(error) => return Err(RotationError::from_store(&rt.name, error)),
        };
        tracing::warn!(credential = %rt.name, rotation = %rotation.id, kind = rotation.kind.as_str(), step = rotation.step.as_str(), previous_owner = %in_flight.owner, epoch = lease.epoch, "resuming rotation: taking it over, its owner's lease expired");
        let mut done = self.drive(rt, rotation, lease).await?;
        done.taken_over_from = Some(in_flight.owner);
        Ok(Some(done))
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

    /// Drives a rotation owned through `lease` from its step to its end.
    async fn drive(
        &self,
        rt: &CredentialRuntime,
        mut rotation: Rotation,
        lease: Lease,
    ) -> Result<Rotated, RotationError> {
        let _renewal = Renewal::start(self.store.clone(), lease.clone());
        let rollback = rotation.kind == RotationKind::Rollback;
        loop {
            let result = match rotation.step {
                RotationStep::Planned if rollback => self
                    .verify(rt, &rotation, &lease)
                    .await
                    .map(|_| RotationStep::Verified),
                RotationStep::Planned => self.issue(rt, &rotation, &lease).await.map(|version| {
                    rotation.new_version_id = Some(version);
                    RotationStep::Issued
                }),
                RotationStep::Issued => self
                    .verify(rt, &rotation, &lease)
                    .await
                    .map(|_| RotationStep::Verified),
                RotationStep::Verified => self
                    .deliver(rt, &rotation, &lease)
                    .await
                    .map(|_| RotationStep::Delivered),
                RotationStep::Delivered => {
                    let finished = if rollback {
                        self.finish_rollback(rt, &rotation, &lease).await
                    } else {
                        self.promote(rt, &rotation, &lease).await
                    };
                    // A promotion the store refuses for good (the new key is no longer
                    // pending) is wound up like any other failed step: left in flight, the
                    // rotation would block every later one. A fenced one is left alone.
                    return match finished {
                        Err(RotationError::Store(
                            refused @ (StoreError::RotationWithoutKey { .. }
                            | StoreError::NoLongerPending { .. }
                            | StoreError::NoPreviousKey { .. }),
                        )) => Err(self
                            .fail(
                                rt,
                                &rotation,
                                &lease,
                                StepError::transient("promote", refused.to_string()),
                            )
                            .await),
                        Err(RotationError::Store(error)) if is_fenced(&error) => {
                            Err(RotationError::Fenced {
                                credential: rt.name.to_string(),
                                rotation: rotation.id.clone(),
                            })
                        }
                        other => other,
                    };
                }
                // Retry the restore: `fail` puts the current key back on every target and
                // winds the rotation up, or keeps it in attention.
                RotationStep::Attention => {
                    let reason = rotation.error.clone().unwrap_or_default();
                    return Err(self
                        .fail(
                            rt,
                            &rotation,
                            &lease,
                            StepError::transient("restore", reason),
                        )
                        .await);
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
                Err(error) if error.fenced => {
                    tracing::warn!(credential = %rt.name, rotation = %rotation.id, step = error.step, reason = %error.reason, "fenced: another process owns this rotation now; stopping without side effects");
                    return Err(RotationError::Fenced {
                        credential: rt.name.to_string(),
                        rotation: rotation.id.clone(),
                    });
                }
                Err(error) => return Err(self.fail(rt, &rotation, &lease, error).await),
            }
        }
    }
}

pub(super) fn new_rotation_id() -> String {
    // Sortable by time, unique, short enough for provider-side key names.
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        &id[..8]
    )
}
