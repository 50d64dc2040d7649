//! The daemon's work and who may do it: the checks, rotations and retention pruning of the
//! running configuration, started only while this replica leads ([`super::leadership`]) and
//! aborted the moment it stops. A rotation cut short resumes from its last committed step
//! under the next leader; writes a late task still attempts carry the ended term's token and
//! are refused by the store.

use super::retention;
use crate::checks::{self, CheckTarget, Checker, ScheduledChecks};
use crate::clock::Clock;
use crate::config::Config;
use crate::providers::{self, ProviderTelemetry};
use crate::rotation::{self, CredentialRuntime, Engine};
use crate::store::{LeaderToken, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub(super) type Runtimes = HashMap<String, Arc<CredentialRuntime>>;

/// What the running configuration asks to be done, and the tasks doing it while leading.
pub(super) struct Work {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    checker: Arc<Checker>,
    /// The engine every term's engine derives from ([`Engine::with_leader`]).
    engine: Arc<Engine>,
    targets: Vec<CheckTarget>,
    runtimes: Runtimes,
    /// `[daemon] events_retention`, as read at start-up.
    retention: Duration,
    acting: Option<Acting>,
}

/// The tasks of one leadership term.
struct Acting {
    token: LeaderToken,
    engine: Arc<Engine>,
    checks: ScheduledChecks,
    rotations: JoinHandle<()>,
    pruning: Option<JoinHandle<()>>,
}

impl Work {
    /// The work of `config`, not started.
    pub(super) fn new(
        config: &Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        telemetry: &ProviderTelemetry,
    ) -> anyhow::Result<Work> {
        let checker = Arc::new(Checker::new(
            store.clone(),
            clock.clone(),
            config.checks.max_concurrent,
            config.checks.jitter,
        ));
        let engine = Arc::new(
            Engine::new(store.clone(), clock.clone())
                .with_role("daemon")
                .with_lease(config.daemon.rotation_lease.0),
        );
        let (targets, runtimes) = build_work(config, telemetry)?;
        Ok(Work {
            store,
            clock,
            checker,
            engine,
            targets,
            runtimes,
            retention: config.daemon.events_retention.into(),
            acting: None,
        })
    }

    /// `keyrotd_provider_keys_unplaced`, shared by every term's engine.
    pub(super) fn unplaced_keys_gauge(&self) -> prometheus::IntGaugeVec {
        self.engine.unplaced_keys_gauge()
    }

    /// Starts the work under a new term, or stops it when `acting` is `None`.
    pub(super) async fn follow(&mut self, acting: Option<LeaderToken>) {
        if self.acting.as_ref().map(|a| &a.token) == acting.as_ref() {
            return;
        }
        self.stop().await;
        if let Some(token) = acting {
            self.acting = Some(self.start(token));
        }
    }

    fn start(&self, token: LeaderToken) -> Acting {
        let engine = Arc::new(self.engine.with_leader(token.clone()));
        Acting {
            token,
            checks: self.checker.schedule(self.targets.clone()),
            rotations: spawn_rotations(&engine, &self.runtimes),
            engine,
            pruning: retention::spawn(
                self.store.clone() as Arc<dyn crate::store::AuditStore>,
                self.clock.clone(),
                self.retention,
            ),
        }
    }

    /// Swaps in the checks and rotations of a reloaded config (at once if leading).
    pub(super) fn replace(&mut self, targets: Vec<CheckTarget>, runtimes: Runtimes) {
        self.targets = targets;
        self.runtimes = runtimes;
        if let Some(acting) = &mut self.acting {
            acting.checks.abort();
            acting.checks = self.checker.schedule(self.targets.clone());
            // A rotation cut short here resumes from its last committed step.
            acting.rotations.abort();
            acting.rotations = spawn_rotations(&acting.engine, &self.runtimes);
        }
    }

    /// Checks `credential` now (after the check of it under way, if any), if this replica
    /// leads. A standby does nothing: it runs no checks, and the request is not passed to
    /// the leader, whose own schedule (or its own relay's request) decides when the key is
    /// checked next.
    pub(super) fn check_now(&self, credential: &str) {
        if let Some(acting) = &self.acting {
            acting.checks.check_now(credential);
        }
    }

    /// Aborts the term's tasks, if any, and waits until they are gone.
    pub(super) async fn stop(&mut self) {
        let Some(acting) = self.acting.take() else {
            return;
        };
        let epoch = acting.token.epoch;
        acting.checks.abort();
        acting.rotations.abort();
        if let Some(pruning) = &acting.pruning {
            pruning.abort();
        }
        acting.checks.stopped().await;
        let _ = acting.rotations.await;
        if let Some(pruning) = acting.pruning {
            let _ = pruning.await;
        }
        tracing::info!(epoch, "checks and rotations stopped");
    }
}

/// The check targets and rotation runtimes of `config`, sharing one set of adapters (and
/// HTTP clients) per provider. Once built, they hold the adapters; the map is dropped.
pub(super) fn build_work(
    config: &Config,
    telemetry: &ProviderTelemetry,
) -> anyhow::Result<(Vec<CheckTarget>, Runtimes)> {
    let adapters = providers::build_all(config, telemetry)?;
    let targets = checks::targets_from(config, &adapters);
    let runtimes = rotation::runtimes_from(config, &adapters)?;
    Ok((targets, runtimes))
}

/// The rotation schedule of every credential (one task; see `rotation::pass_queue`).
fn spawn_rotations(engine: &Arc<Engine>, runtimes: &Runtimes) -> JoinHandle<()> {
    rotation::pass_queue::spawn(engine.clone(), runtimes.values().cloned().collect())
}
