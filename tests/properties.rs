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

// ---- an oracle for key-shaped text, built from the rule in `providers::sanitize`'s doc ----
//
// Every piece below is key-shaped or not *by construction*, from the documented rule alone:
// a token (a run of `A-Z a-z 0-9 - _ + / =`) is masked when it starts with a vendor prefix, or
// when it is 32+ characters long and not a canonical UUID, not a plain path, and not hex
// digits in a field that names an id. Nothing here asks the code under test.

/// Documented vendor keys: prefix, alphabet of the body, body length.
const VENDOR_KEYS: [(&str, &str, std::ops::RangeInclusive<usize>); 9] = [
    ("sk-proj-", "[A-Za-z0-9_-]", 156..=156),
    ("sk-svcacct-", "[A-Za-z0-9_-]", 150..=160),
    ("sk-admin-", "[A-Za-z0-9_-]", 100..=130),
    ("sk-", "[A-Za-z0-9]", 48..=48),
    ("sk-or-v1-", "[0-9a-f]", 64..=64),
    ("sk-ant-api03-", "[A-Za-z0-9_-]", 95..=95),
    ("AIza", "[A-Za-z0-9_-]", 35..=35),
    ("gsk_", "[A-Za-z0-9]", 52..=52),
    ("xai-", "[A-Za-z0-9]", 80..=80),
];

/// A canonical `8-4-4-4-12` UUID, lower or upper case.
fn uuid() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}",
    ]
}

/// A secret by construction: a vendor key of its documented shape, an Azure key (32 hex
/// digits), a relay or in-house key (32-64 characters), or a base64 secret of 32+.
fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => vendor_key(),
        1 => prop_oneof!["[0-9a-f]{32}", "[0-9A-F]{32}"],
        1 => "[A-Za-z0-9_-]{32,64}".prop_filter("a UUID is not a secret", |s| s.len() != 36 || !s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')),
        1 => ("[A-Za-z0-9+/]{32,64}", "|=|==").prop_map(|(body, pad)| body + &pad)
            // Not a path by the rule: no leading `/`, and a `/` only beside `+`, `=` or upper case.
            .prop_filter("a plain path is not a secret", |s| !s.starts_with('/')
                && (!s.contains('/') || s.contains(['+', '=']) || s.chars().any(|c| c.is_ascii_uppercase()))),
    ]
}

/// A vendor key of its documented prefix, alphabet and length.
fn vendor_key() -> impl Strategy<Value = String> {
    (0..VENDOR_KEYS.len()).prop_flat_map(|i| {
        let (prefix, alphabet, len) = VENDOR_KEYS[i].clone();
        proptest::string::string_regex(&format!("{alphabet}{{{},{}}}", len.start(), len.end()))
            .unwrap()
            .prop_map(move |body| {
                // Anthropic keys end in `AA`.
                let body = if prefix == "sk-ant-api03-" {
                    body + "AA"
                } else {
                    body
                };
                format!("{prefix}{body}")
            })
    })
}

/// A word that cannot start with a vendor prefix: every prefix has `-`, `_` or upper case
/// within its first five characters, and this starts with five lower-case letters.
fn word() -> impl Strategy<Value = String> {
    r"[a-z]{5,12}(-[a-z0-9]{1,8}){0,2}"
}

/// A field name that does not name an id.
fn secret_field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "key",
        "api_key",
        "token",
        "secret",
        "value",
        "new_key",
        "authorization",
    ])
}

/// A field name that names an id (`id`, `hash`, `rotation`, `fingerprint`, `…_id`, `…_hash`).
fn id_field() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "id",
        "hash",
        "rotation",
        "fingerprint",
        "key_id",
        "remote_id",
        "provider_key_id",
        "key_hash",
    ])
}

/// `value` in a field `name`: `name=value`, `name="value"` (tracing) or `"name":"value"` (JSON).
fn in_field(form: u8, name: &str, value: &str) -> String {
    match form % 3 {
        0 => format!("{name}={value}"),
        1 => format!("{name}=\"{value}\""),
        _ => format!("\"{name}\":\"{value}\""),
    }
}

/// One piece of a message: its text and what the sanitiser must turn it into.
#[derive(Debug, Clone)]
struct Piece {
    text: String,
    masked: String,
}

fn kept(text: String) -> Piece {
    Piece {
        masked: text.clone(),
        text,
    }
}

/// A vendor key cut short (a vendor's echo, a hint): the prefix alone makes it key-shaped.
fn cut_vendor_key() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![
            "sk-",
            "sk-proj-",
            "sk-or-v1-",
            "sk-ant-",
            "AIza",
            "gsk_",
            "xai-",
        ]),
        "[A-Za-z0-9]{6,20}",
    )
        .prop_map(|(prefix, body)| format!("{prefix}{body}"))
}

fn masked_whole(text: String) -> Piece {
    Piece {
        text,
        masked: REDACTED.to_string(),
    }
}

fn key_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        cut_vendor_key().prop_map(masked_whole),
        // A path with a vendor key in it is masked whole. (Not any secret: the `/` of a
        // base64 one could make a plain absolute path of it.)
        (
            prop::collection::vec(word(), 1..4),
            prop_oneof![vendor_key(), cut_vendor_key()],
            any::<bool>()
        )
            .prop_map(|(dirs, key, absolute)| masked_whole(format!(
                "{}{}/{key}",
                if absolute { "/" } else { "" },
                dirs.join("/")
            ))),
        secret().prop_map(masked_whole),
        (secret(), secret_field(), any::<u8>()).prop_map(|(s, name, form)| Piece {
            text: in_field(form, name, &s),
            masked: in_field(form, name, REDACTED),
        }),
    ]
}

fn plain_piece() -> impl Strategy<Value = Piece> {
    let segment = prop_oneof![3 => word(), 1 => uuid()];
    let capitalised = r"[A-Z][a-z]{4,10}";
    prop_oneof![
        // Short words and numbers.
        word().prop_map(kept),
        "[a-z]{1,4}|[0-9]{1,12}".prop_map(kept),
        uuid().prop_map(kept),
        // A fingerprint as keyrotd prints it.
        "sha256:[0-9a-f]{12}".prop_map(kept),
        // Relative paths (a provider-side key name): lower case, short segments, UUIDs.
        prop::collection::vec(segment.clone(), 2..6).prop_map(|s| kept(s.join("/"))),
        // Absolute paths, across dots and with capitalised directory names.
        (
            prop::collection::vec(
                prop_oneof![3 => segment, 1 => capitalised.prop_map(String::from)],
                1..6
            ),
            "|\\.db|\\.toml|\\.db-wal"
        )
            .prop_map(|(s, ext)| kept(format!("/{}{ext}", s.join("/")))),
        // Hex ids and digests where a field names them.
        ("[0-9a-f]{32,64}|[0-9A-F]{32,64}", id_field(), any::<u8>())
            .prop_map(|(hex, name, form)| kept(in_field(form, name, &hex))),
        "[0-9a-f]{64}".prop_map(|hex| kept(format!("sha256:{hex}"))),
    ]
}

/// Characters between pieces: never token characters, `:`, `=`, `"` or `.`, so no piece
/// joins its neighbour or lends it a field name. Escape bytes are not token characters
/// either: a colour code before a space, or an `ESC [` that starts no colour code, must not
/// change what the next piece is.
fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        " ",
        ", ",
        "; ",
        " (",
        ") ",
        "\n",
        "\t",
        " | ",
        " '",
        "' ",
        "\u{1b}[2m ",
        " \u{1b}[0m ",
        "\u{1b}[ ",
    ])
}

/// A message of key-shaped and plain pieces, and the message with exactly the key-shaped
/// ones masked.
fn message() -> impl Strategy<Value = (String, String)> {
    prop::collection::vec(
        (
            prop_oneof![1 => key_piece(), 2 => plain_piece()],
            separator(),
        ),
        1..8,
    )
    .prop_map(|pieces| {
        let (mut text, mut masked) = (String::new(), String::new());
        for (piece, sep) in pieces {
            text.push_str(&piece.text);
            text.push_str(sep);
            masked.push_str(&piece.masked);
            masked.push_str(sep);
        }
        (text, masked)
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
    fn a_key_echoed_by_a_vendor_never_reaches_the_detail(status in 400u16..600, key in secret(), before in ".{0,60}", after in ".{0,60}") {
        // The key is key-shaped by construction (the oracle above), so no adapter may let
        // it through, whether it is the key the check sent or any other.
        let body = serde_json::json!({"error": {"message": format!("{before} {key}, {after}"), "code": key.clone()}});
        let bytes = serde_json::to_vec(&body).unwrap();
        for kind in KINDS {
            let report = classify_check(kind, status, None, &bytes);
            prop_assert!(!report.detail.contains(&key), "{:?}: {} leaked {}", kind, key, report.detail);
        }
    }

    #[test]
    fn exactly_the_key_shaped_pieces_are_masked((text, masked) in message()) {
        let out = mask_key_shaped(&text).into_owned();
        prop_assert_eq!(out, masked, "in {:?}", text);
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
