//! The simulator's added latency, and how long it really held each answer.
//!
//! Held answers wait in one queue, ordered by deadline, released by one timerfd armed for
//! the earliest (nanosecond deadlines, woken through the runtime's own epoll). tokio's timer
//! has millisecond ticks and rounds every sleep up to the next one, which would count the
//! simulator's own lateness against the sweep being measured; a thread sleeping to each
//! deadline releases answers one by one across threads, which costs more than it saves at
//! large scale (BENCHMARKS.md has the comparison). The simulator still counts what it really
//! added, and the harness reports it beside the ratio.

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, watch, Notify};

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

/// The latency added to every answer, the answers it holds, and the record of what was
/// added.
#[derive(Default)]
pub(super) struct Latency {
    state: Mutex<State>,
    /// Told when a hold becomes the earliest deadline, so the timer is re-armed for it.
    earlier: Notify,
}

#[derive(Default)]
struct State {
    added: Duration,
    held: HeldAnswers,
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Orders holds with the same deadline.
    next_sequence: u64,
    /// The release timer failed: holds sleep on tokio's timer instead (late, never hung).
    timer_failed: bool,
}

/// How a request waits out its latency.
enum Held {
    /// In the queue, until the release timer lets it go.
    Queued(oneshot::Receiver<()>),
    /// Until this instant, on tokio's timer (the release timer failed).
    OnTokioTimer(Instant),
}

/// A held answer: released by dropping or firing `release`.
struct Waiting {
    /// On `CLOCK_MONOTONIC`, the clock the timerfd is armed on.
    deadline: Duration,
    sequence: u64,
    release: oneshot::Sender<()>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.sequence) == (other.deadline, other.sequence)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.sequence).cmp(&(other.deadline, other.sequence))
    }
}

fn monotonic_now() -> Duration {
    clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(Duration::from)
        .expect("CLOCK_MONOTONIC is always readable")
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

    /// Waits out the added latency, counted from now, until [`release_held`] lets the answer
    /// go; a stop of the simulator ends the wait.
    pub(super) async fn hold(&self, stop: &watch::Receiver<bool>) {
        let arrived = Instant::now();
        let Some(held) = self.enqueue(arrived) else {
            return;
        };
        let mut stop = stop.clone();
        match held {
            // Released, or dropped when the release task ends: either way the wait is over.
            // A request that arrives after a stop is not held for a timer that is gone.
            Held::Queued(released) => tokio::select! {
                _ = released => {}
                () = super::stopped(&mut stop) => {}
            },
            Held::OnTokioTimer(deadline) => {
                super::sleep_until_or_stop(deadline.into(), stop).await;
            }
        }
        self.count_held(arrived.elapsed());
    }

    /// Queues a request that arrived at `arrived` for release; `None` when nothing is added.
    fn enqueue(&self, arrived: Instant) -> Option<Held> {
        let mut state = self.state();
        if state.added.is_zero() {
            return None;
        }
        if state.timer_failed {
            return Some(Held::OnTokioTimer(arrived + state.added));
        }
        let (release, released) = oneshot::channel();
        let deadline = monotonic_now() + state.added;
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let earliest = state
            .waiting
            .peek()
            .is_none_or(|Reverse(head)| deadline < head.deadline);
        state.waiting.push(Reverse(Waiting {
            deadline,
            sequence,
            release,
        }));
        if earliest {
            self.earlier.notify_one();
        }
        Some(Held::Queued(released))
    }

    fn count_held(&self, held: Duration) {
        let mut state = self.state();
        state.held.count += 1;
        state.held.total += held;
        state.held.max = state.held.max.max(held);
    }

    /// How long answers were held since the latency was last set.
    pub(super) fn held(&self) -> HeldAnswers {
        self.state().held
    }

    /// Releases every answer whose deadline has passed; answers the earliest one left.
    fn release_due(&self) -> Option<Duration> {
        let mut state = self.state();
        let now = monotonic_now();
        while let Some(Reverse(head)) = state.waiting.peek() {
            if head.deadline > now {
                return Some(head.deadline);
            }
            let Some(Reverse(due)) = state.waiting.pop() else {
                break;
            };
            let _ = due.release.send(());
        }
        None
    }
}

/// A timerfd, as [`AsyncFd`] wants it.
pub(super) struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The timer that releases held answers: made when the simulator starts, so a failure to
/// make it is the start's error rather than a hang later.
pub(super) fn release_timer() -> std::io::Result<AsyncFd<Timer>> {
    let timer = TimerFd::new(
        ClockId::CLOCK_MONOTONIC,
        TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
    )?;
    // `new` is deprecated for wrappers whose descriptor may change or close while
    // registered; `Timer` owns its descriptor and the `AsyncFd` owns the `Timer`, and the
    // crate forbids the `unsafe` its replacement, `register`, asks for.
    #[allow(deprecated)]
    AsyncFd::with_interest(Timer(timer), Interest::READABLE)
}

/// Releases held answers at their deadlines until the simulator stops, then lets every
/// answer still held go.
pub(super) async fn release_held(
    latency: Arc<super::Shared>,
    timer: AsyncFd<Timer>,
    mut stop: watch::Receiver<bool>,
) {
    let latency = &latency.latency;
    loop {
        if let Some(next) = latency.release_due() {
            let armed = timer.get_ref().0.set(
                Expiration::OneShot(TimeSpec::from(next)),
                TimerSetTimeFlags::TFD_TIMER_ABSTIME,
            );
            if let Err(error) = armed {
                tracing::error!(%error, "simulator: cannot arm the latency timer");
                break;
            }
        }
        tokio::select! {
            ready = timer.readable() => match ready {
                Ok(mut ready) => match ready.try_io(|timer| timer.get_ref().0.wait().map_err(std::io::Error::from)) {
                    // Expired (the count is read), or not yet (the readiness is cleared):
                    // either way, look at the queue again.
                    Ok(Ok(())) | Err(_) => {}
                    Ok(Err(error)) => {
                        tracing::error!(%error, "simulator: cannot read the latency timer");
                        break;
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "simulator: the latency timer failed");
                    break;
                }
            },
            () = latency.earlier.notified() => {}
            () = super::stopped(&mut stop) => {
                latency.state().waiting.clear();
                return;
            }
        }
    }
    // Only a failed timer gets here: what it held, and what comes next, wait on tokio's.
    let mut state = latency.state();
    state.timer_failed = true;
    for Reverse(held) in std::mem::take(&mut state.waiting) {
        let remaining = held.deadline.saturating_sub(monotonic_now());
        tokio::spawn(async move {
            tokio::time::sleep(remaining).await;
            let _ = held.release.send(());
        });
    }
}
