//! Capped exponential backoff with jitter, shared by checks and rotations.
//!
//! Jitter spreads retries of many keys after a shared outage so they do not hit the
//! provider in lock-step the moment it comes back.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub(crate) const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// The ceiling for the `attempt`-th retry (0-based): base · 2^attempt, at most `cap`.
    pub(crate) fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A delay drawn uniformly from [ceiling/2, ceiling] ("equal jitter"): never shorter
    /// than half the ceiling, so backoff still grows, but never in lock-step.
    pub(crate) fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_millis() as u64;
        half + Duration::from_millis(if spread == 0 {
            0
        } else {
            rng.gen_range(0..=spread)
        })
    }
}

/// `interval` stretched by a random fraction in [0, jitter].
pub(crate) fn with_jitter(interval: Duration, jitter: f64, rng: &mut impl Rng) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    interval + interval.mul_f64(rng.gen_range(0.0..=jitter.min(1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(b.ceiling(0), Duration::from_secs(10));
        assert_eq!(b.ceiling(1), Duration::from_secs(20));
        assert_eq!(b.ceiling(4), Duration::from_secs(160));
        assert_eq!(b.ceiling(5), Duration::from_secs(300));
        assert_eq!(b.ceiling(500), Duration::from_secs(300));
    }

    #[test]
    fn delays_stay_within_half_and_full_ceiling_and_vary() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..50).map(|_| b.delay(3, &mut rng)).collect();
        for d in &delays {
            assert!(
                *d >= Duration::from_secs(40) && *d <= Duration::from_secs(80),
                "{d:?}"
            );
        }
        assert!(delays.iter().any(|d| *d != delays[0]), "no jitter");
    }

    #[test]
    fn jitter_only_lengthens_within_the_fraction() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..50 {
            let d = with_jitter(Duration::from_secs(100), 0.1, &mut rng);
            assert!(d >= Duration::from_secs(100) && d <= Duration::from_secs(110));
        }
        assert_eq!(
            with_jitter(Duration::from_secs(5), 0.0, &mut rng),
            Duration::from_secs(5)
        );
    }
}
