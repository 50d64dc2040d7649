//! `keyrotd check`: every credential checked once, as fast as the concurrency and the
//! providers' pacing allow, with every result written before the command answers.

use super::recorder::{record_sweep, unwritten, Batching};
use super::{CheckError, CheckOutcome, CheckTarget, Checker, Probed};
use crate::store::{CheckToRecord, SealedKey, StoreError};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle, JoinSet};

/// Aborts the task when dropped: a sweep that stops early stops its key reader too.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type CheckResult = Result<CheckOutcome, CheckError>;

/// A sweep's answers as they come in, by the index of their target.
struct Answers {
    results: Vec<Option<CheckResult>>,
    to_record: mpsc::UnboundedSender<(usize, CheckToRecord)>,
}

impl Answers {
    /// Takes a finished check: its result is kept, and its record handed to the recorder.
    fn finished(&mut self, done: Result<(usize, Result<Probed, CheckError>), JoinError>) {
        match done {
            Ok((index, Ok(Probed { outcome, record }))) => {
                let check = CheckToRecord {
                    credential: outcome.credential.clone(),
                    version_id: outcome.version_id,
                    check: record,
                };
                let _ = self.to_record.send((index, check));
                self.results[index] = Some(Ok(outcome));
            }
            Ok((index, Err(error))) => self.results[index] = Some(Err(error)),
            // A check's panic is a bug: surface it as the panic it is.
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }
}

impl Answers {
    /// Waits for the recorder to write what it was handed, and answers the sweep: every
    /// target's result, a write that failed in place of its check's outcome.
    async fn written(
        self,
        mut recorder: AbortOnDrop<Vec<(usize, StoreError)>>,
        read_failed: Option<StoreError>,
        targets: &[CheckTarget],
    ) -> Result<Vec<CheckResult>, CheckError> {
        let Answers {
            mut results,
            to_record,
        } = self;
        // The recorder writes what it still holds and ends once its sender is gone.
        drop(to_record);
        let unrecorded = match (&mut recorder.0).await {
            Ok(unrecorded) => unrecorded,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => {
                let detail = error.to_string();
                return Err(unwritten(detail).into());
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
}

impl Checker {
    /// Checks every target once, at most `max_concurrent` at a time (`keyrotd check`).
    ///
    /// The keys are read in one query, still sealed, and each is opened only when its check
    /// goes out: a read per check was, with the results' writes, most of a sweep's CPU.
    /// The query runs beside the checks (a task of its own reads it to the end, so the read
    /// is not held open for the sweep), and the first checks go out with the first keys
    /// instead of after the last.
    ///
    /// Each check is a task of its own, spawned once it holds its permit (so at most
    /// `max_concurrent` exist): polled all within one task, the checks would queue for the
    /// one thread running it while the others idled.
    ///
    /// The results are written in batches by a task of their own (see [`super::recorder`]),
    /// and all of them before this returns.
    ///
    /// Results are in the order of `targets`.
    pub(crate) async fn check_all(
        self: &Arc<Self>,
        targets: &[CheckTarget],
    ) -> Result<Vec<CheckResult>, CheckError> {
        let (reader, mut keys) = self.read_keys();
        let (to_record, recording) = mpsc::unbounded_channel();
        let recorder = AbortOnDrop(tokio::spawn(record_sweep(
            self.store.clone(),
            recording,
            Batching::CHECKS,
        )));
        let index_of: HashMap<&str, usize> = targets
            .iter()
            .enumerate()
            .map(|(index, target)| (&*target.credential, index))
            .collect();
        let mut answers = Answers {
            results: std::iter::repeat_with(|| None)
                .take(targets.len())
                .collect(),
            to_record,
        };
        let mut running = JoinSet::new();
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
                answers.finished(done);
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
            answers.finished(done);
        }
        answers.written(recorder, read_failed, targets).await
    }

    /// Reads every current key, still sealed, on a task of its own; stops at the first
    /// error (sent on) or when the receiver is gone.
    fn read_keys(
        &self,
    ) -> (
        AbortOnDrop<()>,
        mpsc::UnboundedReceiver<Result<SealedKey, StoreError>>,
    ) {
        let (keys_read, keys) = mpsc::unbounded_channel();
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
        (reader, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::super::recorder::RECORD_WINDOW;
    use super::*;
    use crate::model::CheckStatus;
    use crate::store::prelude::*;
    use crate::store::{CheckRecord, Store};
    use std::time::Duration;

    /// A store with credentials `c0`, `c1`, each with a current key; their version ids.
    async fn store_with_two_keys(dir: &std::path::Path) -> (Arc<dyn Store>, Vec<i64>) {
        use crate::crypto::{MasterKey, Sealer};
        use crate::store::{CredentialSpec, NewKey, SqliteStore};
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

    fn window(window: Duration) -> Batching {
        Batching {
            window,
            ..Batching::CHECKS
        }
    }

    #[tokio::test]
    async fn a_sweep_s_results_within_the_window_share_one_write_and_the_last_goes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, versions) = store_with_two_keys(dir.path()).await;
        let generation = store.generation().await.unwrap();
        let (results, received) = mpsc::unbounded_channel();
        // A window far longer than the test may take: only the sender's end writes.
        let recorder = tokio::spawn(record_sweep(
            store.clone(),
            received,
            window(Duration::from_secs(60)),
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
        let (results, received) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_sweep(
            store.clone(),
            received,
            window(Duration::from_millis(50)),
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

    #[tokio::test]
    async fn a_daemon_s_results_go_through_the_same_store_write() {
        use crate::checks::recorder::Recorder;
        let dir = tempfile::tempdir().unwrap();
        let (store, versions) = store_with_two_keys(dir.path()).await;
        let generation = store.generation().await.unwrap();
        let (recorder, task) = Recorder::spawn(store.clone(), window(RECORD_WINDOW));
        let (c0, c1) = tokio::join!(
            recorder.record(result_of("c0", versions[0])),
            recorder.record(result_of("c1", versions[1])),
        );
        assert!(c0.is_ok() && c1.is_ok(), "{c0:?} {c1:?}");
        assert_eq!(
            store.generation().await.unwrap(),
            generation + 1,
            "one write"
        );
        assert_eq!(last_check_at(&store, "c1").await, Some(2_000));
        let gone = recorder
            .record(result_of("no-such-credential", versions[1]))
            .await;
        assert!(gone.is_err(), "a result that cannot be written is answered");
        drop(recorder);
        task.await.unwrap();
    }

    /// A provider whose answer takes `takes` seconds of the manual clock.
    struct SlowProvider {
        clock: crate::clock::ManualClock,
        takes: i64,
    }

    #[async_trait::async_trait]
    impl crate::providers::Provider for SlowProvider {
        async fn check(&self, _key: &secrecy::SecretString) -> crate::providers::CheckReport {
            self.clock.advance(self.takes);
            crate::providers::CheckReport::new(CheckStatus::Valid, "ok")
        }
    }

    #[tokio::test]
    async fn a_check_is_dated_when_its_probe_went_out_not_when_the_answer_came() {
        use crate::checks::{CheckTarget, Checker, Pacer};
        use crate::clock::Clock;
        let dir = tempfile::tempdir().unwrap();
        let (store, versions) = store_with_two_keys(dir.path()).await;
        let clock = crate::clock::ManualClock::new(5_000);
        let checker = Checker::new(store, Arc::new(clock.clone()), 1, 0.0);
        let target = CheckTarget {
            credential: Arc::from("c0"),
            provider_name: Arc::from("sim"),
            provider: Arc::new(SlowProvider {
                clock: clock.clone(),
                takes: 3,
            }),
            pacer: Arc::new(Pacer::new(1_000.0)),
            interval: Duration::from_secs(300),
        };
        let permit = checker.permit().await;
        let probed = checker.probe(&target, permit, None).await.unwrap();
        assert_eq!(probed.outcome.version_id, versions[0]);
        assert_eq!(probed.record.status, CheckStatus::Valid);
        assert_eq!(
            probed.record.at, 5_000,
            "dated when the probe went out, not when the answer came"
        );
        assert_eq!(clock.now(), 5_003);
    }
}
