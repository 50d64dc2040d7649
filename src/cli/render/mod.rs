//! Turns what a command computed into text: [`table`] for people, [`json`] for scripts.
//! Commands gather rows; nothing here touches the store or a provider.

pub(crate) mod json;
pub(crate) mod table;

use crate::model::UnixTime;
use crate::store::KeyVersion;

/// Prints a JSON record, pretty, with a final newline.
pub(crate) fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "3d4h", "5m", "12s": the two largest units are enough to read at a glance.
fn human_age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let units = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let mut out = String::new();
    let mut rest = seconds;
    let mut shown = 0;
    for (unit, size) in units {
        if rest >= size && shown < 2 {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
            shown += 1;
        } else if shown > 0 {
            shown = 2;
        }
    }
    if out.is_empty() {
        "0s".into()
    } else {
        out
    }
}

/// "in 3h" or "5m ago".
fn relative(now: UnixTime, at: UnixTime) -> String {
    if at >= now {
        format!("in {}", human_age(at - now))
    } else {
        format!("{} ago", human_age(now - at))
    }
}

fn format_time(at: UnixTime) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| at.to_string())
}

/// A key version's last check: "valid 5m ago", or "never".
fn check_summary(v: &KeyVersion, now: UnixTime) -> String {
    match (v.last_check_status, v.last_check_at) {
        (Some(status), Some(at)) => format!("{status} {} ago", human_age(now - at)),
        _ => "never".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_show_the_two_largest_units() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3 * 86_400 + 4 * 3_600 + 5), "3d4h");
        assert_eq!(human_age(86_400 + 30), "1d");
        assert_eq!(human_age(3_660), "1h1m");
    }
}
