//! One timer for many items: the work queue behind scheduled checks and rotations.
//!
//! A sleeping task per credential (one for checks, one for rotations) would be cheap each,
//! but many thousands would be spawned at start-up, each reading the store on its first
//! pass at the same moment: READY would wait for the spawning, the read pool would be
//! swamped, and the allocator would keep the storm's heap. Here the due times sit in one ordered set and one task
//! sleeps until the earliest; work for an item runs only when it is due, at most `parallel`
//! at once, and answers when the item is due next. An idle daemon holds a `BTreeSet` entry
//! per item and one timer.
//!
//! An item is never worked on twice at once: it leaves the set while its work runs and
//! returns with the time its work answered. Two ways to move an item from outside:
//!
//! - [`DueHandle::reschedule`] moves an item that is waiting (a periodic re-read of the
//!   store found it due earlier or later); an item whose work is running keeps the time its
//!   work will answer, since that work has just read what the re-read saw.
//! - [`DueHandle::run_no_later_than`] asks for a run by a deadline (something outside saw a
//!   reason to look at the item again); it only ever brings an item forward, and one asked
//!   for while the item's work runs is remembered and applied when the work answers: a run
//!   already under way may have started before the reason appeared, so it does not count.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long an item waits after its work panicked (a bug, logged), before it is tried again.
const AFTER_PANIC: Duration = Duration::from_secs(60);

/// A move asked for through a [`DueHandle`].
enum Move {
    /// [`DueHandle::reschedule`].
    Reschedule(usize, Option<Instant>),
    /// [`DueHandle::run_no_later_than`].
    RunNoLaterThan(usize, Instant),
}

/// Moves items of a running queue. Cloneable; dropping every handle does not stop the queue.
#[derive(Clone)]
pub(crate) struct DueHandle {
    moves: mpsc::UnboundedSender<Move>,
}

impl DueHandle {
    /// Makes a waiting item due at `at` instead, or takes it out of the queue (`None`);
    /// ignored while the item's work runs (its work answers when it is due next).
    pub(crate) fn reschedule(&self, item: usize, at: Option<Instant>) {
        let _ = self.moves.send(Move::Reschedule(item, at));
    }

    /// Makes sure the item's work starts no later than `at`: a waiting item due later (or
    /// not due at all) becomes due at `at`, one due earlier keeps its time. While the
    /// item's work runs, the request is kept and applied when the work answers: the item is
    /// then due at the earlier of its answer and `at`, so a run that began before the
    /// request never stands in for it.
    pub(crate) fn run_no_later_than(&self, item: usize, at: Instant) {
        let _ = self.moves.send(Move::RunNoLaterThan(item, at));
    }
}

/// The receiving end of a [`DueHandle`], given to [`run`].
pub(crate) struct Moves(mpsc::UnboundedReceiver<Move>);

pub(crate) fn channel() -> (DueHandle, Moves) {
    let (moves, moved) = mpsc::unbounded_channel();
    (DueHandle { moves }, Moves(moved))
}

/// Runs the queue until the future is dropped (which aborts the work in flight too).
/// `first` gives each item's first due time (an item left out waits for a
/// [`DueHandle`] to move it); `work(item)` runs when the item is due and answers when it is
/// due next (`None`: not until rescheduled).
pub(crate) async fn run<W, F>(
    name: &'static str,
    first: Vec<(usize, Instant)>,
    parallel: usize,
    work: W,
    moves: Moves,
) where
    W: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Instant>> + Send + 'static,
{
    Queue::new(first)
        .run(name, parallel.max(1), work, moves.0)
        .await
}

/// [`run`] on its own task; aborting the task stops the queue and its work.
#[cfg(test)]
fn spawn<W, F>(
    name: &'static str,
    first: Vec<(usize, Instant)>,
    parallel: usize,
    work: W,
) -> (tokio::task::JoinHandle<()>, DueHandle)
where
    W: Fn(usize) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Instant>> + Send + 'static,
{
    let (handle, moves) = channel();
    let task = tokio::spawn(run(name, first, parallel, work, moves));
    (task, handle)
}

/// The waiting items, ordered by due time (ties by item, so entries are unique).
struct Queue {
    waiting: BTreeSet<(Instant, usize)>,
    /// Each waiting item's due time, indexed by item. Items are the callers' dense indices
    /// (0..n), so a vector holds them in less than a hash map would with its spare
    /// capacity.
    due_at: Vec<Option<Instant>>,
    /// The earliest [`DueHandle::run_no_later_than`] asked for each item whose work is
    /// running, applied when that work answers. At most `parallel` entries.
    asked_while_running: HashMap<usize, Instant>,
}

impl Queue {
    fn new(first: Vec<(usize, Instant)>) -> Queue {
        let items = first.iter().map(|&(item, _)| item + 1).max().unwrap_or(0);
        let mut queue = Queue {
            waiting: BTreeSet::new(),
            due_at: vec![None; items],
            asked_while_running: HashMap::new(),
        };
        for (item, at) in first {
            queue.put(item, Some(at));
        }
        queue
    }

    fn put(&mut self, item: usize, at: Option<Instant>) {
        if let Some(old) = self.due_at.get_mut(item).and_then(Option::take) {
            self.waiting.remove(&(old, item));
        }
        if let Some(at) = at {
            if item >= self.due_at.len() {
                self.due_at.resize(item + 1, None);
            }
            self.due_at[item] = Some(at);
            self.waiting.insert((at, item));
        }
    }

    /// Brings a waiting item forward to `at` if it is due later or not at all.
    fn bring_forward(&mut self, item: usize, at: Instant) {
        let due = self.due_at.get(item).copied().flatten();
        if due.is_none_or(|due| at < due) {
            self.put(item, Some(at));
        }
    }

    /// Remembers a deadline asked for while the item's work runs (the earliest one wins).
    fn ask_while_running(&mut self, item: usize, at: Instant) {
        self.asked_while_running
            .entry(item)
            .and_modify(|asked| *asked = (*asked).min(at))
            .or_insert(at);
    }

    /// Puts back an item whose work answered `next`, no later than a deadline asked for
    /// while it ran.
    fn answered(&mut self, item: usize, next: Option<Instant>) {
        let next = match (next, self.asked_while_running.remove(&item)) {
            (Some(next), Some(asked)) => Some(next.min(asked)),
            (next, asked) => next.or(asked),
        };
        self.put(item, next);
    }

    /// The earliest item if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &(at, item) = self.waiting.first()?;
        if at > now {
            return None;
        }
        self.waiting.pop_first();
        self.due_at[item] = None;
        Some(item)
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.first().map(|&(at, _)| at)
    }

    async fn run<W, F>(
        mut self,
        name: &'static str,
        parallel: usize,
        work: W,
        mut moved: mpsc::UnboundedReceiver<Move>,
    ) where
        W: Fn(usize) -> F + Send + Sync + 'static,
        F: Future<Output = Option<Instant>> + Send + 'static,
    {
        let mut running: JoinSet<(usize, Option<Instant>)> = JoinSet::new();
        // Which item a task works on, to put it back if the work panics.
        let mut running_items: HashMap<tokio::task::Id, usize> = HashMap::new();
        let mut moves_open = true;
        loop {
            // Start everything due, as far as the parallelism allows.
            let now = Instant::now();
            while running.len() < parallel {
                let Some(item) = self.pop_due(now) else { break };
                let future = work(item);
                let handle = running.spawn(async move { (item, future.await) });
                running_items.insert(handle.id(), item);
            }
            // Sleeping on the earliest due time only when a slot is free to act on it.
            let wake = if running.len() < parallel {
                self.next_due()
            } else {
                None
            };
            tokio::select! {
                _ = async { tokio::time::sleep_until(wake.expect("checked")).await }, if wake.is_some() => {}
                Some(joined) = running.join_next_with_id(), if !running.is_empty() => match joined {
                    Ok((id, (item, next))) => {
                        running_items.remove(&id);
                        self.answered(item, next);
                    }
                    Err(error) => {
                        if let Some(item) = running_items.remove(&error.id()) {
                            if error.is_panic() {
                                tracing::error!(queue = name, item, "scheduled work panicked; trying again in a minute");
                            }
                            self.answered(item, Some(Instant::now() + AFTER_PANIC));
                        }
                    }
                },
                next = moved.recv(), if moves_open => {
                    let is_running = |item| running_items.values().any(|&running| running == item);
                    match next {
                        Some(Move::Reschedule(item, at)) => {
                            if !is_running(item) {
                                self.put(item, at);
                            }
                        }
                        Some(Move::RunNoLaterThan(item, at)) => {
                            if is_running(item) {
                                self.ask_while_running(item, at);
                            } else {
                                self.bring_forward(item, at);
                            }
                        }
                        None => moves_open = false,
                    }
                }
                // Nothing waiting, nothing running, and nobody left to add anything.
                else => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn items_run_when_due_in_order_and_come_back() {
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let (task, _handle) = spawn(
            "test",
            vec![
                (0, start + Duration::from_secs(30)),
                (1, start + Duration::from_secs(10)),
                (2, start + Duration::from_secs(20)),
            ],
            4,
            move |item| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((item, start.elapsed().as_secs()));
                    // Every item comes back 100 s later.
                    Some(Instant::now() + Duration::from_secs(100))
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(125)).await;
        task.abort();
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, 10), (2, 20), (0, 30), (1, 110), (2, 120)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_parallel_run_at_once_and_none_twice() {
        let start = Instant::now();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (r, p, d) = (running.clone(), peak.clone(), done.clone());
        let first = (0..10).map(|i| (i, start)).collect();
        let (task, _handle) = spawn("test", first, 3, move |item| {
            let (running, peak, done) = (r.clone(), p.clone(), d.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(1)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.lock().unwrap().push(item);
                None
            }
        });
        tokio::time::sleep(Duration::from_secs(10)).await;
        task.abort();
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let mut done = done.lock().unwrap().clone();
        done.sort();
        assert_eq!(done, (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn reschedule_moves_a_waiting_item_and_a_panic_retries_later() {
        let start = Instant::now();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let (task, handle) = spawn(
            "test",
            vec![(0, start + Duration::from_secs(1000)), (1, start)],
            2,
            move |item| {
                let seen = seen.clone();
                async move {
                    let elapsed = start.elapsed().as_secs();
                    seen.lock().unwrap().push((item, elapsed));
                    if item == 1 && elapsed == 0 {
                        panic!("first pass of item 1 fails");
                    }
                    Some(Instant::now() + Duration::from_secs(10_000))
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.reschedule(0, Some(start + Duration::from_secs(5)));
        tokio::time::sleep(Duration::from_secs(100)).await;
        task.abort();
        assert_eq!(
            *log.lock().unwrap(),
            vec![(1, 0), (0, 5), (1, AFTER_PANIC.as_secs())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_no_later_than_asked_while_the_work_runs_is_applied_when_it_answers() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let first = (0..4).map(|item| (item, start)).collect();
        let (task, handle) = spawn("test", first, 4, move |item| {
            let seen = seen.clone();
            async move {
                let elapsed = start.elapsed().as_secs();
                seen.lock().unwrap().push((item, elapsed));
                tokio::time::sleep(Duration::from_secs(10)).await;
                if item == 3 && elapsed == 0 {
                    panic!("first pass of item 3 fails");
                }
                Some(Instant::now() + Duration::from_secs(1000))
            }
        });
        // Every item's work runs from 0 s to 10 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Asked twice: the earlier deadline wins, already past when the work answers.
        handle.run_no_later_than(0, at(7));
        handle.run_no_later_than(0, at(5));
        // The old move is still ignored while the work runs.
        handle.reschedule(1, Some(at(5)));
        // A deadline after the answer: due then, not at the answer's 1010 s.
        handle.run_no_later_than(2, at(50));
        // A panic's minute of rest is cut short too.
        handle.run_no_later_than(3, at(5));
        tokio::time::sleep(Duration::from_secs(98)).await;
        task.abort();
        let mut runs = log.lock().unwrap().clone();
        runs.sort_by_key(|&(item, elapsed)| (elapsed, item));
        assert_eq!(
            runs,
            vec![(0, 0), (1, 0), (2, 0), (3, 0), (0, 10), (3, 10), (2, 50)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_no_later_than_brings_a_waiting_item_forward_never_back() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let (task, handle) = spawn(
            "test",
            vec![(0, at(100)), (1, at(100)), (2, start)],
            4,
            move |item| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((item, start.elapsed().as_secs()));
                    // Item 2 leaves the queue after each run.
                    (item != 2).then(|| Instant::now() + Duration::from_secs(10_000))
                }
            },
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.run_no_later_than(0, at(200));
        handle.run_no_later_than(1, at(30));
        tokio::time::sleep(Duration::from_secs(39)).await;
        handle.run_no_later_than(2, at(60));
        tokio::time::sleep(Duration::from_secs(100)).await;
        task.abort();
        assert_eq!(
            *log.lock().unwrap(),
            vec![(2, 0), (1, 30), (2, 60), (0, 100)]
        );
    }

    #[test]
    fn put_moves_removes_and_takes_items_beyond_the_first_ones() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut queue = Queue::new(vec![(0, at(5)), (2, at(1))]);
        // An item left out of `first`, and one past the largest first item.
        queue.put(1, Some(at(3)));
        queue.put(7, Some(at(2)));
        // Moved later, then taken out.
        queue.put(2, Some(at(9)));
        queue.put(0, None);
        queue.put(0, None);
        assert_eq!(queue.next_due(), Some(at(2)));
        assert_eq!(queue.pop_due(at(1)), None);
        let mut order = Vec::new();
        while let Some(item) = queue.pop_due(at(100)) {
            order.push(item);
        }
        assert_eq!(order, [7, 1, 2]);
        assert_eq!(queue.next_due(), None);
        assert!(queue.due_at.iter().all(Option::is_none));
        // Popped items can come back.
        queue.put(7, Some(at(4)));
        assert_eq!(queue.pop_due(at(4)), Some(7));
    }
}
