//! Cron expressions: 5 fields (crontab) or 6 (with seconds), evaluated in UTC.
//!
//! Day-of-month and day-of-week are ORed as in Vixie cron (croner's default), unlike
//! tokio-cron-scheduler's own parser which ANDs them; we compute due times ourselves.

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed, validated cron expression: when a credential rotates (its policy's
/// `schedule`).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
}

impl CronSchedule {
    pub fn parse(expression: &str) -> Result<Self, String> {
        let fields = expression.split_whitespace().count();
        if !(fields == 5 || fields == 6) {
            return Err(format!(
                "cron expression {expression:?} has {fields} fields; expected 5 (minute hour day month weekday) or 6 (with seconds first)"
            ));
        }
        // croner reads `+` in the weekday field as "AND with day-of-month", against the
        // Vixie OR semantics we document; refuse it rather than change meaning silently.
        if expression.contains('+') {
            return Err(format!(
                "cron expression {expression:?}: `+` is not supported (day-of-month and day-of-week are ORed, as in Vixie cron)"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expression)
            .map_err(|err| format!("invalid cron expression {expression:?}: {err}"))?;
        // A pattern like "0 0 30 2 *" parses but never fires; catch it now, not at 3 a.m.
        let probe = Utc::now();
        if cron.find_next_occurrence(&probe, false).is_err() {
            return Err(format!("cron expression {expression:?} never fires"));
        }
        Ok(CronSchedule { cron })
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }

    /// The last firing at or before `at`.
    pub fn previous_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&at, true).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_and_six_fields_are_accepted() {
        let five = CronSchedule::parse("0 3 * * *").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 4, 0, 0).unwrap();
        assert_eq!(
            five.next_after(at).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 0).unwrap()
        );
        let six = CronSchedule::parse("30 0 3 * * *").unwrap();
        assert_eq!(
            six.next_after(at).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 0, 30).unwrap()
        );
    }

    #[test]
    fn day_of_month_and_weekday_are_ored_like_vixie_cron() {
        // 1st of the month OR Monday. 2026-01-05 is a Monday.
        let s = CronSchedule::parse("0 0 1 * 1").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 2, 0, 0, 0).unwrap();
        assert_eq!(
            s.next_after(at).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn malformed_expressions_are_rejected() {
        for bad in [
            "",
            "* * *",
            "61 * * * *",
            "0 0 30 2 *",
            "a b c d e",
            "* * * * * * *",
            "0 0 1 * +MON",
        ] {
            assert!(CronSchedule::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
