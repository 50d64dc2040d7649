//! The simulator's added latency, held to within the OS timer's slack.
//!
//! Why not `tokio::time::sleep`: tokio's timer has millisecond ticks, rounds every sleep up to
//! the next tick and fires it only when a worker next turns its driver. Under the 10,000-key
//! benchmark sweep a 50 ms sleep held answers 51.1–52.3 ms on average (p90 up to 55 ms), and
//! the sweep's bound (N × 50 ms / concurrency) counted those milliseconds against keyrotd.
//! Instead one thread sleeps to each deadline on the OS timer (tens of µs late) and releases
//! the requests that are due. The thread starts with the first non-zero latency, so tests
//! and the demo, which add none, never start it.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long answers were held since the latency was last set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeldAnswers {
    /// Requests held.
    pub count: u64,
    /// Their hold times added up.
    pub total: Duration,
    /// The longest hold.
    pub max: Duration,
}

impl HeldAnswers {
    /// The mean hold; zero when nothing was held.
    pub fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.total / self.count as u32
        }
    }
}

/// Holds each request for the configured latency. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct Latency {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Signalled when an earlier deadline arrives or the simulator stops.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    added: Duration,
    /// Waiting requests by deadline; the sequence number keeps equal deadlines apart.
    due: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    next_seq: u64,
    thread_started: bool,
    closed: bool,
    held: HeldAnswers,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Latency {
    /// From now on every request is held `added` (zero: not at all); the counts start over.
    pub(super) fn set(&self, added: Duration) {
        let mut state = self.inner.state();
        state.added = added;
        state.held = HeldAnswers::default();
        if added > Duration::ZERO && !state.thread_started && !state.closed {
            let inner = self.inner.clone();
            let spawned = std::thread::Builder::new()
                .name("sim-latency".into())
                .spawn(move || release_when_due(&inner));
            // Without the thread, hold() would wait forever: hold nothing instead.
            match spawned {
                Ok(_) => state.thread_started = true,
                Err(error) => {
                    tracing::warn!(%error, "simulator: cannot start the latency thread; adding none");
                    state.added = Duration::ZERO;
                }
            }
        }
    }

    /// Waits out the added latency, counted from now. Returns at once when none is set or
    /// the simulator has stopped (a stop releases every held request).
    pub(super) async fn hold(&self) {
        let arrived = Instant::now();
        let released = {
            let mut state = self.inner.state();
            if state.added.is_zero() || state.closed {
                return;
            }
            let deadline = arrived + state.added;
            let seq = state.next_seq;
            state.next_seq += 1;
            let (release, released) = oneshot::channel();
            state.due.insert((deadline, seq), release);
            let earliest = state.due.keys().next() == Some(&(deadline, seq));
            drop(state);
            if earliest {
                self.inner.changed.notify_one();
            }
            released
        };
        // An Err means the stop dropped the sender: released early, like every held request.
        let _ = released.await;
        let held = arrived.elapsed();
        let mut state = self.inner.state();
        state.held.count += 1;
        state.held.total += held;
        state.held.max = state.held.max.max(held);
    }

    /// How long answers were held since the latency was last set.
    pub(super) fn held(&self) -> HeldAnswers {
        self.inner.state().held
    }

    /// Releases every held request and ends the thread.
    pub(super) fn close(&self) {
        let mut state = self.inner.state();
        state.closed = true;
        state.due.clear();
        drop(state);
        self.inner.changed.notify_all();
    }
}

/// The latency thread: releases what is due, then sleeps until the next deadline or a change.
fn release_when_due(inner: &Inner) {
    let mut state = inner.state();
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        while let Some(entry) = state.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            // The receiver may be gone (its connection closed): nothing to release then.
            let _ = entry.remove().send(());
        }
        state = match state.due.keys().next() {
            Some(&(deadline, _)) => {
                let wait = deadline.saturating_duration_since(now);
                inner
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => inner.changed.wait(state).unwrap_or_else(|e| e.into_inner()),
        };
    }
}
