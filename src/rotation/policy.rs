//! When a credential's next rotation is due: the earliest of its cron schedule, its maximum
//! age, and its expiry minus a margin. Pure functions of the inputs and the time, so the
//! catch-up rules can be tested with any clock.
//!
//! The runaway guard: a key is never due before it has been current for the policy's
//! minimum age (`min_age`). Without it, a provider that issues keys living no longer than
//! `rotate_before_expiry` makes every new key due the moment it is promoted, and the daemon
//! would issue, deliver and restart consumers every few seconds. The default minimum age is
//! an hour, shortened to half the policy's own cadence (`max_age`, the shortest gap of the
//! cron schedule) so an explicitly fast schedule is never slowed down; see
//! [`RotationPolicyConfig::min_age`](crate::config::RotationPolicyConfig::min_age).

use crate::config::{CredentialConfig, CronSchedule};
use crate::model::UnixTime;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// A credential's rotation policy, resolved from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Boxed: a parsed cron expression is a few hundred bytes, and most credentials have none.
    pub schedule: Option<Box<CronSchedule>>,
    pub max_age: Option<Duration>,
    pub rotate_before_expiry: Option<Duration>,
    pub grace: Duration,
    /// The runaway guard: no rotation is due before the current key is this old.
    pub min_age: Duration,
    /// How long after its planned replacement plus grace an issued key dies at the provider
    /// (`None`: keys live until revoked).
    pub provider_expiry_margin: Option<Duration>,
}

impl Policy {
    pub(crate) fn from_config(credential: &CredentialConfig) -> Policy {
        let rotation = &credential.rotation;
        Policy {
            schedule: rotation.cron_schedule().map(Box::new),
            max_age: rotation.max_age.as_ref().map(|d| d.get_ref().0),
            rotate_before_expiry: rotation
                .rotate_before_expiry
                .as_ref()
                .map(|d| d.get_ref().0),
            grace: rotation.grace(),
            min_age: rotation.min_age(),
            provider_expiry_margin: rotation.provider_expiry_margin(),
        }
    }

    /// The provider-side expiry of a key issued at `now`: its planned replacement (the next
    /// due time of a key that becomes current now), plus grace for consumers to let go of
    /// it, plus the margin: time for failed rotations to be retried before the key dies on
    /// its own. `None` when the margin is off, or when no rule plans a replacement: a key
    /// rotated only by hand must not die behind its operator's back.
    pub(crate) fn provider_expiry(&self, now: UnixTime) -> Option<UnixTime> {
        let margin = self.provider_expiry_margin?;
        let planned = self.next_due(now, None, Some(now))?;
        Some(
            planned
                .saturating_add(self.grace.as_secs() as i64)
                .saturating_add(margin.as_secs() as i64),
        )
    }

    /// When to retry a failed rotation whose backoff chose `retry_at`: never later than
    /// the moment that still leaves the current key (expiring at `expires_at`) its
    /// `rotate_before_expiry` margin, so a backoff cannot sleep through a provider-side
    /// expiry. Once that moment has passed, the next retry comes no later than halfway to
    /// the expiry nor than `retry_every` (the backoff's first step), and never sooner than a
    /// minute: a rotation that keeps failing must not hammer the provider either.
    pub(crate) fn retry_before_expiry(
        &self,
        now: UnixTime,
        retry_at: UnixTime,
        expires_at: Option<UnixTime>,
        retry_every: Duration,
    ) -> UnixTime {
        let Some(expires_at) = expires_at else {
            return retry_at;
        };
        let lead = self.rotate_before_expiry.unwrap_or_default().as_secs() as i64;
        let deadline = expires_at.saturating_sub(lead);
        const FLOOR: i64 = 60;
        if retry_at <= deadline {
            return retry_at;
        }
        if deadline > now {
            return deadline;
        }
        let first_step = (retry_every.as_secs() as i64).max(FLOOR);
        let left = expires_at.saturating_sub(now);
        let step = if left > 0 {
            (left / 2).max(FLOOR).min(first_step)
        } else {
            first_step
        };
        retry_at.min(now.saturating_add(step))
    }

    /// When the next rotation is due, from the store's bookkeeping: after failures the store
    /// holds the retry time the backoff chose; otherwise the policy decides from the current
    /// key (`created_at`, `expires_at`).
    pub(crate) fn due(
        &self,
        current: Option<(UnixTime, Option<UnixTime>)>,
        last_rotated_at: Option<UnixTime>,
        consecutive_failures: i64,
        stored_next: Option<UnixTime>,
    ) -> Option<UnixTime> {
        let by_policy =
            current.and_then(|(created, expires)| self.next_due(created, expires, last_rotated_at));
        if consecutive_failures > 0 {
            stored_next.or(by_policy)
        } else {
            by_policy
        }
    }

    /// The next due time for a current key created at `key_created_at` (and expiring at
    /// `key_expires_at`), last rotated at `last_rotated_at`, never earlier than
    /// [`Policy::min_age`] after the later of the two.
    ///
    /// The cron part counts from the later of the key's creation and the last rotation: a
    /// schedule whose firing passed while the daemon was down yields a due time in the past,
    /// which means "rotate once now" — never once per missed firing.
    pub(crate) fn next_due(
        &self,
        key_created_at: UnixTime,
        key_expires_at: Option<UnixTime>,
        last_rotated_at: Option<UnixTime>,
    ) -> Option<UnixTime> {
        let (due, settled) = self.due_and_settled(key_created_at, key_expires_at, last_rotated_at);
        due.map(|at| at.max(settled))
    }

    /// When the runaway guard holds a rotation back: the time the rules alone would have
    /// made it due, if that is earlier than the guard allows. The daemon logs it, so a
    /// policy the provider's key lifetime defeats does not go unnoticed.
    pub(crate) fn held_back(
        &self,
        key_created_at: UnixTime,
        key_expires_at: Option<UnixTime>,
        last_rotated_at: Option<UnixTime>,
    ) -> Option<UnixTime> {
        let (due, settled) = self.due_and_settled(key_created_at, key_expires_at, last_rotated_at);
        due.filter(|at| *at < settled)
    }

    /// The due time by the rules alone, and the earliest time the guard allows.
    fn due_and_settled(
        &self,
        key_created_at: UnixTime,
        key_expires_at: Option<UnixTime>,
        last_rotated_at: Option<UnixTime>,
    ) -> (Option<UnixTime>, UnixTime) {
        let since = last_rotated_at
            .unwrap_or(key_created_at)
            .max(key_created_at);
        let settled = since.saturating_add(self.min_age.as_secs() as i64);
        let by_schedule = self.schedule.as_ref().and_then(|schedule| {
            let start = DateTime::<Utc>::from_timestamp(since, 0)?;
            schedule.next_after(start).map(|t| t.timestamp())
        });
        let by_age = self
            .max_age
            .map(|age| key_created_at.saturating_add(age.as_secs() as i64));
        let by_expiry = match (self.rotate_before_expiry, key_expires_at) {
            (Some(margin), Some(expires)) => Some(expires.saturating_sub(margin.as_secs() as i64)),
            _ => None,
        };
        let due = [by_schedule, by_age, by_expiry].into_iter().flatten().min();
        (due, settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> UnixTime {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .unwrap()
            .timestamp()
    }

    #[test]
    fn the_provider_expiry_is_the_planned_replacement_plus_grace_plus_margin() {
        let now = at(2026, 1, 1, 0, 0);
        let mut p = policy(None, Some(30 * 86_400), None);
        p.provider_expiry_margin = Some(Duration::from_secs(3 * 86_400));
        // 30 days to the replacement, one day of grace (the test policy's), three of margin.
        assert_eq!(p.provider_expiry(now), Some(now + 34 * 86_400));
        let mut cron = policy(Some("0 3 * * *"), None, None);
        cron.provider_expiry_margin = Some(Duration::from_secs(3600));
        assert_eq!(
            cron.provider_expiry(now),
            Some(at(2026, 1, 1, 3, 0) + 86_400 + 3600)
        );
        p.provider_expiry_margin = None;
        assert_eq!(p.provider_expiry(now), None, "margin off: no expiry");
        let mut by_hand = policy(None, None, None);
        by_hand.provider_expiry_margin = Some(Duration::from_secs(3600));
        assert_eq!(
            by_hand.provider_expiry(now),
            None,
            "a key rotated only by hand never dies on its own"
        );
    }

    #[test]
    fn a_backoff_never_sleeps_through_the_provider_side_expiry() {
        let now = 1_000_000;
        let every = Duration::from_secs(300);
        let p = policy(None, Some(30 * 86_400), Some(86_400));
        let expires = now + 2 * 86_400;
        // Far from the expiry the backoff decides.
        assert_eq!(
            p.retry_before_expiry(now, now + 3600, Some(expires), every),
            now + 3600
        );
        // A backoff past the rotate-before-expiry moment is pulled in to it.
        assert_eq!(
            p.retry_before_expiry(now, now + 6 * 86_400, Some(expires), every),
            expires - 86_400
        );
        // Past that moment, retries come every first backoff step, not in a tight loop.
        let late = expires - 3600;
        assert_eq!(
            p.retry_before_expiry(late, late + 6 * 3600, Some(expires), every),
            late + 300
        );
        assert_eq!(
            p.retry_before_expiry(late, late + 60, Some(expires), every),
            late + 60
        );
        // ... or halfway to the expiry when the first step is longer than what is left.
        let long = Duration::from_secs(12 * 3600);
        assert_eq!(
            p.retry_before_expiry(late, late + 6 * 3600, Some(expires), long),
            late + 1800
        );
        // ... but never in a tight loop, even seconds before the expiry.
        let last = expires - 10;
        assert_eq!(
            p.retry_before_expiry(last, last + 6 * 3600, Some(expires), long),
            last + 60
        );
        // A key with no expiry: the backoff alone.
        assert_eq!(
            p.retry_before_expiry(now, now + 6 * 86_400, None, every),
            now + 6 * 86_400
        );
    }

    fn policy(schedule: Option<&str>, max_age: Option<u64>, before: Option<u64>) -> Policy {
        Policy {
            schedule: schedule.map(|s| Box::new(CronSchedule::parse(s).unwrap())),
            max_age: max_age.map(Duration::from_secs),
            rotate_before_expiry: before.map(Duration::from_secs),
            grace: Duration::from_secs(86_400),
            min_age: Duration::ZERO,
            provider_expiry_margin: None,
        }
    }

    #[test]
    fn cron_counts_from_the_last_rotation() {
        let p = policy(Some("0 3 * * *"), None, None);
        let created = at(2026, 1, 1, 10, 0);
        assert_eq!(p.next_due(created, None, None), Some(at(2026, 1, 2, 3, 0)));
        let rotated = at(2026, 1, 5, 3, 0);
        assert_eq!(
            p.next_due(created, None, Some(rotated)),
            Some(at(2026, 1, 6, 3, 0))
        );
    }

    #[test]
    fn missed_firings_give_one_due_time_in_the_past() {
        // Down for a week: the due time is the first missed firing, so the caller sees
        // "overdue" once, rotates, and the next due time counts from that rotation.
        let p = policy(Some("0 3 * * *"), None, None);
        let created = at(2026, 1, 1, 10, 0);
        let now = at(2026, 1, 8, 12, 0);
        let due = p.next_due(created, None, None).unwrap();
        assert!(due < now);
        let after_catch_up = p.next_due(created, None, Some(now)).unwrap();
        assert_eq!(after_catch_up, at(2026, 1, 9, 3, 0));
    }

    #[test]
    fn the_earliest_rule_wins() {
        let created = at(2026, 1, 1, 0, 0);
        let expires = at(2026, 1, 20, 0, 0);
        let p = policy(Some("0 0 1 * *"), Some(10 * 86_400), Some(7 * 86_400));
        // schedule: Feb 1; max_age: Jan 11; expiry - 7d: Jan 13.
        assert_eq!(
            p.next_due(created, Some(expires), None),
            Some(at(2026, 1, 11, 0, 0))
        );
        let p = policy(None, Some(30 * 86_400), Some(7 * 86_400));
        assert_eq!(
            p.next_due(created, Some(expires), None),
            Some(at(2026, 1, 13, 0, 0))
        );
    }

    #[test]
    fn no_rule_means_no_automatic_rotation() {
        let p = policy(None, None, Some(86_400));
        assert!(
            p.next_due(0, Some(10 * 86_400), None).is_some(),
            "expiry rule with a known expiry"
        );
        assert_eq!(
            p.next_due(0, None, None),
            None,
            "expiry rule without a known expiry"
        );
        let none = policy(None, None, None);
        assert_eq!(none.next_due(0, None, None), None);
        assert_eq!(none.next_due(0, Some(10 * 86_400), Some(5)), None);
    }

    #[test]
    fn a_key_expiring_inside_the_margin_is_not_due_before_its_minimum_age() {
        // Keys live 1h, the margin is 2h: by expiry every new key is due before it was
        // issued. The guard keeps it current for min_age.
        let mut p = policy(None, None, Some(7200));
        p.min_age = Duration::from_secs(3600);
        let clock = crate::clock::ManualClock::new(at(2026, 1, 1, 0, 0));
        use crate::clock::Clock;
        let promoted = clock.now();
        let expires = promoted + 3600;
        let due = p.next_due(promoted, Some(expires), Some(promoted)).unwrap();
        assert_eq!(due, promoted + 3600);
        assert_eq!(
            p.held_back(promoted, Some(expires), Some(promoted)),
            Some(expires - 7200)
        );
        // Half an hour in, nothing is due yet; at the minimum age it is.
        clock.advance(1800);
        assert!(due > clock.now());
        clock.advance(1800);
        assert!(due <= clock.now());
        // Through `due` as the scheduler calls it, and counted from the last rotation
        // for an older key.
        assert_eq!(
            p.due(
                Some((promoted - 10, Some(expires))),
                Some(promoted),
                0,
                None
            ),
            Some(promoted + 3600)
        );
    }

    #[test]
    fn the_guard_leaves_a_settled_policy_alone() {
        let mut p = policy(None, Some(86_400), Some(7200));
        p.min_age = Duration::from_secs(3600);
        let created = at(2026, 1, 1, 0, 0);
        assert_eq!(p.next_due(created, None, None), Some(created + 86_400));
        assert_eq!(p.held_back(created, None, None), None);
        // A failed attempt's retry time is the backoff's, not the guard's.
        assert_eq!(
            p.due(Some((created, None)), None, 2, Some(created + 60)),
            Some(created + 60)
        );
    }
}
