//! The log writer masks key-shaped tokens in every formatted line, in both formats, and
//! leaves ordinary log text alone: paths, rotation ids and the provider's key ids stay
//! readable, in process and in the real binary's output.

mod common;

use common::{assert_success, sections, stderr, stdout, Daemon, Env, CREDENTIAL};
use keyrotd::logging::{subscriber, LogFormat};
use std::io::Write;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn secrets() -> Vec<String> {
    vec![
        format!("sk-proj-{}", "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z".repeat(3)),
        format!("sk-ant-api03-{}-AA", "x7Y_q2W-e4R".repeat(8)),
        format!("sk-or-v1-{}", "0123456789abcdef".repeat(4)),
        "sk-admin-Zz9Yy8Xx7Ww6".to_string(),
        "da39a3ee5e6b4b0d3255bfef95601890afd80709".to_string(),
        "QWxhZGRpbjpvcGVuIHNlc2FtZSBhbmQgbW9yZSBzZWNyZXQgdGV4dA==".to_string(),
    ]
}

const ORDINARY: [&str; 5] = [
    "/var/lib/keyrotd/keyrotd.db",
    "sha256:abcdef012345",
    "550e8400-e29b-41d4-a716-446655440000",
    "127.0.0.1:9877",
    "keyrotd/openrouter-prod/rotation",
];

fn capture(format: LogFormat, ansi: bool) -> String {
    let sink = Capture::default();
    let subscriber = subscriber(format, EnvFilter::new("trace"), ansi, sink.clone());
    tracing::subscriber::with_default(subscriber, || {
        for secret in secrets() {
            tracing::info!(detail = %secret, "vendor said: Incorrect API key provided: {secret}.");
            tracing::warn!(header = %format!("Bearer {secret}"), assignment = %format!("key={secret}"), "request failed");
            tracing::error!(error = ?format!("{secret}"), "debug formatted");
        }
        for text in ORDINARY {
            tracing::info!(path = %text, "ordinary {text} stays");
        }
    });
    let out = sink.0.lock().unwrap().clone();
    String::from_utf8(out).unwrap()
}

fn assert_redacted(output: &str) {
    for secret in secrets() {
        assert!(!output.contains(&secret), "{secret} leaked:\n{output}");
        // No long fragment of it either.
        let fragment: String = secret.chars().skip(8).take(16).collect();
        assert!(!output.contains(&fragment), "{fragment} leaked:\n{output}");
    }
    assert!(output.contains("[REDACTED]"), "{output}");
    for text in ORDINARY {
        assert!(
            output.matches(text).count() >= 2,
            "{text} was changed:\n{output}"
        );
    }
}

#[test]
fn human_format_is_redacted() {
    let output = capture(LogFormat::Human, true);
    assert!(output.contains("vendor said: Incorrect API key provided: [REDACTED]."));
    assert_redacted(&output);
}

/// Without a terminal (the journal, a pipe) fields are written `name=value` with nothing
/// between the parts.
#[test]
fn human_format_without_colour_is_redacted() {
    let output = capture(LogFormat::Human, false);
    assert!(output.contains("vendor said: Incorrect API key provided: [REDACTED]."));
    assert_redacted(&output);
}

#[test]
fn json_format_is_redacted() {
    let output = capture(LogFormat::Json, true);
    for line in output.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("every line is still JSON");
    }
    assert_redacted(&output);
}

/// OpenRouter's id for a key: a SHA-256 hash, 64 hex digits, not a secret.
const KEY_HASH: &str = "5f1c0a3e9b7d2468ace013579bdf2468ace013579bdf2468ace013579bdf2468";

/// One canary of every key shape the masking knows, none of them a key the process holds.
fn canaries() -> Vec<(&'static str, String)> {
    vec![
        (
            "openai",
            format!("sk-proj-{}", "Qm4nW8rT2yU6iO0pA3sD".repeat(3)),
        ),
        (
            "openrouter",
            format!("sk-or-v1-{}", "9e8d7c6b5a493827".repeat(4)),
        ),
        (
            "anthropic",
            format!("sk-ant-api03-{}-AA", "k2J_h7G-f4D".repeat(8)),
        ),
        (
            "gemini",
            "AIzaSyC-canary0123456789abcdefghijklmn".to_string(),
        ),
        ("azure", "c0ffee00deadbeef0123456789abcdef".to_string()),
        ("azure-84", "Zq7X".repeat(21)),
        ("relay", "rL4yK9wE2qT7uI1oP6aS3dF8gH5jZ0xC".to_string()),
        ("simulated", format!("sim-{}", "fedcba9876543210".repeat(2))),
    ]
}

#[test]
fn ids_and_paths_stay_readable_and_every_key_shape_is_masked_in_every_format() {
    let dashless = "550e8400e29b41d4a716446655440000";
    let database = "/tmp/.tmpAb12Cd/keyrotd-state-Xy12Ab/keyrotd.db";
    for (format, ansi) in [
        (LogFormat::Human, false),
        (LogFormat::Human, true),
        (LogFormat::Json, false),
    ] {
        let sink = Capture::default();
        let subscriber = subscriber(format, EnvFilter::new("info"), ansi, sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(database = %database, "keyrotd ready");
            tracing::info!(rotation = %"20260101T030000-abcdef12", "rotation planned");
            tracing::info!(rotation = %dashless, "rotation planned");
            tracing::info!(fingerprint = %"sha256:abcdef012345", remote_id = %KEY_HASH, "new key issued");
            for (_, canary) in canaries() {
                tracing::warn!(detail = %format!("HTTP 401: Incorrect API key provided: {canary}"), "key is invalid");
                tracing::warn!(detail = %canary, "key is invalid");
            }
        });
        let output = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        for kept in [
            database,
            "20260101T030000-abcdef12",
            dashless,
            "sha256:abcdef012345",
            KEY_HASH,
        ] {
            assert!(
                output.contains(kept),
                "{kept} was masked ({format:?}, ansi {ansi}):\n{output}"
            );
        }
        for (shape, canary) in canaries() {
            let in_detail = output
                .lines()
                .filter(|l| l.contains("key is invalid"))
                .any(|l| l.contains(&canary));
            assert!(
                !in_detail,
                "{shape} key {canary} leaked ({format:?}, ansi {ansi}):\n{output}"
            );
        }
    }
}

/// A rotation's failure reason that names a provider key id as `remote_id=<id>` keeps the id
/// readable in every format, as a field of its own would; the same hex inline is masked.
#[test]
fn a_key_id_named_inside_a_failure_reason_stays_readable() {
    for (format, ansi) in [
        (LogFormat::Human, false),
        (LogFormat::Human, true),
        (LogFormat::Json, false),
    ] {
        let sink = Capture::default();
        let subscriber = subscriber(format, EnvFilter::new("info"), ansi, sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(step = "issue", reason = %format!("deleting orphan remote_id={KEY_HASH}: HTTP 500"), "rotation failed; the current key stays");
            tracing::warn!(reason = %format!("deleting orphan {KEY_HASH}: HTTP 500"), "unnamed id");
        });
        let output = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let line = |marker: &str| {
            output
                .lines()
                .find(|l| l.contains(marker))
                .unwrap_or_else(|| panic!("no {marker:?} line:\n{output}"))
                .to_string()
        };
        assert!(
            line("rotation failed").contains(&format!("remote_id={KEY_HASH}")),
            "the named id was masked ({format:?}, ansi {ansi}):\n{output}"
        );
        assert!(
            !line("unnamed id").contains(KEY_HASH),
            "an unnamed 64-hex token stayed ({format:?}, ansi {ansi}):\n{output}"
        );
    }
}

/// The daemon's ready line names the database, in a directory whose name mixes cases and
/// digits as temporary directories do; it is shown as it is, in both formats.
#[test]
fn the_ready_line_shows_the_database_path() {
    for format in ["human", "json"] {
        let mut env = Env::new();
        let state = env.path().join("keyrotd-state-Xy12Ab");
        std::fs::create_dir(&state).unwrap();
        env.database = state.join("keyrotd.db");
        env.write_config(&sections(&[CREDENTIAL]));
        let mut command = env.command();
        command.args(["--log-format", format]);
        let log = Daemon::start(command).stop();
        let ready = log
            .lines()
            .find(|l| l.contains("keyrotd ready"))
            .expect("a ready line");
        assert!(
            ready.contains(&env.database.display().to_string()),
            "{format}: {ready}"
        );
        assert!(!ready.contains("[REDACTED]"), "{format}: {ready}");
    }
}

/// A provider shaped like OpenRouter's key API: checks answer 200 for the keys it issued or
/// was given, and for each `echo-*` key a 401 whose message quotes a canary of one shape.
async fn openrouter(issued: &[(&str, &str)]) -> wiremock::MockServer {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    for (i, (_, canary)) in canaries().into_iter().enumerate() {
        Mock::given(method("GET"))
            .and(path("/api/v1/key"))
            .and(header(
                "authorization",
                format!("Bearer echo-key-{i}").as_str(),
            ))
            .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
                "error": {"code": 401, "message": format!("Incorrect API key provided: {canary}")}
            })))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/api/v1/key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": {"label": "k", "limit": null, "usage": 0, "expires_at": null}
        })))
        .mount(&server)
        .await;
    for (hash, key) in issued {
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .respond_with(ResponseTemplate::new(201).set_body_json(serde_json::json!({
                "data": {"hash": hash, "name": "keyrotd", "expires_at": null},
                "key": key
            })))
            .up_to_n_times(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/api/v1/keys"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"data": []})))
        .mount(&server)
        .await;
    // The replaced key's cap, read before each issue: none.
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(r"^/api/v1/keys/[^/]+$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "data": {"name": "keyrotd", "limit": null, "limit_reset": null,
                     "include_byok_in_limit": false, "disabled": false}
        })))
        .mount(&server)
        .await;
    server
}

/// The value of `field` in each log line that has it: `field=value` or `"field":"value"`.
fn values_of(log: &str, field: &str) -> Vec<String> {
    let human = format!("{field}=");
    let json = format!("\"{field}\":\"");
    log.lines()
        .filter_map(|line| {
            let rest = match line.find(&json) {
                Some(at) => &line[at + json.len()..],
                None => {
                    let at = line.find(&human)?;
                    &line[at + human.len()..]
                }
            };
            rest.split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_binary_keeps_rotation_and_key_ids_and_masks_echoed_keys() {
    let issued_keys = [
        format!("sk-or-v1-{}", "1a2b3c4d5e6f7081".repeat(4)),
        format!("sk-or-v1-{}", "8f7e6d5c4b3a2910".repeat(4)),
    ];
    let second_hash = KEY_HASH.replace('5', "6");
    let server = openrouter(&[
        (KEY_HASH, issued_keys[0].as_str()),
        (second_hash.as_str(), issued_keys[1].as_str()),
    ])
    .await;

    let env = Env::with_credentials(&[]);
    let management = env.path().join("or.management-key");
    std::fs::write(&management, "sk-or-v1-management-canary-0000\n").unwrap();
    let mut config = format!(
        "[checks]\ninterval = \"1s\"\n\n[[provider]]\nname = \"or\"\nkind = \"openrouter\"\nbase_url = \"{}/api/v1\"\nmanagement_key = {{ file = \"{}\" }}\ntimeout = \"30s\"\n\n[[credential]]\nname = \"{CREDENTIAL}\"\nprovider = \"or\"\nrotation = {{ grace = \"1h\" }}\n",
        server.uri(),
        management.display()
    );
    for (i, _) in canaries().iter().enumerate() {
        config.push_str(&format!(
            "\n[[credential]]\nname = \"echo-{i}\"\nprovider = \"or\"\ncheck_interval = \"1s\"\n"
        ));
    }
    env.write_config(&config);
    let imported = format!("sk-or-v1-{}", "0000111122223333".repeat(4));
    env.import(CREDENTIAL, &imported, &[]);
    for (i, _) in canaries().iter().enumerate() {
        env.import(&format!("echo-{i}"), &format!("echo-key-{i}"), &[]);
    }

    let mut everything = String::new();
    for (format, hash) in [("json", KEY_HASH), ("human", second_hash.as_str())] {
        let out = env.run(&["--log-format", format, "key", "rotate", CREDENTIAL]);
        assert_success(&out, "key rotate");
        let log = stderr(&out);
        let rotations = values_of(&log, "rotation");
        assert!(
            !rotations.is_empty(),
            "{format}: no rotation id logged:\n{log}"
        );
        for id in &rotations {
            assert!(
                !id.contains("[REDACTED]") && id.len() >= 16,
                "{format}: rotation id {id:?} not readable:\n{log}"
            );
        }
        assert_eq!(
            values_of(&log, "remote_id"),
            vec![hash.to_string()],
            "{format}: the provider's key id is not readable:\n{log}"
        );
        everything.push_str(&log);
        everything.push_str(&stdout(&out));
    }

    for format in ["human", "json"] {
        let mut command = env.command();
        command.args(["--log-format", format]);
        let daemon = Daemon::start(command);
        let log = wait_for_invalid_checks(&daemon, canaries().len());
        assert!(
            log.contains("[REDACTED]"),
            "{format}: nothing masked:\n{log}"
        );
        everything.push_str(&daemon.stop());
    }

    for (shape, canary) in canaries() {
        assert!(
            !everything.contains(&canary),
            "{shape} canary {canary} leaked:\n{everything}"
        );
    }
    for key in issued_keys.iter().chain([&imported]) {
        assert!(
            !everything.contains(key.as_str()),
            "a key leaked:\n{everything}"
        );
    }
    assert!(!everything.contains("management-canary"), "{everything}");
}

/// Waits until every echo credential's check was logged as invalid; returns the log.
fn wait_for_invalid_checks(daemon: &Daemon, count: usize) -> String {
    common::wait_for(common::HANG_TIMEOUT, || {
        let log = daemon.log();
        let invalid = log.lines().filter(|l| l.contains("key is invalid")).count();
        (invalid >= count).then_some(log)
    })
    .unwrap_or_else(|| panic!("not every echo check was logged:\n{}", daemon.log()))
}
