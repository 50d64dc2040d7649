//! A route's pool of keys and the health the relay has seen of each: which key a request
//! gets, which keys are cooling down after a 429, which are out after a 401/403.
//!
//! The keys themselves come from the store ([`super::refresh`]) and are swapped in whole;
//! a request holds the `Arc` of the key it started with, so a rotation never changes the
//! key under a request in flight. Health is kept per key version and carried across swaps,
//! so a refresh does not forgive a key its cool-down. Time is the injectable clock's (whole
//! seconds, like `Retry-After`, and like the check times in the store).
//!
//! A key out after a 401/403 comes back only on a check that certainly began after it was
//! taken out: a check found valid at the take-out's own second may have sent its probe
//! just before the key was revoked, and would put a dead key back. A check's time is when
//! its probe went out, and only one in a later second counts; the check the relay asks for
//! starts a second after the take-out ([`super::CheckRequests`]) so that its result does.
//!
//! Picking reads an `Arc` under a read lock held for a clone, and atomics: no lock is held
//! across an await and nothing is allocated.

use crate::clock::Clock;
use crate::config::Strategy;
use hyper::header::HeaderValue;
use secrecy::SecretString;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Most keys a pool can hold: the set of keys a request tried is a bit mask.
pub(crate) const MAX_POOL_KEYS: usize = 64;

/// One key of a pool.
pub(crate) struct PoolKey {
    /// The credential's position in the route's `credentials` (its metric series).
    pub(crate) slot: usize,
    pub(crate) credential: Arc<str>,
    pub(crate) version: i64,
    /// The header value to inject (`Bearer <key>` or the bare key), marked sensitive.
    pub(crate) header: HeaderValue,
    /// The key itself, to mask it in an upstream error body that echoes it.
    pub(crate) secret: SecretString,
    /// The previous key during its grace period: used only when no current key is usable.
    pub(crate) fallback: bool,
    pub(crate) health: Arc<Health>,
}

/// What the relay has seen of a key version.
#[derive(Default)]
pub(crate) struct Health {
    /// Unix second until which the key cools down (0: not cooling).
    cooling_until: AtomicI64,
    /// 429s in a row without a `Retry-After`: the backoff grows with them.
    strikes: AtomicU32,
    /// Unix second the key was taken out after a 401/403 (0: in the pool). It comes back
    /// when a check begun in a later second finds it valid.
    out_since: AtomicI64,
}

impl Health {
    /// A 429: cool down for `retry_after` (capped) or a backoff; a second 429 extends the
    /// cool-down, never shortens it. Answers the seconds of cool-down.
    pub(crate) fn cool_down(
        &self,
        now: i64,
        retry_after: Option<Duration>,
        cap: Duration,
    ) -> Duration {
        let strikes = self.strikes.fetch_add(1, Ordering::Relaxed);
        let wait = match retry_after {
            Some(wait) => wait,
            None => Duration::from_secs(1u64 << strikes.min(16)),
        }
        .min(cap)
        // Whole seconds on the clock; a sub-second Retry-After still skips this key now.
        .max(Duration::from_secs(1));
        let until = now + wait.as_secs() as i64;
        self.cooling_until.fetch_max(until, Ordering::Relaxed);
        wait
    }

    /// A response other than 429 from this key: its backoff starts over.
    pub(crate) fn answered(&self) {
        if self.strikes.load(Ordering::Relaxed) != 0 {
            self.strikes.store(0, Ordering::Relaxed);
        }
    }

    /// A 401/403: out of the pool until a later check finds it valid. Answers whether
    /// this call took it out (it was in the pool), so that one check is asked for per
    /// take-out, not one per request refused with it.
    pub(crate) fn take_out(&self, now: i64) -> bool {
        self.out_since
            .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A check whose probe went out at `checked_at` found the key valid: back in if that
    /// was in a later second than the take-out. One in the same second proves nothing: it
    /// may have gone out before the key was revoked.
    pub(crate) fn checked_valid(&self, checked_at: i64) {
        let out = self.out_since.load(Ordering::Relaxed);
        if out != 0 && checked_at > out {
            let _ = self
                .out_since
                .compare_exchange(out, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_out(&self) -> bool {
        self.out_since.load(Ordering::Relaxed) != 0
    }

    /// Seconds left of the cool-down at `now` (0 when not cooling).
    pub(crate) fn cooling_left(&self, now: i64) -> i64 {
        (self.cooling_until.load(Ordering::Relaxed) - now).max(0)
    }
}

/// Why no key could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// Every key left is cooling down; the first is back after this long.
    Cooling(Duration),
    /// No key is usable (none stored, or all out after 401/403).
    Empty,
}

/// A route's pool.
pub(crate) struct Pool {
    strategy: Strategy,
    keys: RwLock<Arc<[Arc<PoolKey>]>>,
    turn: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(strategy: Strategy) -> Pool {
        Pool {
            strategy,
            keys: RwLock::new(Arc::from(Vec::new())),
            turn: AtomicUsize::new(0),
        }
    }

    /// The keys now: the current keys in pool order, then the fallbacks.
    pub(crate) fn keys(&self) -> Arc<[Arc<PoolKey>]> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a new list of keys (current keys first, then fallbacks).
    pub(crate) fn replace(&self, keys: Vec<Arc<PoolKey>>) {
        let mut keys = keys;
        keys.truncate(MAX_POOL_KEYS);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::from(keys);
    }

    /// A key for the next attempt, not among `tried` (a bit per position in `keys`). When
    /// every usable key was tried, they may be tried again (a pool of one retries its key).
    pub(crate) fn pick(&self, keys: &[Arc<PoolKey>], tried: u64, now: i64) -> Result<usize, NoKey> {
        match self.pick_untried(keys, tried, now) {
            Some(index) => Ok(index),
            None if tried != 0 => self
                .pick_untried(keys, 0, now)
                .ok_or_else(|| no_key(keys, now)),
            None => Err(no_key(keys, now)),
        }
    }

    fn pick_untried(&self, keys: &[Arc<PoolKey>], tried: u64, now: i64) -> Option<usize> {
        let usable = |index: usize| {
            let key = &keys[index];
            tried & (1 << index) == 0 && !key.health.is_out() && key.health.cooling_left(now) == 0
        };
        let currents = keys.iter().take_while(|k| !k.fallback).count();
        let start = match self.strategy {
            Strategy::Failover => 0,
            Strategy::RoundRobin if currents > 0 => {
                self.turn.fetch_add(1, Ordering::Relaxed) % currents
            }
            Strategy::RoundRobin => 0,
        };
        (0..currents)
            .map(|offset| (start + offset) % currents)
            .chain(currents..keys.len())
            .find(|&index| usable(index))
    }
}

fn no_key(keys: &[Arc<PoolKey>], now: i64) -> NoKey {
    keys.iter()
        .filter(|k| !k.health.is_out())
        .map(|k| k.health.cooling_left(now))
        .filter(|&left| left > 0)
        .min()
        .map_or(NoKey::Empty, |left| {
            NoKey::Cooling(Duration::from_secs(left as u64))
        })
}

/// The longest cool-down left of each credential's keys, for
/// `keyrotd_relay_key_cooldown_seconds`.
pub(crate) fn cooldowns(pool: &Pool, clock: &dyn Clock, into: &mut Vec<(Arc<str>, i64)>) {
    let now = clock.now();
    for key in pool.keys().iter() {
        let left = key.health.cooling_left(now);
        match into.iter_mut().find(|(c, _)| *c == key.credential) {
            Some((_, longest)) => *longest = (*longest).max(left),
            None => into.push((key.credential.clone(), left)),
        }
    }
}

/// How many of a pool's keys (the previous keys in grace included) are usable, cooling
/// down, and out, for `keyrotd_relay_route_keys`. A key both out and cooling counts as out:
/// the cool-down ending does not bring it back.
pub(crate) fn key_states(pool: &Pool, now: i64) -> [i64; 3] {
    let mut counts = [0; 3];
    for key in pool.keys().iter() {
        let state = if key.health.is_out() {
            2
        } else if key.health.cooling_left(now) > 0 {
            1
        } else {
            0
        };
        counts[state] += 1;
    }
    counts
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::ManualClock;

    pub(crate) fn key(slot: usize, version: i64, fallback: bool) -> Arc<PoolKey> {
        Arc::new(PoolKey {
            slot,
            credential: Arc::from(format!("c{slot}")),
            version,
            header: HeaderValue::from_static("Bearer k"),
            secret: SecretString::from(format!("k{version}")),
            fallback,
            health: Arc::default(),
        })
    }

    #[test]
    fn failover_takes_the_first_usable_key_in_order_then_the_fallback() {
        let pool = Pool::new(Strategy::Failover);
        pool.replace(vec![key(0, 1, false), key(1, 2, false), key(0, 3, true)]);
        let keys = pool.keys();
        assert_eq!(pool.pick(&keys, 0, 100), Ok(0));
        assert_eq!(pool.pick(&keys, 0b1, 100), Ok(1));
        keys[0].health.take_out(100);
        keys[1]
            .health
            .cool_down(100, Some(Duration::from_secs(30)), Duration::from_secs(60));
        assert_eq!(
            pool.pick(&keys, 0, 100),
            Ok(2),
            "the grace key is the last resort"
        );
        keys[2].health.take_out(100);
        assert_eq!(
            pool.pick(&keys, 0, 100),
            Err(NoKey::Cooling(Duration::from_secs(30)))
        );
        assert_eq!(
            pool.pick(&keys, 0, 130),
            Ok(1),
            "back after its Retry-After"
        );
        keys[0].health.checked_valid(99);
        assert!(
            keys[0].health.is_out(),
            "a check before the 401 proves nothing"
        );
        keys[0].health.checked_valid(101);
        assert_eq!(pool.pick(&keys, 0, 131), Ok(0));
    }

    #[test]
    fn only_a_check_begun_in_a_later_second_than_the_take_out_brings_a_key_back() {
        let clock = ManualClock::new(1_000);
        let health = Health::default();
        assert!(health.take_out(clock.now()), "the first 401 takes it out");
        clock.advance(5);
        assert!(
            !health.take_out(clock.now()),
            "a later 401 of a key already out asks for no other check"
        );
        // A check probed in the take-out's second may have gone out before the revoke.
        health.checked_valid(1_000);
        assert!(
            health.is_out(),
            "a check in the take-out's second does not count"
        );
        health.checked_valid(999);
        assert!(health.is_out());
        health.checked_valid(1_001);
        assert!(!health.is_out(), "a check a second later brings it back");
        // Out again: the take-out's time is the new one, not the first.
        assert!(health.take_out(clock.now()));
        health.checked_valid(1_001);
        assert!(
            health.is_out(),
            "an old valid check is not read again as new"
        );
        clock.advance(1);
        health.checked_valid(clock.now());
        assert!(!health.is_out());
    }

    #[test]
    fn round_robin_spreads_over_usable_keys_and_tries_each_once_first() {
        let pool = Pool::new(Strategy::RoundRobin);
        pool.replace(vec![key(0, 1, false), key(1, 2, false), key(2, 3, false)]);
        let keys = pool.keys();
        let picks: Vec<usize> = (0..6).map(|_| pool.pick(&keys, 0, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        keys[1].health.take_out(1);
        let picks: Vec<usize> = (0..3).map(|_| pool.pick(&keys, 0, 1).unwrap()).collect();
        assert_eq!(picks, [0, 2, 2], "the key out is skipped");
        // All tried: a retry may go back to one of them.
        assert!(pool.pick(&keys, 0b111, 1).is_ok());
        keys[0].health.take_out(1);
        keys[2].health.take_out(1);
        assert_eq!(pool.pick(&keys, 0, 1), Err(NoKey::Empty));
    }

    #[test]
    fn a_cool_down_follows_retry_after_up_to_the_cap_and_only_grows() {
        let health = Health::default();
        let cap = Duration::from_secs(60);
        assert_eq!(
            health.cool_down(1000, Some(Duration::from_secs(3600)), cap),
            cap
        );
        assert_eq!(health.cooling_left(1000), 60);
        health.cool_down(1000, Some(Duration::from_secs(5)), cap);
        assert_eq!(
            health.cooling_left(1000),
            60,
            "a shorter Retry-After does not shorten it"
        );
        let fresh = Health::default();
        assert_eq!(fresh.cool_down(0, None, cap), Duration::from_secs(1));
        assert_eq!(fresh.cool_down(0, None, cap), Duration::from_secs(2));
        fresh.answered();
        assert_eq!(fresh.cool_down(0, None, cap), Duration::from_secs(1));
    }

    #[test]
    fn key_states_count_usable_cooling_and_out_with_out_winning() {
        let pool = Pool::new(Strategy::Failover);
        pool.replace(vec![key(0, 1, false), key(1, 2, false), key(0, 3, true)]);
        assert_eq!(key_states(&pool, 100), [3, 0, 0]);
        let keys = pool.keys();
        keys[1]
            .health
            .cool_down(100, Some(Duration::from_secs(10)), Duration::from_secs(60));
        assert_eq!(key_states(&pool, 100), [2, 1, 0]);
        keys[0].health.take_out(100);
        keys[0]
            .health
            .cool_down(100, Some(Duration::from_secs(10)), Duration::from_secs(60));
        assert_eq!(key_states(&pool, 100), [1, 1, 1]);
        assert_eq!(
            key_states(&pool, 110),
            [2, 0, 1],
            "cool-downs end, out stays"
        );
    }
}
