//! The simulator's added latency, and how long it really held each answer.
//!
//! A request waits out the latency on tokio's timer, which has millisecond ticks and rounds
//! a sleep up to the next one: under the 10,000-key benchmark sweep a 50 ms latency held
//! answers 51.1–52.3 ms on average. The benchmark's bound assumes exactly the configured
//! latency, so the simulator counts what it really added and the harness reports it beside
//! the ratio. (A thread of its own sleeping to each deadline held answers closer to 50 ms,
//! but released them one by one across threads, and at 100,000 keys the sweep measured
//! slower with it: BENCHMARKS.md, round 6.)

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
            self.total.div_f64(self.count as f64)
        }
    }
}

/// The latency added to every answer, and the record of what was added.
#[derive(Default)]
pub(super) struct Latency {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    added: Duration,
    held: HeldAnswers,
}

impl Latency {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on every request is held `added` (zero: not at all); the counts start over.
    pub(super) fn set(&self, added: Duration) {
        let mut state = self.state();
        state.added = added;
        state.held = HeldAnswers::default();
    }

    /// Waits out the added latency, counted from now; a stop of the simulator ends the wait.
    pub(super) async fn hold(&self, stop: &watch::Receiver<bool>) {
        let arrived = Instant::now();
        let added = self.state().added;
        if added.is_zero() {
            return;
        }
        super::sleep_until_or_stop((arrived + added).into(), stop.clone()).await;
        let held = arrived.elapsed();
        let mut state = self.state();
        state.held.count += 1;
        state.held.total += held;
        state.held.max = state.held.max.max(held);
    }

    /// How long answers were held since the latency was last set.
    pub(super) fn held(&self) -> HeldAnswers {
        self.state().held
    }
}
