//! Check results are written to the store in batches, and this is the one place that
//! gathers them: the daemon's scheduled checks and the `keyrotd check` sweep both hand their
//! results here, and a store backend only writes the batch it is given, in one transaction
//! ([`CheckStore::record_checks`](crate::store::CheckStore::record_checks)).
//!
//! A transaction costs about the same whatever its size (a commit is an fsync), so results
//! are gathered for a short window before they are written; the window bounds how long a
//! result waits while more come, and the last batch is written as soon as the input ends.

use crate::store::{CheckToRecord, Store, StoreError, StoreResult};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a batch of check results is gathered, at most, before it is written.
pub(crate) const RECORD_WINDOW: Duration = Duration::from_millis(25);

/// A batch is written once it holds this many results, window or not.
const RECORD_BATCH: usize = 1024;

/// How results are gathered into batches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    /// The longest a batch's first result waits for more.
    pub window: Duration,
    /// A batch this large is written at once.
    pub max_batch: usize,
}

impl Batching {
    /// What the daemon and the sweep use.
    pub(crate) const CHECKS: Batching = Batching {
        window: RECORD_WINDOW,
        max_batch: RECORD_BATCH,
    };
}

/// Where batches go: the store, or a fake in the tests.
#[async_trait]
pub(crate) trait WriteChecks: Send + Sync + 'static {
    /// Writes `checks` together; one answer per record, in order.
    async fn write_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>>;
}

#[async_trait]
impl WriteChecks for Arc<dyn Store> {
    async fn write_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
        self.record_checks(checks).await
    }
}

/// The error of a result whose write never answered (the recorder was stopped first).
pub(crate) fn unwritten(detail: String) -> StoreError {
    StoreError::ChecksNotWritten { reason: detail }
}

/// Writes the results received, in batches, until every sender is gone (and then what is
/// left at once); `answer` learns how each result's write went, by the submitter's ticket.
pub(crate) async fn write_in_batches<T, W>(
    writer: W,
    mut results: mpsc::UnboundedReceiver<(T, CheckToRecord)>,
    batching: Batching,
    mut answer: impl FnMut(T, StoreResult<()>),
) where
    W: WriteChecks,
{
    let max_batch = batching.max_batch.max(1);
    let mut batch: Vec<(T, CheckToRecord)> = Vec::new();
    while results.recv_many(&mut batch, max_batch).await > 0 {
        let window = tokio::time::sleep(batching.window);
        tokio::pin!(window);
        while batch.len() < max_batch {
            let room = max_batch - batch.len();
            tokio::select! {
                received = results.recv_many(&mut batch, room) => if received == 0 { break },
                () = &mut window => break,
            }
        }
        let (tickets, checks): (Vec<T>, Vec<CheckToRecord>) = batch.drain(..).unzip();
        let written = writer.write_checks(checks).await;
        let mut written = written.into_iter();
        for ticket in tickets {
            let result = written
                .next()
                .unwrap_or_else(|| Err(unwritten("the store gave no answer".into())));
            answer(ticket, result);
        }
    }
}

/// Writes a sweep's results, each sent with its index, and answers the indices whose
/// result could not be written.
pub(crate) async fn record_sweep<W: WriteChecks>(
    writer: W,
    results: mpsc::UnboundedReceiver<(usize, CheckToRecord)>,
    batching: Batching,
) -> Vec<(usize, StoreError)> {
    let mut unrecorded = Vec::new();
    write_in_batches(writer, results, batching, |index, written| {
        if let Err(error) = written {
            unrecorded.push((index, error));
        }
    })
    .await;
    unrecorded
}

/// The daemon's way in: each scheduled check hands its result over and waits for the answer
/// (a result that cannot be written is retried like a check that could not run).
#[derive(Clone)]
pub(crate) struct Recorder {
    results: mpsc::UnboundedSender<(oneshot::Sender<StoreResult<()>>, CheckToRecord)>,
}

impl Recorder {
    /// Starts the task that writes the results. It ends once every clone of the recorder is
    /// dropped, after writing what it still holds: a check cut short after handing its
    /// result over does not lose it.
    pub(crate) fn spawn<W: WriteChecks>(
        writer: W,
        batching: Batching,
    ) -> (Recorder, JoinHandle<()>) {
        let (results, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_in_batches(
            writer,
            received,
            batching,
            |reply: oneshot::Sender<StoreResult<()>>, written| {
                // The submitter may be gone (its check was aborted); the write stands.
                let _ = reply.send(written);
            },
        ));
        (Recorder { results }, task)
    }

    /// Writes one result with the others of its batch; answers once it is written.
    pub(crate) async fn record(&self, check: CheckToRecord) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        if self.results.send((reply, check)).is_err() {
            return Err(unwritten("the check recorder has stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(unwritten("the check result was not written".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CheckStatus;
    use crate::store::CheckRecord;
    use std::sync::Mutex;
    use tokio::time::Instant;

    /// Records each batch it is given (its credentials, and when); fails the records of a
    /// credential named `bad`.
    #[derive(Clone, Default)]
    struct Batches(Arc<Mutex<Vec<Written>>>);

    /// When a batch was written, and the credentials of its results.
    type Written = (Instant, Vec<String>);

    impl Batches {
        fn written(&self) -> Vec<Written> {
            self.0.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl WriteChecks for Batches {
        async fn write_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>> {
            let names = checks.iter().map(|c| c.credential.clone()).collect();
            self.0.lock().unwrap().push((Instant::now(), names));
            checks
                .iter()
                .map(|c| match c.credential.as_str() {
                    "bad" => Err(StoreError::UnknownCredential("bad".into())),
                    _ => Ok(()),
                })
                .collect()
        }
    }

    fn result_of(credential: &str) -> CheckToRecord {
        CheckToRecord {
            credential: credential.to_string(),
            version_id: 1,
            check: CheckRecord {
                status: CheckStatus::Valid,
                detail: "ok".into(),
                at: 2_000,
                credits: Vec::new(),
                expires_at: None,
            },
        }
    }

    const WINDOW: Duration = Duration::from_millis(25);

    fn batching(max_batch: usize) -> Batching {
        Batching {
            window: WINDOW,
            max_batch,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scheduled_results_within_the_window_share_one_write() {
        let batches = Batches::default();
        let (recorder, task) = Recorder::spawn(batches.clone(), batching(1024));
        let start = Instant::now();
        let first = tokio::spawn({
            let recorder = recorder.clone();
            async move { recorder.record(result_of("c0")).await }
        });
        tokio::time::sleep(WINDOW / 2).await;
        let second = recorder.record(result_of("c1")).await;
        assert!(second.is_ok(), "{second:?}");
        assert!(first.await.unwrap().is_ok());
        let written = batches.written();
        assert_eq!(written.len(), 1, "one write: {written:?}");
        assert_eq!(written[0].1, ["c0", "c1"]);
        assert_eq!(
            written[0].0 - start,
            WINDOW,
            "the window opens with the first result"
        );
        drop(recorder);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_scheduled_result_waits_no_longer_than_the_window() {
        let batches = Batches::default();
        // The recorder stays open (the daemon runs on), and the result is written anyway.
        let (recorder, _task) = Recorder::spawn(batches.clone(), batching(1024));
        let start = Instant::now();
        recorder.record(result_of("c0")).await.unwrap();
        assert_eq!(start.elapsed(), WINDOW);
        assert_eq!(batches.written().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn when_the_schedule_stops_its_last_results_are_written_at_once() {
        let batches = Batches::default();
        let (recorder, task) = Recorder::spawn(batches.clone(), batching(1024));
        let start = Instant::now();
        // A check cut short after handing its result over (a reload aborts the schedule).
        let cut_short = tokio::spawn({
            let recorder = recorder.clone();
            async move { recorder.record(result_of("c0")).await }
        });
        tokio::task::yield_now().await;
        cut_short.abort();
        drop(recorder);
        task.await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "not after the window");
        assert_eq!(batches.written().len(), 1, "the result was written");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_scheduled_result_is_answered_to_its_check_alone() {
        let batches = Batches::default();
        let (recorder, _task) = Recorder::spawn(batches.clone(), batching(1024));
        let (good, bad) = tokio::join!(
            recorder.record(result_of("c0")),
            recorder.record(result_of("bad")),
        );
        assert!(good.is_ok(), "{good:?}");
        assert!(
            matches!(bad, Err(StoreError::UnknownCredential(_))),
            "{bad:?}"
        );
        assert_eq!(batches.written().len(), 1, "in the same write");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_written_without_waiting_for_the_window() {
        let batches = Batches::default();
        let (results, received) = mpsc::unbounded_channel();
        let start = Instant::now();
        for (index, name) in ["c0", "c1", "c2"].into_iter().enumerate() {
            results.send((index, result_of(name))).unwrap();
        }
        let recorder = tokio::spawn(record_sweep(batches.clone(), received, batching(2)));
        tokio::time::sleep(WINDOW / 2).await;
        let written = batches.written();
        assert_eq!(written.len(), 1, "{written:?}");
        assert_eq!(written[0].1, ["c0", "c1"]);
        assert_eq!(written[0].0, start);
        drop(results);
        assert!(recorder.await.unwrap().is_empty());
        assert_eq!(batches.written().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_s_failed_result_is_answered_by_its_index() {
        let batches = Batches::default();
        let (results, received) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_sweep(batches.clone(), received, batching(1024)));
        results.send((0, result_of("c0"))).unwrap();
        results.send((7, result_of("bad"))).unwrap();
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
}
