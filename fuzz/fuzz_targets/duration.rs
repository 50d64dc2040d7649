//! Durations: never panic; whatever parses round-trips through `format_duration`.
#![no_main]
use keyrotd::config::{format_duration, parse_duration};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = parse_duration(text) {
        assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
    }
});
