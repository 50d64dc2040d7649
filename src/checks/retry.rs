//! When a credential is checked again after an answer: the interval after a conclusive one,
//! capped exponential backoff after a transient one (rate limited, unreachable), never
//! sooner than the provider's Retry-After.

use crate::backoff::{with_jitter, Backoff};
use crate::model::CheckStatus;
use std::time::Duration;

/// First retry after a transient failure; doubles up to the check interval.
pub(crate) const TRANSIENT_RETRY_BASE: Duration = Duration::from_secs(15);

/// When to check again after an outcome. Conclusive results wait the (jittered) interval;
/// transient ones back off from 15 s, doubling, never beyond the interval, and never
/// sooner than the provider's Retry-After — itself capped at the interval, the backoff
/// maximum, so a credential is always checked again within it.
pub(crate) fn next_delay(
    status: CheckStatus,
    retry_after: Option<Duration>,
    transient_failures: u32,
    interval: Duration,
    jitter: f64,
    rng: &mut impl rand::Rng,
) -> Duration {
    if status.is_conclusive() {
        return with_jitter(interval, jitter, rng);
    }
    let backoff = Backoff::new(TRANSIENT_RETRY_BASE.min(interval), interval);
    let delay = backoff.delay(transient_failures.saturating_sub(1), rng);
    // Retry-After is honoured up to the backoff maximum (the interval): an absurd one
    // (99999999999999 s) must not silence the credential's checks for a day or more.
    match retry_after {
        Some(wait) => delay.max(wait.min(interval)),
        None => delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn an_absurd_retry_after_is_capped_at_the_backoff_maximum() {
        let interval = Duration::from_secs(300);
        for wait in [
            crate::providers::client::MAX_RETRY_AFTER,
            Duration::from_secs(99_999_999_999_999),
        ] {
            let d = next_delay(
                CheckStatus::RateLimited,
                Some(wait),
                1,
                interval,
                0.1,
                &mut rng(),
            );
            assert!(d <= interval, "{d:?}");
        }
        // A sensible one is still honoured.
        let d = next_delay(
            CheckStatus::RateLimited,
            Some(Duration::from_secs(200)),
            1,
            interval,
            0.1,
            &mut rng(),
        );
        assert!(d >= Duration::from_secs(200), "{d:?}");
    }

    #[test]
    fn conclusive_results_wait_the_interval() {
        let d = next_delay(
            CheckStatus::Invalid,
            None,
            0,
            Duration::from_secs(300),
            0.1,
            &mut rng(),
        );
        assert!(d >= Duration::from_secs(300) && d <= Duration::from_secs(330));
    }

    #[test]
    fn transient_results_back_off_and_cap_at_the_interval() {
        let interval = Duration::from_secs(300);
        let first = next_delay(CheckStatus::Unreachable, None, 1, interval, 0.1, &mut rng());
        assert!(
            first >= Duration::from_millis(7_500) && first <= Duration::from_secs(15),
            "{first:?}"
        );
        let third = next_delay(CheckStatus::Unreachable, None, 3, interval, 0.1, &mut rng());
        assert!(
            third >= Duration::from_secs(30) && third <= Duration::from_secs(60),
            "{third:?}"
        );
        let many = next_delay(
            CheckStatus::Unreachable,
            None,
            40,
            interval,
            0.1,
            &mut rng(),
        );
        assert!(many <= interval, "{many:?}");
    }

    #[test]
    fn retry_after_is_a_floor() {
        let d = next_delay(
            CheckStatus::RateLimited,
            Some(Duration::from_secs(120)),
            1,
            Duration::from_secs(300),
            0.1,
            &mut rng(),
        );
        assert!(d >= Duration::from_secs(120));
    }
}
