//! Per-provider pacing: checks of one provider's keys go out no faster than its configured
//! request rate, however many keys it has.

use std::time::Duration;
use tokio::time::Instant;

/// Spaces requests to one provider at most `rate` per second.
///
/// A caller reserves the next free slot and then sleeps until it, without holding anything:
/// a sleeper holding the lock would make every check behind it wait for the lock's
/// hand-over as well as for its own slot, where the configured rate should cost nothing.
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
    pub(crate) async fn wait(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn the_pacer_spaces_requests() {
        let pacer = Pacer::new(50.0);
        let start = Instant::now();
        let mut left = Vec::new();
        for _ in 0..5 {
            pacer.wait().await;
            left.push(start.elapsed());
        }
        // One after another at 50/s: the first at once, each next one 20 ms on.
        for (i, at) in left.iter().enumerate() {
            let slot = Duration::from_millis(20 * i as u64);
            assert!(
                *at >= slot && *at < slot + Duration::from_millis(5),
                "request {i} left at {at:?}, its slot was {slot:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_pacer_gives_no_burst_for_the_time_it_was_idle() {
        // A provider unused for a long while is still held to its rate: the slots free
        // during the pause are not saved up for a burst afterwards.
        let pacer = Pacer::new(10.0);
        pacer.wait().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        let mut left = Vec::new();
        for _ in 0..3 {
            pacer.wait().await;
            left.push(start.elapsed());
        }
        for (i, at) in left.iter().enumerate() {
            let slot = Duration::from_millis(100 * i as u64);
            assert!(
                *at >= slot && *at < slot + Duration::from_millis(5),
                "request {i} after the pause left at {at:?}, its slot was {slot:?}"
            );
        }
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
