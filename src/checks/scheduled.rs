//! The daemon's checks: every credential is checked on its own schedule, for as long as the
//! daemon runs with its configuration.
//!
//! One [`due`] queue holds every credential's next check (one timer for all of them), so a
//! sleeping credential costs an entry in the queue, not a task. Start-up reads the last
//! check times in one query and resumes each schedule where it left off. The results go to
//! one [`Recorder`], which writes them in batches.

use super::recorder::{Batching, Recorder};
use super::retry::next_delay;
use super::{CheckError, CheckOutcome, CheckTarget, Checker, Probed};
use crate::backoff::with_jitter;
use crate::due;
use crate::model::CheckStatus;
use crate::store::CheckToRecord;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The running schedule of checks, and the writer of their results.
pub(crate) struct ScheduledChecks {
    task: JoinHandle<()>,
    recorder: JoinHandle<()>,
    /// Asks for a credential's check now (the relay saw its key refused).
    moves: due::DueHandle,
    items: HashMap<Arc<str>, usize>,
}

impl ScheduledChecks {
    /// Stops the checks (a reload starts others). The results already handed over are
    /// still written.
    pub(crate) fn abort(&self) {
        self.task.abort();
    }

    /// Checks `credential` now instead of at its next due time. While a check of it runs,
    /// another one follows as soon as that one answers: the running check may have sent its
    /// probe before whatever made the caller ask. Ignored for a credential not in the
    /// schedule.
    pub(crate) fn check_now(&self, credential: &str) {
        if let Some(&item) = self.items.get(credential) {
            self.moves.run_no_later_than(item, Instant::now());
        }
    }

    /// Waits until the schedule has stopped and every result it handed over is written.
    pub(crate) async fn stopped(self) {
        let _ = self.task.await;
        let _ = self.recorder.await;
    }
}

/// A target in the schedule, with its run of transient failures (for the backoff).
struct Scheduled {
    target: CheckTarget,
    transient_failures: AtomicU32,
}

impl Checker {
    /// Checks every target on its own schedule until the schedule is aborted.
    pub(crate) fn schedule(self: &Arc<Self>, targets: Vec<CheckTarget>) -> ScheduledChecks {
        let checker = self.clone();
        let (recorder, recording) = Recorder::spawn(self.store.clone(), Batching::CHECKS);
        let items = targets
            .iter()
            .enumerate()
            .map(|(item, target)| (target.credential.clone(), item))
            .collect();
        let (handle, moves) = due::channel();
        let task = tokio::spawn(async move {
            let first = checker.first_checks(&targets).await;
            // Not the permits free now: a schedule a reload is aborting may still hold some.
            let parallel = checker.max_concurrent;
            let targets: Arc<[Scheduled]> = targets
                .into_iter()
                .map(|target| Scheduled {
                    target,
                    transient_failures: AtomicU32::new(0),
                })
                .collect();
            let work = move |item: usize| {
                let (checker, targets) = (checker.clone(), targets.clone());
                let recorder = recorder.clone();
                // Boxed: a check's state exists only while it runs.
                Box::pin(async move {
                    let delay = checker.check_scheduled(&targets[item], &recorder).await;
                    Some(Instant::now() + delay)
                })
            };
            due::run("check", first, parallel, work, moves).await;
        });
        ScheduledChecks {
            task,
            recorder: recording,
            moves: handle,
            items,
        }
    }

    /// When each target (by index) is first checked: where its schedule left off.
    async fn first_checks(&self, targets: &[CheckTarget]) -> Vec<(usize, Instant)> {
        let last_checks: HashMap<String, i64> = match self.store.last_checks().await {
            Ok(last_checks) => last_checks,
            Err(error) => {
                tracing::error!(%error, "cannot read last check times; checking everything soon");
                HashMap::new()
            }
        };
        let now = self.clock.now();
        let start = Instant::now();
        let mut rng = rand::thread_rng();
        targets
            .iter()
            .enumerate()
            .map(|(item, target)| {
                let last = last_checks.get(&*target.credential).copied();
                (
                    item,
                    start + initial_delay(last, now, target.interval, &mut rng),
                )
            })
            .collect()
    }

    /// Checks a scheduled credential once; answers how long until its next check.
    async fn check_scheduled(&self, scheduled: &Scheduled, recorder: &Recorder) -> Duration {
        let target = &scheduled.target;
        let failures = &scheduled.transient_failures;
        match self.check_and_record(target, recorder).await {
            Ok(outcome) => {
                let status = outcome.report.status;
                let transient = if status.is_conclusive() {
                    failures.store(0, Ordering::Relaxed);
                    0
                } else {
                    failures.fetch_add(1, Ordering::Relaxed) + 1
                };
                next_delay(
                    status,
                    outcome.report.retry_after,
                    transient,
                    target.interval,
                    self.jitter,
                    &mut rand::thread_rng(),
                )
            }
            Err(CheckError::NoCurrentKey(_)) => {
                with_jitter(target.interval, self.jitter, &mut rand::thread_rng())
            }
            Err(error) => {
                tracing::error!(credential = %target.credential, %error, "check could not run");
                let transient = failures.fetch_add(1, Ordering::Relaxed) + 1;
                next_delay(
                    CheckStatus::Unreachable,
                    None,
                    transient,
                    target.interval,
                    self.jitter,
                    &mut rand::thread_rng(),
                )
            }
        }
    }

    /// Probes the credential's current key once and records the result with its batch.
    ///
    /// The concurrency permit comes first: a key is read and decrypted only when its check
    /// can go out, so the daemon holds the state (and the plaintext secrets) of at most
    /// `max_concurrent` checks, not of every credential waiting for a permit. The check's
    /// state is boxed, so a waiting caller holds only its place in the semaphore's queue.
    async fn check_and_record(
        &self,
        target: &CheckTarget,
        recorder: &Recorder,
    ) -> Result<CheckOutcome, CheckError> {
        let permit = self.permit().await;
        let Probed { outcome, record } = Box::pin(self.probe(target, permit, None)).await?;
        recorder
            .record(CheckToRecord {
                credential: outcome.credential.clone(),
                version_id: outcome.version_id,
                check: record,
            })
            .await?;
        Ok(outcome)
    }
}

/// When to check a credential first after start-up: where its schedule left off, so a
/// restart neither re-checks everything at once nor forgets a check that is due.
pub(crate) fn initial_delay(
    last_check: Option<i64>,
    now: i64,
    interval: Duration,
    rng: &mut impl rand::Rng,
) -> Duration {
    // Spread the first round over a few seconds so start-up is not a burst.
    let spread = Duration::from_millis(rng.gen_range(0..=interval.as_millis().min(5_000) as u64));
    match last_check {
        Some(at) => {
            let due = at + interval.as_secs() as i64;
            Duration::from_secs((due - now).max(0) as u64) + spread
        }
        None => spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn start_up_resumes_the_schedule() {
        let interval = Duration::from_secs(300);
        let d = initial_delay(Some(1_000), 1_100, interval, &mut rng());
        assert!(
            d >= Duration::from_secs(200) && d <= Duration::from_secs(205),
            "{d:?}"
        );
        let overdue = initial_delay(Some(0), 10_000, interval, &mut rng());
        assert!(overdue <= Duration::from_secs(5));
        assert!(initial_delay(None, 0, interval, &mut rng()) <= Duration::from_secs(5));
    }
}
