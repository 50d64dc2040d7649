//! The daemon's queue of rotation passes: which credential needs a pass ([`Engine::tick`])
//! when.
//!
//! Start-up reads the bookkeeping of every credential in one query
//! ([`RotationStore::rotation_outlooks`](crate::store::RotationStore::rotation_outlooks)), records every due time in one transaction, resumes the
//! rotations a previous run left in flight, and puts each credential in one [`due`] queue at
//! the time its next pass is needed. A credential with nothing due (no schedule, no key in
//! its grace period) has no entry at all, so an idle daemon does not wake for it.
//!
//! What another process changes in the store (a `keyrotd key import` or `key rotate` from
//! the CLI) is picked up by a re-read of every credential once an hour ([`SURVEY_EVERY`]),
//! the same survey as at start-up: one query and one wake-up an hour, not one per credential.

use super::{CredentialRuntime, Engine, Policy, RotationError, MAX_SLEEP};
use crate::due::{self, DueHandle};
use crate::model::UnixTime;
use crate::store::{RotationOutlook, StoreError};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How often every credential's bookkeeping is re-read for changes made by other processes.
pub(crate) const SURVEY_EVERY: Duration = MAX_SLEEP;
/// Passes at once: rotations talk to providers and targets, and each commits several times
/// through the one writer; more in parallel would only queue on it.
const PARALLEL_PASSES: usize = 16;
/// How long after a pass that failed (the store could not be read or written) the next one
/// comes.
const AFTER_FAILED_PASS: Duration = Duration::from_secs(60);

/// When a credential's rotation is due and when it needs a pass, judged from its
/// bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassPlan {
    /// When its next rotation is due (what the store's `next_rotation_at` should say);
    /// `None` while a rotation is in flight (that rotation decides).
    pub due: Option<UnixTime>,
    /// When it needs its next pass; `None` when nothing is known to be due (the hourly
    /// survey looks again).
    pub pass: Option<UnixTime>,
}

/// When a credential's next rotation is due and when it needs its next pass, at `now`.
pub fn plan_pass(
    policy: &Policy,
    can_issue: bool,
    outlook: &RotationOutlook,
    now: UnixTime,
) -> PassPlan {
    let grace = policy.grace.as_secs() as i64;
    let revocation = [
        outlook.oldest_previous.map(|at| at + grace),
        outlook.oldest_discarded,
    ]
    .into_iter()
    .flatten()
    .min();
    if let Some(left) = outlook.in_flight_lease_left {
        // Another process may be rotating: look again just after its lease would expire
        // (a live owner renews it; the pass then finds it live and waits again).
        let takeover = now + left.max(0) + 1;
        return PassPlan {
            due: None,
            pass: Some(revocation.map_or(takeover, |at| at.min(takeover)).max(now)),
        };
    }
    let due = policy.due(
        outlook.current,
        outlook.last_rotated_at,
        outlook.consecutive_failures,
        outlook.next_rotation_at,
    );
    if outlook.imported_pending
        && (outlook.consecutive_failures == 0 || due.is_some_and(|at| at <= now))
    {
        return PassPlan {
            due,
            pass: Some(now),
        };
    }
    // An imported key kept after a failed attempt is retried when the backoff is over.
    let by_rotation = if can_issue || outlook.imported_pending {
        due
    } else {
        None
    };
    let pass = [by_rotation, revocation]
        .into_iter()
        .flatten()
        .min()
        .map(|at| at.max(now));
    PassPlan { due, pass }
}

/// Runs the passes of `runtimes` until aborted (a reload aborts it and starts another;
/// a rotation cut short resumes from its last committed step).
pub(crate) fn spawn(engine: Arc<Engine>, runtimes: Vec<Arc<CredentialRuntime>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let runtimes = ByName::new(runtimes);
        let mut first = Vec::new();
        let resume_first = Arc::new(Mutex::new(HashSet::new()));
        match survey(&engine, &runtimes).await {
            Ok(passes) => {
                for SurveyedPass {
                    item,
                    in_flight,
                    at,
                } in passes
                {
                    if in_flight {
                        // Ours, left by the previous run (or another process's): resume now.
                        resume_first
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(item);
                        first.push((item, Instant::now()));
                    } else if let Some(at) = at {
                        first.push((item, instant_at(&engine, at)));
                    }
                }
            }
            Err(error) => {
                // Without the survey, give every credential a pass that first resumes what it
                // left in flight, as each reads its own rows.
                tracing::error!(%error, "cannot read the rotation schedule; looking at every credential");
                first = (0..runtimes.len()).map(|i| (i, Instant::now())).collect();
                resume_first
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(0..runtimes.len());
            }
        }
        tracing::debug!(
            credentials = runtimes.len(),
            scheduled = first.len(),
            "rotation schedule loaded"
        );
        let (moves, moved) = due::channel();
        let work = {
            let (engine, runtimes) = (engine.clone(), runtimes.clone());
            move |item: usize| {
                let (engine, rt) = (engine.clone(), runtimes[item].clone());
                let resume = resume_first
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&item);
                // Boxed: a pass's state (a whole rotation) exists only while it runs.
                Box::pin(async move { pass(&engine, &rt, resume).await })
            }
        };
        let passes = due::run("rotation", first, PARALLEL_PASSES, work, moved);
        let surveys = survey_forever(&engine, &runtimes, moves);
        tokio::join!(passes, surveys);
    })
}

/// One pass over a credential; answers when the next one is needed.
async fn pass(engine: &Engine, rt: &CredentialRuntime, resume: bool) -> Option<Instant> {
    if resume {
        if let Err(error) = engine.resume(rt).await {
            tracing::warn!(credential = %rt.name, %error, "resumed rotation did not complete");
        }
    }
    let began = engine.clock.now();
    let answer = engine.tick(rt).await;
    if let Err(error) = &answer {
        tracing::error!(credential = %rt.name, %error, "rotation scheduling failed; retrying in a minute");
    }
    next_pass(began, &answer, engine.clock.now()).map(|at| instant_at(engine, at))
}

/// When a credential needs its next pass, after one that began at `began` and answered
/// `answer` (what [`Engine::tick`] returned) at `now`; `None` when that is beyond what a
/// pass looks ahead (the hourly survey decides then).
pub fn next_pass(
    began: UnixTime,
    answer: &Result<UnixTime, RotationError>,
    now: UnixTime,
) -> Option<UnixTime> {
    let wake = match answer {
        Ok(wake) => *wake,
        Err(_) => began + AFTER_FAILED_PASS.as_secs() as i64,
    };
    // `tick` looks at most MAX_SLEEP ahead; beyond that the survey decides.
    if wake - began >= MAX_SLEEP.as_secs() as i64 {
        return None;
    }
    // A zero wait after a rotation re-reads the store once; never spin.
    Some(wake.max(now + 1))
}

/// The runtimes in name order: an item is an index into them, and a credential's item is
/// found by binary search. A name-to-index hash map beside them would hold memory for the
/// daemon's whole life.
#[derive(Clone)]
struct ByName(Arc<[Arc<CredentialRuntime>]>);

impl std::ops::Deref for ByName {
    type Target = [Arc<CredentialRuntime>];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ByName {
    fn new(mut runtimes: Vec<Arc<CredentialRuntime>>) -> ByName {
        runtimes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        ByName(runtimes.into())
    }

    /// The item of the credential named `name`.
    fn item(&self, name: &str) -> Option<usize> {
        self.binary_search_by(|rt| (*rt.name).cmp(name)).ok()
    }
}

/// One credential's answer from a survey.
struct SurveyedPass {
    /// Index into the runtimes.
    item: usize,
    /// A rotation of it is in flight.
    in_flight: bool,
    /// When its next pass is due; `None`: nothing to do until the next survey.
    at: Option<UnixTime>,
}

/// Reads every credential's bookkeeping, records due times that changed (one transaction),
/// and answers each credential's next pass.
async fn survey(engine: &Engine, runtimes: &ByName) -> Result<Vec<SurveyedPass>, StoreError> {
    let now = engine.clock.now();
    let outlooks = engine.store.rotation_outlooks().await?;
    let mut changed = Vec::new();
    // Each outlook is read once and only its answer kept: every credential's outlook held
    // at once would be the largest allocation of the daemon's start-up.
    let mut passes = Vec::with_capacity(outlooks.len());
    for outlook in outlooks {
        let Some(item) = runtimes.item(&outlook.credential) else {
            continue;
        };
        let rt = &runtimes[item];
        let plan = plan_pass(&rt.policy, rt.issuer.is_some(), &outlook, now);
        let in_flight = outlook.in_flight_lease_left.is_some();
        if !in_flight && plan.due != outlook.next_rotation_at {
            changed.push((outlook.credential, plan.due));
        }
        passes.push(SurveyedPass {
            item,
            in_flight,
            at: plan.pass,
        });
    }
    engine.store.set_next_rotations(&changed).await?;
    Ok(passes)
}

async fn survey_forever(engine: &Engine, runtimes: &ByName, moves: DueHandle) {
    loop {
        tokio::time::sleep(SURVEY_EVERY).await;
        match survey(engine, runtimes).await {
            Ok(passes) => {
                for SurveyedPass { item, at, .. } in passes {
                    moves.reschedule(item, at.map(|at| instant_at(engine, at)));
                }
            }
            Err(error) => {
                tracing::error!(%error, "rotation survey failed; trying again in an hour")
            }
        }
    }
}

/// The monotonic instant of a wall-clock time of the engine's clock.
fn instant_at(engine: &Engine, at: UnixTime) -> Instant {
    let wait = (at - engine.clock.now()).max(0) as u64;
    Instant::now() + Duration::from_secs(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_name_finds_every_credential_whatever_the_config_order() {
        let mut text = String::from(
            "[[provider]]\nname = \"sim\"\nkind = \"simulated\"\nbase_url = \"http://127.0.0.1:9\"\n",
        );
        let names = ["mid", "zeta", "alpha", "beta-2", "beta-10"];
        for name in names {
            text.push_str(&format!(
                "[[credential]]\nname = \"{name}\"\nprovider = \"sim\"\n"
            ));
        }
        let config = crate::config::Config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        let runtimes =
            crate::rotation::build_runtimes(&config, &crate::providers::ProviderTelemetry::new())
                .unwrap();
        let by_name = ByName::new(runtimes.into_values().collect());
        for name in names {
            let item = by_name.item(name).expect(name);
            assert_eq!(&*by_name[item].name, name);
        }
        assert_eq!(by_name.item("beta"), None);
        assert_eq!(by_name.item("zz"), None);
    }

    fn policy(max_age_days: Option<u64>) -> Policy {
        Policy {
            schedule: None,
            max_age: max_age_days.map(|d| Duration::from_secs(d * 86_400)),
            rotate_before_expiry: None,
            grace: Duration::from_secs(3_600),
            min_age: Duration::ZERO,
            provider_expiry_margin: None,
        }
    }

    fn outlook() -> RotationOutlook {
        RotationOutlook {
            credential: "c".into(),
            next_rotation_at: None,
            last_rotated_at: None,
            consecutive_failures: 0,
            current: Some((1_000, None)),
            imported_pending: false,
            in_flight_lease_left: None,
            oldest_previous: None,
            oldest_discarded: None,
        }
    }

    #[test]
    fn nothing_due_means_no_pass() {
        assert_eq!(plan_pass(&policy(None), true, &outlook(), 5_000).pass, None);
        // A policy without an issuer cannot rotate by itself.
        assert_eq!(
            plan_pass(&policy(Some(1)), false, &outlook(), 5_000).pass,
            None
        );
    }

    #[test]
    fn the_pass_comes_at_the_earliest_of_rotation_and_revocation() {
        let now = 5_000;
        let due = 1_000 + 86_400;
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &outlook(), now).pass,
            Some(due)
        );
        assert_eq!(
            plan_pass(&policy(Some(1)), false, &outlook(), now).due,
            Some(due),
            "due without an issuer too"
        );
        let revoking = RotationOutlook {
            oldest_previous: Some(4_000),
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &revoking, now).pass,
            Some(4_000 + 3_600)
        );
        let discarded = RotationOutlook {
            oldest_discarded: Some(10),
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &discarded, now).pass,
            Some(now),
            "overdue work is due now, not in the past"
        );
    }

    #[test]
    fn failures_wait_for_the_stored_retry_and_imports_go_first() {
        let now = 200_000;
        let failing = RotationOutlook {
            consecutive_failures: 2,
            next_rotation_at: Some(now + 600),
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &failing, now).pass,
            Some(now + 600)
        );
        let imported = RotationOutlook {
            imported_pending: true,
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(None), false, &imported, now).pass,
            Some(now)
        );
        let imported_after_failure = RotationOutlook {
            imported_pending: true,
            ..failing
        };
        assert_eq!(
            plan_pass(&policy(None), false, &imported_after_failure, now).pass,
            Some(now + 600),
            "an imported key retried after a failure waits for the backoff"
        );
    }

    #[test]
    fn a_rotation_in_flight_elsewhere_is_looked_at_when_its_lease_would_expire() {
        let in_flight = RotationOutlook {
            in_flight_lease_left: Some(45),
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &in_flight, 10_100).pass,
            Some(10_100 + 45 + 1)
        );
        let expired = RotationOutlook {
            in_flight_lease_left: Some(-300),
            ..outlook()
        };
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &expired, 10_100).pass,
            Some(10_101),
            "an expired lease is taken over at once"
        );
        assert_eq!(
            plan_pass(&policy(Some(1)), true, &in_flight, 10_100).due,
            None,
            "the rotation in flight decides"
        );
    }
}
