//! Provider answers: every adapter's classifier and the error-detail reader never panic on
//! any status and body, and the detail stays short.
#![no_main]
use keyrotd::config::ProviderKind;
use keyrotd::providers::parsers::{classify_check, error_detail};
use keyrotd::providers::sanitize::MAX_LEN;
use libfuzzer_sys::fuzz_target;

const KINDS: [ProviderKind; 12] = [
    ProviderKind::Openai,
    ProviderKind::OpenaiAdmin,
    ProviderKind::OpenaiCompatible,
    ProviderKind::Anthropic,
    ProviderKind::Openrouter,
    ProviderKind::Deepseek,
    ProviderKind::Gemini,
    ProviderKind::AzureOpenai,
    ProviderKind::Relay,
    ProviderKind::Http,
    ProviderKind::Exec,
    ProviderKind::Simulated,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // First two bytes: the status (100..=599); the rest: the body.
    let status = 100 + u16::from_le_bytes([data[0], data[1]]) % 500;
    let body = &data[2..];
    for kind in KINDS {
        let report = classify_check(kind, status, None, body);
        assert!(report.detail.chars().count() <= MAX_LEN + 1);
    }
    let _ = error_detail(status, body);
});
