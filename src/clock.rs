//! Injectable time. Everything that decides by the clock (age, expiry, next due) takes a
//! `Clock` so tests can move time instead of sleeping; code that waits for the clock to move
//! (the verify step asking a new key again) sleeps on it, so a test's clock moves instead.

use crate::model::UnixTime;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub trait Clock: Send + Sync {
    /// Current Unix time in seconds.
    fn now(&self) -> UnixTime;

    /// Waits until `duration` has passed on this clock: tokio's timer, unless the clock is
    /// one a test moves.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// `duration` in whole seconds, a started second counting as a whole one: the clock's unit,
/// for a wait or a window that must not end early.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        chrono::Utc::now().timestamp()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: UnixTime) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start)))
    }
    pub fn set(&self, now: UnixTime) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, seconds: i64) {
        self.0.fetch_add(seconds, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        self.0.load(Ordering::SeqCst)
    }

    /// Moves the clock forward by `duration` (rounded up to whole seconds) at once: code
    /// that waits on this clock runs its waits without the test waiting for them.
    fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
        let seconds = whole_seconds(duration);
        let clock = self.clone();
        Box::pin(async move {
            clock.advance(i64::try_from(seconds).unwrap_or(i64::MAX));
            tokio::task::yield_now().await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeping_on_a_manual_clock_moves_it_by_whole_seconds() {
        let clock = ManualClock::new(100);
        clock.sleep(Duration::from_secs(4)).await;
        assert_eq!(clock.now(), 104);
        clock.sleep(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), 106, "a part of a second is a whole one");
        clock.sleep(Duration::ZERO).await;
        assert_eq!(clock.now(), 106);
    }
}
