//! Property tests: the parsers of everything that comes from outside (config text,
//! durations, cron expressions, provider answers) never panic, report positions, and never
//! let a key through; huge inputs finish. Case counts are modest so the file runs in seconds.

use keyrotd::config::{format_duration, parse_duration, Config, CronSchedule, ProviderKind};
use keyrotd::providers::parsers::{classify_check, error_detail};
use keyrotd::providers::sanitize::{mask_key_shaped, MAX_LEN, REDACTED};
use keyrotd::providers::{parse_retry_after, sanitize};
use proptest::prelude::*;
use secrecy::SecretString;
use std::path::Path;
use std::time::{Duration, SystemTime};

const VALID_CONFIG: &str = r#"
[daemon]
listen_address = "127.0.0.1:9877"

[checks]
interval = "5m"
jitter = 0.1
max_concurrent = 4

[[provider]]
name = "or"
kind = "openrouter"
base_url = "https://openrouter.ai/api/v1"

[[credential]]
name = "openrouter-prod"
provider = "or"
check_interval = "10m"
rotation = { schedule = "0 3 * * 1", max_age = "30d", grace = "1d", rotate_before_expiry = "2d" }

[[credential.deliver]]
kind = "file"
path = "/run/app/key"
"#;

const KINDS: [ProviderKind; 11] = [
    ProviderKind::Openai,
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

fn parse(text: &str) -> Result<Config, keyrotd::config::ConfigError> {
    Config::parse(Path::new("prop.toml"), text)
}

/// Every issue of a failed parse is within the file; syntax errors always have a line.
fn check_positions(text: &str) {
    if let Err(error) = parse(text) {
        assert!(!error.issues.is_empty());
        let lines = text.split('\n').count();
        let syntax_error = toml::from_str::<toml::Table>(text).is_err();
        for issue in &error.issues {
            assert!(issue.line <= lines, "line {} of {lines}", issue.line);
            if syntax_error {
                assert!(issue.line >= 1, "syntax error without a line: {error}");
                assert!(issue.column >= 1, "syntax error without a column: {error}");
            }
        }
    }
}

/// Text built from the characters TOML cares about, so parsing gets past the first byte.
fn tomlish() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r#"([\[\]{}="',.#\n a-z0-9_-]|daemon|provider|credential|name|kind|rotation|schedule|max_age|"30d"|"\* \* \* \* \*"){0,80}"#,
    )
    .unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Insert(usize, String),
    Replace(usize, char),
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for m in mutations {
        match m {
            Mutation::Delete(at, len) if !chars.is_empty() => {
                let at = at % chars.len();
                let end = (at + len).min(chars.len());
                chars.drain(at..end);
            }
            Mutation::Insert(at, s) => {
                let at = at % (chars.len() + 1);
                chars.splice(at..at, s.chars());
            }
            Mutation::Replace(at, c) if !chars.is_empty() => {
                let at = at % chars.len();
                chars[at] = *c;
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..20usize).prop_map(|(a, l)| Mutation::Delete(a, l)),
        (
            any::<usize>(),
            r#"[\[\]{}="'\n#a-z0-9 ]{1,8}|-1|1e999|"\u{0}"|\[\[credential\]\]"#
        )
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::Replace(a, c)),
    ]
}

/// Arbitrary JSON, a few levels deep, with vendor-ish field names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,24}".prop_map(Value::String),
        r"[0-9]{1,12}|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z|NaN|inf|-1e400".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                r"data|error|code|type|message|status|details|reason|limit|limit_remaining|expires_at|disabled|models|balance_infos|is_available|total_balance|currency|credit|valid|detail|retry_after|remaining|unit|[a-z]{1,6}",
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    r"(sk-proj-|sk-ant-api03-|sk-or-v1-|sk-admin-|gsk_|AIza|)[A-Za-z0-9_-]{8,64}"
        .prop_filter("not a piece of the mask", |k| {
            !REDACTED.contains(k.as_str())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
        check_positions(&text);
    }

    #[test]
    fn config_parse_never_panics_on_tomlish_text(text in tomlish()) {
        check_positions(&text);
    }

    #[test]
    fn config_parse_never_panics_on_mutated_valid_configs(mutations in prop::collection::vec(mutation(), 1..6)) {
        check_positions(&mutate(VALID_CONFIG, &mutations));
    }

    #[test]
    fn parse_duration_never_panics(text in any::<String>(), shaped in r"[0-9]{0,22}(ms|s|m|h|d|w|x|)[0-9]{0,3}(ms|s|m|h|d|w|)") {
        let _ = parse_duration(&text);
        if let Ok(parsed) = parse_duration(&shaped) {
            prop_assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }

    #[test]
    fn format_duration_round_trips(ms in 0u64..=100 * 365 * 86_400_000) {
        let duration = Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
    }

    #[test]
    fn schedule_parse_never_panics(
        text in any::<String>(),
        fields in prop::collection::vec(r"\*|\?|[0-9]{1,3}|[0-9]{1,2}-[0-9]{1,2}|\*/[0-9]{1,3}|[0-9,]{1,8}|[A-Za-z]{3}|L|[0-9]W|[0-9]#[0-9]|[0-9]L", 4..8),
    ) {
        let _ = CronSchedule::parse(&text);
        if let Ok(schedule) = CronSchedule::parse(&fields.join(" ")) {
            let now = chrono::Utc::now();
            if let Some(next) = schedule.next_after(now) {
                prop_assert!(next > now);
            }
        }
    }

    #[test]
    fn provider_parsers_never_panic_on_bytes(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..256), retry in proptest::option::of(".{0,12}")) {
        for kind in KINDS {
            let report = classify_check(kind, status, retry.as_deref(), &body);
            prop_assert!(report.detail.chars().count() <= MAX_LEN + 1);
        }
        let _ = error_detail(status, &body);
    }

    #[test]
    fn provider_parsers_never_panic_on_json(status in prop_oneof![Just(200u16), Just(400), Just(401), Just(402), Just(429), 100u16..600], body in json_value()) {
        let bytes = serde_json::to_vec(&body).unwrap();
        for kind in KINDS {
            let report = classify_check(kind, status, None, &bytes);
            prop_assert!(report.detail.chars().count() <= MAX_LEN + 1);
            for credit in &report.credit {
                prop_assert!(credit.remaining.is_finite());
            }
        }
    }

    #[test]
    fn a_key_echoed_by_a_vendor_never_reaches_the_detail(status in 400u16..600, key in key(), before in ".{0,60}", after in ".{0,60}") {
        // Key-shaped masking works on tokens: a key glued to other token characters
        // ("Ask-proj-…") is only caught when it is long (32+), which real keys are.
        let body = serde_json::json!({"error": {"message": format!("{before} {key}, {after}"), "code": key.clone()}});
        let bytes = serde_json::to_vec(&body).unwrap();
        for kind in KINDS {
            let report = classify_check(kind, status, None, &bytes);
            if key.len() >= 12 && !key.chars().all(|c| c.is_ascii_lowercase()) {
                // Only key-shaped text is masked without knowing the key; the check flow
                // also masks the exact key, tested below.
                let shaped = mask_key_shaped(&key).contains(REDACTED);
                if shaped {
                    prop_assert!(!report.detail.contains(&key), "{} leaked {}", key, report.detail);
                }
            }
        }
    }

    #[test]
    fn sanitize_never_returns_the_key(key in key(), before in any::<String>(), after in any::<String>(), middle in ".{0,20}") {
        let text = format!("{before}{key}{middle}{key}{after}");
        let out = sanitize(&text, Some(&SecretString::from(key.clone())));
        prop_assert!(!out.contains(&key), "{} in {:?}", key, out);
        prop_assert!(out.chars().count() <= MAX_LEN + 1);
    }

    #[test]
    fn mask_key_shaped_only_touches_tokens(text in ".{0,200}") {
        let masked = mask_key_shaped(&text);
        // Everything outside the masked tokens is kept in order: removing the masks from
        // both sides leaves the non-token characters equal.
        let strip = |s: &str| s.chars().filter(|c| !(c.is_ascii_alphanumeric() || "-_+/=*".contains(*c))).collect::<String>();
        prop_assert_eq!(strip(&masked.replace(REDACTED, "")), strip(&text));
    }

    #[test]
    fn retry_after_never_panics(text in any::<String>(), seconds in any::<u64>()) {
        let now = SystemTime::now();
        let _ = parse_retry_after(&text, now);
        let _ = parse_retry_after(&seconds.to_string(), now);
    }
}

/// 10 MB inputs finish (how fast is for the benchmarks to measure, not for a test to judge).
#[test]
fn huge_inputs_complete() {
    let comment = format!("# {}\n", "x".repeat(10 * 1024 * 1024));
    assert!(parse(&comment).is_ok());

    let junk = "[[[ = \"\n".repeat(1024 * 1024);
    check_positions(&junk);

    // Thousands of semantic issues, each needing a position in a big file.
    let mut many = String::from("[[provider]]\nname = \"p\"\nkind = \"openrouter\"\n");
    while many.len() < 4 * 1024 * 1024 {
        many.push_str("[[credential]]\nname = \"bad name!\"\nprovider = \"missing\"\n");
    }
    let error = parse(&many).unwrap_err();
    assert!(error.issues.len() > 10_000);

    let secretish = "sk-proj-".to_string() + &"A1b2C3d4".repeat(10 * 1024 * 1024 / 8);
    let out = sanitize(&format!("x {secretish} y"), None);
    assert!(out.chars().count() <= MAX_LEN + 1);
    let words = "word ".repeat(2 * 1024 * 1024);
    assert_eq!(mask_key_shaped(&words).len(), words.len());
}
