//! The daemon's proof of life: a timestamp that a ticker renews every
//! [`HEARTBEAT_INTERVAL`], and everything that judges the daemon by it.
//!
//! Three readers follow the same beat: `/readyz` (not ready once it is stale), the
//! `keyrotd_scheduler_heartbeat_timestamp_seconds` gauge (alerting on a stalled daemon), and
//! the systemd watchdog pinger, which stops pinging when the beat stops, so a stuck daemon
//! gets restarted. Keeping the state, the ticker, the freshness rule and the pinger in one
//! place keeps them agreeing on what "fresh" means.
//!
//! Time is injectable: the heartbeat reads its [`Clock`], so a test stalls it by not running
//! the ticker (or stopping it) and moving a `ManualClock` past [`HEARTBEAT_MAX_AGE`].
//!
//! The ticker is a plain tokio interval: it wakes the process only when a beat is due. Due
//! times of checks and rotations live in the store and their own queues (`checks`,
//! `rotation::schedule`); nothing here starts work.

use crate::clock::Clock;
use crate::model::UnixTime;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the ticker proves the daemon is alive.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// How stale the heartbeat may be before the daemon reports itself not ready.
pub(crate) const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(60);

/// The time of the last beat, shared by the ticker (writer) and its readers.
pub struct Heartbeat {
    clock: Arc<dyn Clock>,
    /// Unix time of the last beat; 0 before the first.
    last: AtomicI64,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("last", &self.last())
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// A heartbeat that has not beaten yet, judged by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Heartbeat {
        Heartbeat {
            clock,
            last: AtomicI64::new(0),
        }
    }

    /// Records a beat now.
    pub(crate) fn beat(&self) {
        self.last.store(self.clock.now(), Ordering::SeqCst);
    }

    /// Unix time of the last beat; 0 if there was none.
    pub(crate) fn last(&self) -> UnixTime {
        self.last.load(Ordering::SeqCst)
    }

    /// Whether the daemon counts as alive: it beat within [`HEARTBEAT_MAX_AGE`].
    pub(crate) fn is_fresh(&self) -> bool {
        self.is_fresh_within(HEARTBEAT_MAX_AGE)
    }

    /// Whether there was a beat and it is at most `max_age` old.
    pub(crate) fn is_fresh_within(&self, max_age: Duration) -> bool {
        let last = self.last();
        last > 0 && self.clock.now() - last <= max_age.as_secs() as i64
    }
}

/// The task that beats the heartbeat.
pub(crate) struct Ticker {
    beating: JoinHandle<()>,
}

impl Ticker {
    /// Beats once now, then every [`HEARTBEAT_INTERVAL`].
    pub fn start(heartbeat: Arc<Heartbeat>) -> Ticker {
        heartbeat.beat();
        let beating = tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
            // After a stall (a suspended VM), beat once and go on; no burst of missed beats.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                heartbeat.beat();
            }
        });
        Ticker { beating }
    }

    pub(crate) async fn stop(self) {
        self.beating.abort();
        let _ = self.beating.await;
    }
}

/// How fresh the heartbeat must be for the watchdog to be pinged, for a watchdog that
/// expects a ping every `watchdog_interval`: at most [`HEARTBEAT_MAX_AGE`] and the
/// watchdog's own interval, but never shorter than two beats, or a short watchdog would
/// starve between two healthy beats.
pub(crate) fn watchdog_max_age(watchdog_interval: Duration) -> Duration {
    HEARTBEAT_MAX_AGE
        .min(watchdog_interval)
        .max(2 * HEARTBEAT_INTERVAL)
}

/// Calls `ping` every half `watchdog_interval` while the heartbeat is fresh (see
/// [`watchdog_max_age`]), and logs instead while it is stale, so that a stuck daemon is
/// restarted by systemd.
pub(crate) fn spawn_watchdog(
    heartbeat: Arc<Heartbeat>,
    watchdog_interval: Duration,
    mut ping: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    let max_age = watchdog_max_age(watchdog_interval);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(watchdog_interval / 2);
        loop {
            ticker.tick().await;
            if heartbeat.is_fresh_within(max_age) {
                ping();
            } else {
                tracing::error!("heartbeat is stale; not feeding the watchdog");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_heartbeat_is_fresh_for_its_max_age_after_a_beat() {
        let clock = ManualClock::new(1_000);
        let heartbeat = Heartbeat::new(Arc::new(clock.clone()));
        assert!(!heartbeat.is_fresh(), "no beat yet");
        assert_eq!(heartbeat.last(), 0);

        heartbeat.beat();
        assert_eq!(heartbeat.last(), 1_000);
        assert!(heartbeat.is_fresh());
        clock.advance(HEARTBEAT_MAX_AGE.as_secs() as i64);
        assert!(heartbeat.is_fresh(), "exactly the max age is still fresh");
        clock.advance(1);
        assert!(!heartbeat.is_fresh(), "one second more is stale");

        heartbeat.beat();
        assert!(heartbeat.is_fresh(), "a new beat makes it fresh again");
        assert!(heartbeat.is_fresh_within(Duration::ZERO));
        clock.advance(1);
        assert!(!heartbeat.is_fresh_within(Duration::ZERO));
    }

    #[test]
    fn the_watchdog_window_spans_two_beats_and_at_most_the_max_age() {
        assert_eq!(
            watchdog_max_age(Duration::from_secs(2)),
            2 * HEARTBEAT_INTERVAL
        );
        assert_eq!(
            watchdog_max_age(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            watchdog_max_age(Duration::from_secs(600)),
            HEARTBEAT_MAX_AGE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_pinged_only_while_the_heartbeat_is_fresh() {
        let clock = ManualClock::new(1_000);
        let heartbeat = Arc::new(Heartbeat::new(Arc::new(clock.clone())));
        heartbeat.beat();
        let pings = Arc::new(AtomicUsize::new(0));
        let counter = pings.clone();
        let watchdog = spawn_watchdog(heartbeat.clone(), Duration::from_secs(30), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        // Pinged at once, then every 15 s.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3);

        // The beat stalls: 31 s without one is beyond a 30 s watchdog's window.
        clock.advance(31);
        tokio::time::sleep(Duration::from_secs(45)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3, "no ping while stale");

        heartbeat.beat();
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            4,
            "pings resume with the beat"
        );
        watchdog.abort();
    }
}
