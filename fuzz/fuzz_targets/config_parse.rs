//! Config text: never panics; every syntax error has a line and column inside the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(error) = keyrotd::config::Config::parse(std::path::Path::new("fuzz.toml"), text) {
        let lines = text.split('\n').count();
        for issue in &error.issues {
            assert!(issue.line <= lines);
        }
    }
});
