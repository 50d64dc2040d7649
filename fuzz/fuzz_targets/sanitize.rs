//! Sanitising: the exact key never survives, the output is short and one line.
#![no_main]
use keyrotd::providers::sanitize::{mask_key_shaped, sanitize, MAX_LEN, REDACTED};
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line (if it looks like a key) is the key; it is also planted in the text.
    let (key, rest) = text
        .split_once('\n')
        .unwrap_or(("sk-proj-fuzzKEY123", text));
    let _ = mask_key_shaped(text);
    if key.len() < 8
        || REDACTED.contains(key)
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return;
    }
    let planted = format!("{rest}{key}{rest}");
    let out = sanitize(&planted, Some(&SecretString::from(key.to_string())));
    assert!(!out.contains(key), "{key:?} in {out:?}");
    assert!(out.chars().count() <= MAX_LEN + 1);
    assert!(!out.contains('\n'));
});
