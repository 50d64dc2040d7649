//! Validity checks: when to probe each credential's current key, how many at once, how fast
//! per provider, and what to do with the answer.
//!
//! Every credential's next check waits in one [`due`] queue (one timer for all of them).
//! Concurrency is bounded globally by a semaphore and per provider by a pacer.
//! A transient outcome (rate limited, unreachable) never touches validity: it is recorded
//! as the check status and retried with capped exponential backoff, honouring Retry-After.

use crate::backoff::{with_jitter, Backoff};
use crate::clock::Clock;
use crate::due;
use crate::model::CheckStatus;
use crate::providers::{CheckReport, Provider, ProviderAdapters};
use crate::store::{CheckRecord, CheckToRecord, SealedKey, Store, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::Instant;

/// First retry after a transient failure; doubles up to the check interval.
pub const TRANSIENT_RETRY_BASE: Duration = Duration::from_secs(15);

/// Spaces requests to one provider at most `rate` per second.
///
/// A caller reserves the next free slot and then sleeps until it, without holding anything:
/// the pacer once slept with its lock held, and every check behind a sleeper waited for the
/// lock's hand-over as well as for its own slot (up to 36 ms at 10,000 keys in flight 256 at
/// a time, where the configured rate should have cost nothing).
#[derive(Debug)]
pub struct Pacer {
    spacing: Duration,
    /// How far ahead of its slot a caller may go. Tokio's timer ticks every millisecond and
    /// rounds a sleep up to the next tick, so spacing finer than that is kept per tick: a
    /// slot less than a tick away is taken at once (`Duration::ZERO` when the spacing is a
    /// tick or more, where every slot is kept exactly).
    early: Duration,
    next: std::sync::Mutex<Option<Instant>>,
}

/// The resolution of tokio's timer.
const TIMER_TICK: Duration = Duration::from_millis(1);

impl Pacer {
    pub fn new(requests_per_second: f64) -> Pacer {
        let spacing = Duration::from_secs_f64(1.0 / requests_per_second.max(0.001));
        Pacer {
            spacing,
            early: if spacing < TIMER_TICK {
                TIMER_TICK
            } else {
                Duration::ZERO
            },
            next: std::sync::Mutex::new(None),
        }
    }

    /// Waits for this caller's slot. Slots are handed out in the order callers arrive.
    pub async fn wait(&self) {
        let now = Instant::now();
        let slot = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let slot = match *next {
                Some(at) if at > now => at,
                _ => now,
            };
            *next = Some(slot + self.spacing);
            slot
        };
        if slot.saturating_duration_since(now) > self.early {
            tokio::time::sleep_until(slot).await;
        }
    }
}

/// Aborts the task when dropped: a sweep that stops early stops its key reader too.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A target in the schedule, with its run of transient failures (for the backoff).
struct Scheduled {
    target: CheckTarget,
    transient_failures: AtomicU32,
}

/// What one credential is checked with.
#[derive(Clone)]
pub struct CheckTarget {
    /// Held for the daemon's whole life: one allocation, no spare capacity.
    pub credential: Arc<str>,
    /// One allocation per provider, shared by its credentials.
    pub provider_name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub pacer: Arc<Pacer>,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("credential {0:?} has no current key")]
    NoCurrentKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a sweep gathers check results before it writes them, at most.
///
/// Each write of a batch is a transaction, and a transaction cost ~1 ms of CPU whatever its
/// size (round trips to the store's thread, the commit's fsync, waking the writers). Written
/// as soon as the previous write ended, a sweep of 10,000 keys committed ~530 times (its
/// store writer used a quarter of a core); gathered for 25 ms, the whole command fsyncs 64
/// times and the sweep uses ~22 % less CPU (BENCHMARKS.md, round 7). The last batch is
/// written as soon as the last check is in: the window only bounds how long a result waits
/// while more come.
pub const SWEEP_RECORD_WINDOW: Duration = Duration::from_millis(25);

/// A batch of a sweep's results is written once it holds this many, window or not.
const SWEEP_RECORD_BATCH: usize = 1024;

/// A check's outcome and the record it leaves in the store, before it is written.
struct Probed {
    outcome: CheckOutcome,
    record: CheckRecord,
}

/// Writes a sweep's results as they come, gathering each batch for at most `window` (the
/// sweep's is [`SWEEP_RECORD_WINDOW`]), until the sweep drops its sender, and then at once.
/// Answers the results that could not be written, by their index.
async fn record_sweep(
    store: Arc<dyn Store>,
    mut results: tokio::sync::mpsc::UnboundedReceiver<(usize, CheckToRecord)>,
    window: Duration,
) -> Vec<(usize, StoreError)> {
    let mut unrecorded = Vec::new();
    let mut batch: Vec<(usize, CheckToRecord)> = Vec::new();
    while results.recv_many(&mut batch, SWEEP_RECORD_BATCH).await > 0 {
        let window = tokio::time::sleep(window);
        tokio::pin!(window);
        while batch.len() < SWEEP_RECORD_BATCH {
            let room = SWEEP_RECORD_BATCH - batch.len();
            tokio::select! {
                received = results.recv_many(&mut batch, room) => if received == 0 { break },
                () = &mut window => break,
            }
        }
        let (indices, checks): (Vec<usize>, Vec<CheckToRecord>) = batch.drain(..).unzip();
        let written = store.record_checks(checks).await;
        for (index, result) in indices.into_iter().zip(written) {
            if let Err(error) = result {
                unrecorded.push((index, error));
            }
        }
    }
    unrecorded
}

/// The outcome of checking one credential now.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub credential: String,
    pub version_id: i64,
    pub fingerprint: String,
    pub report: CheckReport,
}

/// The check targets of every credential, with only the checking adapters built (the CLI's
/// `keyrotd check`; the daemon shares its adapters with rotations: [`targets_from`]).
pub fn build_targets(
    config: &crate::config::Config,
    telemetry: &crate::providers::ProviderTelemetry,
) -> Result<Vec<CheckTarget>, crate::providers::ProviderError> {
    Ok(targets_from(
        config,
        &crate::providers::build_checkers(config, telemetry)?,
    ))
}

/// The check targets of every credential, on adapters already built.
///
/// One pacer per provider, shared by every credential of that provider, so the provider's
/// request rate is bounded whatever the number of keys.
pub fn targets_from(
    config: &crate::config::Config,
    adapters: &HashMap<String, ProviderAdapters>,
) -> Vec<CheckTarget> {
    let pacers: HashMap<&str, Arc<Pacer>> = config
        .providers
        .iter()
        .map(|provider| {
            (
                provider.name(),
                Arc::new(Pacer::new(provider.requests_per_second)),
            )
        })
        .collect();
    config
        .credentials
        .iter()
        .filter_map(|credential| {
            let adapters = adapters.get(credential.provider())?;
            Some(CheckTarget {
                credential: Arc::from(credential.name()),
                provider_name: adapters.name.clone(),
                provider: adapters.checker.clone(),
                pacer: pacers.get(credential.provider())?.clone(),
                interval: config.check_interval(credential),
            })
        })
        .collect()
}

/// Runs checks: on demand (`check_now`) and on schedule (`run`).
pub struct Checker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    concurrency: Arc<Semaphore>,
    max_concurrent: usize,
    jitter: f64,
}

impl Checker {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_concurrent: usize,
        jitter: f64,
    ) -> Self {
        Checker {
            store,
            clock,
            concurrency: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            jitter,
        }
    }

    /// Probes the credential's current key once and records the result.
    ///
    /// The concurrency permit comes first: a key is read and decrypted only when its check
    /// can go out, so a sweep holds the state (and the plaintext secrets) of at most
    /// `max_concurrent` checks, not of every credential waiting for a permit. The check's
    /// state is boxed, so a waiting caller holds only its place in the semaphore's queue.
    pub async fn check_now(&self, target: &CheckTarget) -> Result<CheckOutcome, CheckError> {
        let permit = self.permit().await;
        Box::pin(self.check_with(target, permit, None)).await
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.concurrency
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Checks every target once, at most `max_concurrent` at a time (`keyrotd check`).
    ///
    /// The keys are read in one query, still sealed, and each is opened only when its check
    /// goes out: a read per check was, with the results' writes, most of a sweep's CPU.
    /// The query runs beside the checks (a task of its own reads it to the end, so the read
    /// is not held open for the sweep), and the first checks go out with the first keys
    /// instead of after the last (at 10,000 keys the read takes ~0.1 s, 5 % of the sweep).
    ///
    /// Each check is a task of its own, spawned once it holds its permit (so at most
    /// `max_concurrent` exist): polled all within one task, the checks queued for the one
    /// thread running it while the other idled. (A pool of `max_concurrent` workers taking
    /// keys from a shared queue measured slower than this.)
    ///
    /// The results are written by a task of their own, [`SWEEP_RECORD_WINDOW`] at a time
    /// (see there), and all of them before this returns.
    ///
    /// Results are in the order of `targets`.
    pub async fn check_all(
        self: &Arc<Self>,
        targets: &[CheckTarget],
    ) -> Result<Vec<Result<CheckOutcome, CheckError>>, CheckError> {
        let (keys_read, mut keys) = tokio::sync::mpsc::unbounded_channel();
        let store = self.store.clone();
        let reader = AbortOnDrop(tokio::spawn(async move {
            let mut rows = store.current_keys_sealed();
            while let Some(key) = rows.next().await {
                let failed = key.is_err();
                if keys_read.send(key).is_err() || failed {
                    break;
                }
            }
        }));
        let (to_record, recording) = tokio::sync::mpsc::unbounded_channel();
        let mut recorder = AbortOnDrop(tokio::spawn(record_sweep(
            self.store.clone(),
            recording,
            SWEEP_RECORD_WINDOW,
        )));
        let index_of: HashMap<&str, usize> = targets
            .iter()
            .enumerate()
            .map(|(index, target)| (&*target.credential, index))
            .collect();
        let mut results: Vec<Option<Result<CheckOutcome, CheckError>>> =
            std::iter::repeat_with(|| None)
                .take(targets.len())
                .collect();
        let mut running = JoinSet::new();
        let mut finished = |done: Result<(usize, Result<Probed, CheckError>), JoinError>| {
            match done {
                Ok((index, Ok(Probed { outcome, record }))) => {
                    let check = CheckToRecord {
                        credential: outcome.credential.clone(),
                        version_id: outcome.version_id,
                        check: record,
                    };
                    let _ = to_record.send((index, check));
                    results[index] = Some(Ok(outcome));
                }
                Ok((index, Err(error))) => results[index] = Some(Err(error)),
                // A check's panic is a bug: surface it as the panic it is.
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        };
        let mut read_failed = None;
        while let Some(key) = keys.recv().await {
            let key = match key {
                Ok(key) => key,
                Err(error) => {
                    read_failed = Some(error);
                    break;
                }
            };
            // Keys of credentials not asked for (`keyrotd check NAME`) are passed over.
            let Some(&index) = index_of.get(key.version.credential.as_str()) else {
                continue;
            };
            let permit = self.permit().await;
            while let Some(done) = running.try_join_next() {
                finished(done);
            }
            let (checker, target) = (self.clone(), targets[index].clone());
            running.spawn(async move {
                let probed = checker.probe(&target, permit, Some(key)).await;
                (index, probed)
            });
        }
        drop(reader);
        // The checks already out finish and are recorded, even when the read failed.
        while let Some(done) = running.join_next().await {
            finished(done);
        }
        // The recorder writes what it still holds and ends once its sender is gone.
        drop(to_record);
        let unrecorded = match (&mut recorder.0).await {
            Ok(unrecorded) => unrecorded,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => {
                let reason = error.to_string();
                return Err(StoreError::ChecksNotWritten { reason }.into());
            }
        };
        for (index, error) in unrecorded {
            results[index] = Some(Err(error.into()));
        }
        if let Some(error) = read_failed {
            return Err(error.into());
        }
        Ok(results
            .into_iter()
            .zip(targets)
            .map(|(result, target)| {
                result
                    .unwrap_or_else(|| Err(CheckError::NoCurrentKey(target.credential.to_string())))
            })
            .collect())
    }

    /// One check, recorded; `key` is the current key when read ahead (else it is read now).
    async fn check_with(
        &self,
        target: &CheckTarget,
        permit: OwnedSemaphorePermit,
        key: Option<SealedKey>,
    ) -> Result<CheckOutcome, CheckError> {
        let Probed { outcome, record } = self.probe(target, permit, key).await?;
        self.store
            .record_check(&target.credential, outcome.version_id, &record)
            .await?;
        Ok(outcome)
    }

    /// One check, not yet recorded.
    async fn probe(
        &self,
        target: &CheckTarget,
        permit: OwnedSemaphorePermit,
        key: Option<SealedKey>,
    ) -> Result<Probed, CheckError> {
        let (current, secret) = match key {
            Some(key) => {
                let secret = self.store.open_sealed(&key)?;
                (key.version, secret)
            }
            None => self
                .store
                .current_key(&target.credential)
                .await?
                .ok_or_else(|| CheckError::NoCurrentKey(target.credential.to_string()))?,
        };
        target.pacer.wait().await;
        let report = target.provider.check(&secret).await;
        // The permit goes as soon as the answer is in: recording waits for the writer, and
        // the next check need not wait for that.
        drop(permit);
        drop(secret);
        let record = CheckRecord {
            status: report.status,
            detail: report.detail.clone(),
            at: self.clock.now(),
            credits: report
                .credit
                .iter()
                .map(|c| (c.unit.clone(), c.remaining))
                .collect(),
            expires_at: report.expires_at,
        };
        if report.status == CheckStatus::Invalid {
            tracing::warn!(credential = %target.credential, fingerprint = %current.fingerprint, detail = %report.detail, "key is invalid");
        } else {
            tracing::debug!(credential = %target.credential, status = %report.status, detail = %report.detail, "checked");
        }
        let outcome = CheckOutcome {
            credential: target.credential.to_string(),
            version_id: current.id,
            fingerprint: current.fingerprint,
            report,
        };
        Ok(Probed { outcome, record })
    }

    /// Checks every target on its own schedule until the returned task is aborted.
    ///
    /// One [`due`] queue holds every credential's next check: start-up reads the last check
    /// times in one query and resumes each schedule where it left off; a check runs only
    /// when due, and a sleeping credential costs an entry in the queue, not a task.
    pub fn schedule(self: &Arc<Self>, targets: Vec<CheckTarget>) -> JoinHandle<()> {
        let checker = self.clone();
        tokio::spawn(async move {
            let last_checks: HashMap<String, i64> = match checker.store.last_checks().await {
                Ok(last_checks) => last_checks,
                Err(error) => {
                    tracing::error!(%error, "cannot read last check times; checking everything soon");
                    HashMap::new()
                }
            };
            let now = checker.clock.now();
            let start = Instant::now();
            let first: Vec<_> = {
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
            };
            drop(last_checks);
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
                // Boxed: a check's state exists only while it runs.
                Box::pin(async move {
                    let delay = checker.check_scheduled(&targets[item]).await;
                    Some(Instant::now() + delay)
                })
            };
            // Checks are never moved from outside; the handle only keeps the channel open.
            let (_moves, moves) = due::channel();
            due::run("check", first, parallel, work, moves).await;
        })
    }

    /// Checks a scheduled credential once; answers how long until its next check.
    async fn check_scheduled(&self, scheduled: &Scheduled) -> Duration {
        let target = &scheduled.target;
        let failures = &scheduled.transient_failures;
        match self.check_now(target).await {
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
}

/// When to check a credential first after start-up: where its schedule left off, so a
/// restart neither re-checks everything at once nor forgets a check that is due.
pub fn initial_delay(
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

/// When to check again after an outcome. Conclusive results wait the (jittered) interval;
/// transient ones back off from 15 s, doubling, never beyond the interval, and never
/// sooner than the provider's Retry-After.
pub fn next_delay(
    status: CheckStatus,
    retry_after: Option<Duration>,
    transient_failures: u32,
    interval: Duration,
    jitter: f64,
    rng: &mut impl rand::Rng,
) -> Duration {
    if status.is_conclusive() {
        return with_jitter(interval, jitter, rng);
    }
    let backoff = Backoff::new(TRANSIENT_RETRY_BASE.min(interval), interval);
    let delay = backoff.delay(transient_failures.saturating_sub(1), rng);
    match retry_after {
        Some(wait) => delay.max(wait),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A store with credentials `c0`, `c1`, each with a current key; their version ids.
    async fn store_with_two_keys(dir: &std::path::Path) -> (Arc<dyn Store>, Vec<i64>) {
        use crate::crypto::{MasterKey, Sealer};
        use crate::store::{CredentialSpec, CredentialStore, KeyStore, NewKey, SqliteStore};
        let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
        let store = SqliteStore::open(&dir.join("keyrotd.db"), Some(sealer))
            .await
            .unwrap();
        let names = ["c0", "c1"];
        let specs: Vec<_> = names
            .iter()
            .map(|name| CredentialSpec {
                name: name.to_string(),
                provider: "sim".into(),
                provider_kind: "simulated".into(),
            })
            .collect();
        store.sync_credentials(&specs, 1_000).await.unwrap();
        let mut versions = Vec::new();
        for name in names {
            let key = NewKey {
                secret: secrecy::SecretString::from(format!("sk-test-{name}")),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            };
            versions.push(store.import_key(name, key, "test", 1_000).await.unwrap().id);
        }
        (Arc::new(store), versions)
    }

    fn result_of(credential: &str, version_id: i64) -> CheckToRecord {
        CheckToRecord {
            credential: credential.to_string(),
            version_id,
            check: CheckRecord {
                status: CheckStatus::Valid,
                detail: "ok".into(),
                at: 2_000,
                credits: Vec::new(),
                expires_at: None,
            },
        }
    }

    async fn last_check_at(store: &Arc<dyn Store>, credential: &str) -> Option<i64> {
        let snapshot = store.snapshot().await.unwrap();
        snapshot
            .credentials
            .iter()
            .find(|s| s.credential.name == credential)
            .and_then(|s| s.credential.last_check_at)
    }

    #[tokio::test]
    async fn a_sweep_s_results_within_the_window_share_one_write_and_the_last_goes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, versions) = store_with_two_keys(dir.path()).await;
        let generation = store.generation().await.unwrap();
        let (results, received) = tokio::sync::mpsc::unbounded_channel();
        // A window far longer than the test may take: only the sender's end writes.
        let recorder = tokio::spawn(record_sweep(
            store.clone(),
            received,
            Duration::from_secs(60),
        ));
        results.send((0, result_of("c0", versions[0]))).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        results.send((1, result_of("c1", versions[1]))).unwrap();
        drop(results);
        let unrecorded = tokio::time::timeout(Duration::from_secs(20), recorder)
            .await
            .expect("the end of the sweep writes at once, not after the window")
            .unwrap();
        assert!(unrecorded.is_empty(), "{unrecorded:?}");
        assert_eq!(
            store.generation().await.unwrap(),
            generation + 1,
            "one write"
        );
        assert_eq!(last_check_at(&store, "c0").await, Some(2_000));
        assert_eq!(last_check_at(&store, "c1").await, Some(2_000));
    }

    #[tokio::test]
    async fn a_sweep_s_result_waits_no_longer_than_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (store, versions) = store_with_two_keys(dir.path()).await;
        let (results, received) = tokio::sync::mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_sweep(
            store.clone(),
            received,
            Duration::from_millis(50),
        ));
        results.send((0, result_of("c0", versions[0]))).unwrap();
        // The sweep goes on (the sender stays open), and the result is written anyway.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while last_check_at(&store, "c0").await.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the result waited for the end of the sweep"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A result that cannot be written is answered by its index.
        results
            .send((7, result_of("no-such-credential", versions[1])))
            .unwrap();
        drop(results);
        let unrecorded = recorder.await.unwrap();
        assert_eq!(
            unrecorded
                .iter()
                .map(|(index, _)| *index)
                .collect::<Vec<_>>(),
            [7]
        );
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn conclusive_results_wait_the_interval() {
        let d = next_delay(
            CheckStatus::Invalid,
            None,
            0,
            Duration::from_secs(300),
            0.1,
            &mut rng(),
        );
        assert!(d >= Duration::from_secs(300) && d <= Duration::from_secs(330));
    }

    #[test]
    fn transient_results_back_off_and_cap_at_the_interval() {
        let interval = Duration::from_secs(300);
        let first = next_delay(CheckStatus::Unreachable, None, 1, interval, 0.1, &mut rng());
        assert!(
            first >= Duration::from_millis(7_500) && first <= Duration::from_secs(15),
            "{first:?}"
        );
        let third = next_delay(CheckStatus::Unreachable, None, 3, interval, 0.1, &mut rng());
        assert!(
            third >= Duration::from_secs(30) && third <= Duration::from_secs(60),
            "{third:?}"
        );
        let many = next_delay(
            CheckStatus::Unreachable,
            None,
            40,
            interval,
            0.1,
            &mut rng(),
        );
        assert!(many <= interval, "{many:?}");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = next_delay(
            CheckStatus::RateLimited,
            Some(Duration::from_secs(120)),
            1,
            Duration::from_secs(300),
            0.1,
            &mut rng(),
        );
        assert!(d >= Duration::from_secs(120));
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

    #[tokio::test]
    async fn the_pacer_spaces_requests() {
        let pacer = Pacer::new(50.0);
        let start = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        // Five slots at 50/s: the fifth cannot start before 80 ms after the first.
        // (A lower bound only: a slow machine may take longer, never shorter.)
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn callers_sleep_to_their_slots_side_by_side() {
        // Ten callers at once, 10/s: each leaves at its own slot, 100 ms apart.
        let pacer = Arc::new(Pacer::new(10.0));
        let start = Instant::now();
        let waits: Vec<_> = (0..10)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    pacer.wait().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut left = Vec::new();
        for wait in waits {
            left.push(wait.await.unwrap());
        }
        left.sort();
        for (i, at) in left.iter().enumerate() {
            let slot = Duration::from_millis(100 * i as u64);
            assert!(
                *at >= slot && *at < slot + Duration::from_millis(5),
                "caller {i} left at {at:?}, its slot was {slot:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_above_the_timer_resolution_is_kept_per_tick_not_per_request() {
        // A million a second: a sleep until a slot a microsecond away would last a whole
        // timer tick, i.e. a thousandth of the rate. Within a tick, callers go at once...
        let pacer = Pacer::new(1_000_000.0);
        let start = Instant::now();
        for _ in 0..500 {
            pacer.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // ...and beyond it they wait: 3,000 slots a microsecond apart end 3 ms on.
        for _ in 0..2_500 {
            pacer.wait().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1),
            "{:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() <= Duration::from_millis(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_a_tick_or_slower_every_slot_is_kept_exactly() {
        let pacer = Pacer::new(1_000.0);
        let start = Instant::now();
        for _ in 0..3 {
            pacer.wait().await;
        }
        assert!(
            start.elapsed() >= Duration::from_millis(2),
            "{:?}",
            start.elapsed()
        );
    }
}
