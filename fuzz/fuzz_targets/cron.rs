//! Cron expressions: never panic; an accepted schedule fires in the future.
#![no_main]
use keyrotd::config::CronSchedule;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schedule) = CronSchedule::parse(text) {
        let now = chrono_now();
        if let Some(next) = schedule.next_after(now) {
            assert!(next > now);
        }
        let _ = schedule.previous_at_or_before(now);
    }
});

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
