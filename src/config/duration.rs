//! Human durations in config: `30d`, `24h`, `5m`, `10s`, `250ms`, and sums like `1h30m`.
//!
//! Written by hand because the accepted units are a promise to users (the same ones
//! Prometheus accepts, minus years) and because a bad value must say what was expected.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

/// A `std::time::Duration` that deserializes from a human string such as `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl From<HumanDuration> for Duration {
    fn from(value: HumanDuration) -> Self {
        value.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"30d\", \"24h\", \"5m\", \"10s\", \"1h30m\")")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `30d`, `24h`, `5m`, `10s`, `250ms`, `1w`, and concatenations (`1h30m`).
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let fail = |reason| DurationError {
        input: input.chars().take(64).collect(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(fail("empty"));
    }
    let mut total: u64 = 0; // milliseconds
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(fail("expected a number"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| fail("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => return Err(fail("missing unit (ms, s, m, h, d, w)")),
            _ => return Err(fail("unknown unit (expected ms, s, m, h, d, w)")),
        };
        rest = &rest[unit_len..];
        let part = number
            .checked_mul(unit_ms)
            .ok_or_else(|| fail("too large"))?;
        total = total.checked_add(part).ok_or_else(|| fail("too large"))?;
    }
    // Keep every duration representable as i64 seconds of Unix time arithmetic.
    if total > 100 * 365 * 86_400_000 {
        return Err(fail("longer than 100 years"));
    }
    Ok(Duration::from_millis(total))
}

/// The shortest exact rendering of a duration in the units `parse_duration` accepts.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration that can also be switched off: `"3d"`, or `"off"` (`provider_expiry_margin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationOrOff {
    Off,
    On(HumanDuration),
}

impl DurationOrOff {
    /// The duration, or `None` when switched off.
    pub fn get(self) -> Option<Duration> {
        match self {
            DurationOrOff::Off => None,
            DurationOrOff::On(duration) => Some(duration.0),
        }
    }
}

impl fmt::Display for DurationOrOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationOrOff::Off => f.write_str("off"),
            DurationOrOff::On(duration) => duration.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for DurationOrOff {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim() == "off" {
            return Ok(DurationOrOff::Off);
        }
        parse_duration(&text)
            .map(|duration| DurationOrOff::On(HumanDuration(duration)))
            .map_err(|error| serde::de::Error::custom(format!("{error}, or \"off\"")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_or_off_reads_both_and_names_off_when_wrong() {
        #[derive(Deserialize)]
        struct Holder {
            margin: DurationOrOff,
        }
        let read = |text: &str| toml::from_str::<Holder>(&format!("margin = {text:?}"));
        assert_eq!(read("off").unwrap().margin.get(), None);
        assert_eq!(
            read("3d").unwrap().margin.get(),
            Some(Duration::from_secs(3 * 86_400))
        );
        let error = read("soon").err().unwrap().to_string();
        assert!(error.contains("or \"off\""), "{error}");
    }

    #[test]
    fn accepts_the_documented_units_and_sums() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
    }

    #[test]
    fn rejects_malformed_input_with_a_reason() {
        for bad in [
            "",
            "30",
            "d",
            "5 m",
            "5x",
            "-5m",
            "1.5h",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("expected"), "{bad:?} gave {err}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for text in ["30d", "1d1h", "5m", "1h30m", "250ms", "0s"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
