//! Validity checks end to end: the real `keyrotd` binary against a wiremock fake OpenRouter
//! whose answer the test switches (200 → 429 → 503 → 401), read back through `/metrics`,
//! `key history`, `key show` and the one-shot `keyrotd check`.

mod common;

use common::{assert_success, canary, series, stderr, stdout, wait_for, Env, CREDENTIAL};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// `2027-01-01T00:00:00Z`, the expiry the fake reports.
const EXPIRY: i64 = 1_798_761_600;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Valid,
    RateLimited,
    Unavailable,
    Invalid,
}

/// One request the fake received.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    authorization: Option<String>,
    /// URL, every other header and the body, for the "key only in the header" check.
    rest: Vec<u8>,
}

/// A fake `GET /api/v1/key` whose answer the test switches, recording every request.
#[derive(Clone)]
struct Fake {
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            mode: Arc::new(Mutex::new(Mode::Valid)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn serve(&self) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/key"))
            .respond_with(self.clone())
            .mount(&server)
            .await;
        server
    }
}

impl Respond for Fake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut rest = request.url.as_str().as_bytes().to_vec();
        let mut authorization = None;
        for (name, value) in request.headers.iter() {
            if name.as_str().eq_ignore_ascii_case("authorization") {
                authorization = Some(String::from_utf8_lossy(value.as_bytes()).into_owned());
            } else {
                rest.extend_from_slice(name.as_str().as_bytes());
                rest.extend_from_slice(value.as_bytes());
            }
        }
        rest.extend_from_slice(&request.body);
        self.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            authorization,
            rest,
        });
        match *self.mode.lock().unwrap() {
            Mode::Valid => ResponseTemplate::new(200).set_body_json(json!({"data": {
                "label": "sk-or-v1-abc...xyz",
                "limit": 10,
                "limit_remaining": 7.5,
                "usage": 2.5,
                "is_free_tier": false,
                "expires_at": "2027-01-01T00:00:00Z",
            }})),
            Mode::RateLimited => ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(json!({"error": {"code": 429, "message": "Rate limit exceeded"}})),
            Mode::Unavailable => ResponseTemplate::new(503)
                .set_body_json(json!({"error": {"code": 503, "message": "upstream overloaded"}})),
            Mode::Invalid => ResponseTemplate::new(401).set_body_json(
                json!({"error": {"code": 401, "message": "No auth credentials found"}}),
            ),
        }
    }
}

fn provider(server: &MockServer, extra: &str) -> String {
    format!(
        "[[provider]]\nname = \"or\"\nkind = \"openrouter\"\nbase_url = \"{}/api/v1\"\ntimeout = \"30s\"\n{extra}\n",
        server.uri()
    )
}

fn credential(name: &str, extra: &str) -> String {
    format!("\n[[credential]]\nname = \"{name}\"\nprovider = \"or\"\n{extra}\n")
}

/// The one-hot `keyrotd_key_check_status` of `credential` is exactly `status`.
fn one_hot(metrics: &str, credential: &str, status: &str) -> bool {
    [
        "valid",
        "invalid",
        "exhausted",
        "rate_limited",
        "unreachable",
    ]
    .iter()
    .all(|s| {
        let want = if *s == status { 1.0 } else { 0.0 };
        series(
            metrics,
            "keyrotd_key_check_status",
            &[("credential", credential), ("status", s)],
        ) == Some(want)
    })
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    series(metrics, name, &[("credential", CREDENTIAL)])
}

fn history(env: &Env) -> Vec<Value> {
    let out = env.run(&["key", "history", CREDENTIAL, "--json"]);
    assert_success(&out, "key history --json");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("history JSON")
        .as_array()
        .unwrap()
        .clone()
}

fn assert_no_canary(what: &str, text: &str, key: &str) {
    assert!(!text.contains(key), "{what} carries the key:\n{text}");
}

/// The fake saw the key in the `Authorization: Bearer` header and nowhere else.
fn assert_key_only_in_header(fake: &Fake, key: &str) {
    let seen = fake.seen();
    assert!(!seen.is_empty(), "the fake was never called");
    for request in &seen {
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {key}").as_str())
        );
        assert!(
            !common::contains_bytes(&request.rest, key.as_bytes()),
            "the key left the Authorization header"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_checks_follow_the_provider_and_never_mistake_a_blip_for_a_dead_key() {
    let fake = Fake::new();
    let server = fake.serve().await;
    let env = Env::new();
    env.write_config(&format!(
        "[checks]\ninterval = \"1s\"\njitter = 0.0\n\n{}{}",
        provider(&server, ""),
        credential(CREDENTIAL, "")
    ));
    let key = canary();
    let import = env.import(CREDENTIAL, &key, &[]);
    let before_start = common::now();
    let daemon = env.start();

    // Valid: every gauge the provider's answer feeds.
    let m = daemon.wait_for_metrics("a valid check", |m| {
        value(m, "keyrotd_key_valid") == Some(1.0) && one_hot(m, CREDENTIAL, "valid")
    });
    // Stamped by the check this daemon ran: after it started, before this scrape.
    let last_check = value(&m, "keyrotd_key_last_check_timestamp_seconds").expect("last check");
    assert!(
        (before_start as f64..=common::now() as f64).contains(&last_check),
        "last check at {last_check}, daemon started at {before_start}"
    );
    assert_eq!(
        series(
            &m,
            "keyrotd_key_credit_remaining",
            &[("credential", CREDENTIAL), ("unit", "usd")]
        ),
        Some(7.5),
        "{m}"
    );
    assert_eq!(
        value(&m, "keyrotd_key_expiry_timestamp_seconds"),
        Some(EXPIRY as f64),
        "{m}"
    );
    let requests = series(
        &m,
        "keyrotd_provider_requests_total",
        &[("provider", "or"), ("operation", "check"), ("code", "200")],
    )
    .expect("provider request counter");
    assert!(requests >= 1.0, "{requests}");
    let histogram_count = series(
        &m,
        "keyrotd_provider_request_duration_seconds_count",
        &[("provider", "or"), ("operation", "check")],
    )
    .expect("duration histogram");
    assert!(histogram_count >= 1.0);
    assert!(m.contains("keyrotd_provider_request_duration_seconds_bucket{"));

    // 429 with Retry-After: rate limited, still valid.
    fake.set(Mode::RateLimited);
    let m = daemon.wait_for_metrics("rate_limited", |m| one_hot(m, CREDENTIAL, "rate_limited"));
    assert_eq!(value(&m, "keyrotd_key_valid"), Some(1.0), "{m}");
    assert!(
        series(
            &m,
            "keyrotd_provider_requests_total",
            &[("operation", "check"), ("code", "429")]
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // 503: unreachable, still valid.
    fake.set(Mode::Unavailable);
    let m = daemon.wait_for_metrics("unreachable", |m| one_hot(m, CREDENTIAL, "unreachable"));
    assert_eq!(value(&m, "keyrotd_key_valid"), Some(1.0), "{m}");

    // 401: invalid, and only now the key is marked invalid.
    fake.set(Mode::Invalid);
    let m = daemon.wait_for_metrics("invalid", |m| {
        one_hot(m, CREDENTIAL, "invalid") && value(m, "keyrotd_key_valid") == Some(0.0)
    });
    assert_no_canary("/metrics", &m, &key);

    let log = daemon.stop();
    assert_no_canary("daemon log", &log, &key);
    assert_no_canary("key import", &stdout(&import), &key);

    // The audit trail has one change per transition, in order.
    let events = history(&env);
    let changes: Vec<String> = events
        .iter()
        .filter(|e| e["kind"] == "check_status_changed")
        .map(|e| e["detail"].as_str().unwrap().to_string())
        .collect();
    let expected = [
        "unchecked -> valid",
        "valid -> rate_limited",
        "rate_limited -> unreachable",
        "unreachable -> invalid",
    ];
    assert_eq!(changes.len(), expected.len(), "{changes:#?}");
    for (change, prefix) in changes.iter().zip(expected) {
        assert!(change.starts_with(prefix), "{change} is not {prefix}");
    }
    let text = env.run(&["key", "history", CREDENTIAL]);
    assert_success(&text, "key history");
    assert!(stdout(&text).contains("check_status_changed"));
    assert_no_canary("key history", &stdout(&text), &key);
    assert_no_canary(
        "key history --json",
        &serde_json::to_string(&events).unwrap(),
        &key,
    );
    for file in env.database_files() {
        assert!(
            !common::contains_bytes(&std::fs::read(&file).unwrap(), key.as_bytes()),
            "{} holds the key in plaintext",
            file.display()
        );
    }
    assert_key_only_in_header(&fake, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_check_prints_the_result_records_it_and_exits_2_on_an_invalid_key() {
    let fake = Fake::new();
    let server = fake.serve().await;
    let env = Env::new();
    env.write_config(&format!(
        "{}{}",
        provider(&server, ""),
        credential(CREDENTIAL, "")
    ));
    let key = canary();
    env.import(CREDENTIAL, &key, &[]);

    // Valid: a table, exit 0.
    let out = env.run(&["check"]);
    assert_success(&out, "check");
    let table = stdout(&out);
    let header = table.lines().next().unwrap();
    for column in [
        "CREDENTIAL",
        "PROVIDER",
        "FINGERPRINT",
        "STATUS",
        "CREDIT",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with(CREDENTIAL))
        .unwrap_or_else(|| panic!("no row for {CREDENTIAL}:\n{table}"));
    assert!(row.contains(" valid "), "{row}");
    assert!(row.contains("7.50 usd"), "{row}");
    assert_no_canary("check", &table, &key);
    assert_no_canary("check stderr", &stderr(&out), &key);

    // --json parses and carries every field.
    let out = env.run(&["check", CREDENTIAL, "--json"]);
    assert_success(&out, "check --json");
    let items: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    let item = &items.as_array().unwrap()[0];
    assert_eq!(item["credential"], CREDENTIAL);
    assert_eq!(item["provider"], "or");
    assert_eq!(item["status"], "valid");
    assert_eq!(item["http_status"], 200);
    assert_eq!(item["expires_at"], EXPIRY);
    assert_eq!(item["credit"], json!([{"unit": "usd", "remaining": 7.5}]));
    assert!(item["fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
    assert_no_canary("check --json", &stdout(&out), &key);

    // Recorded in the store.
    let show = env.run(&["key", "show", CREDENTIAL, "--json"]);
    assert_success(&show, "key show --json");
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["check_status"], "valid");
    assert_eq!(shown["valid"], true);
    assert_eq!(shown["versions"][0]["last_check_status"], "valid");
    assert_eq!(shown["versions"][0]["expires_at"], EXPIRY);
    assert!(shown["last_check_at"].as_i64().is_some());

    // Rate limited is not invalid: exit 0.
    fake.set(Mode::RateLimited);
    let out = env.run(&["check", "--json"]);
    assert_success(&out, "check while rate limited");
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items[0]["status"], "rate_limited");
    assert_eq!(items[0]["retry_after_seconds"], 1);

    // Invalid: exit 2, in both forms, and recorded.
    fake.set(Mode::Invalid);
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stdout(&out).contains("invalid"), "{}", stdout(&out));
    let out = env.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(items[0]["status"], "invalid");
    assert_eq!(items[0]["http_status"], 401);
    assert_no_canary("check --json (invalid)", &stdout(&out), &key);
    assert_no_canary("check stderr (invalid)", &stderr(&out), &key);
    let shown: Value =
        serde_json::from_slice(&env.run(&["key", "show", CREDENTIAL, "--json"]).stdout).unwrap();
    assert_eq!(shown["check_status"], "invalid");
    assert_eq!(shown["valid"], false);
    assert_eq!(shown["versions"][0]["last_check_status"], "invalid");

    // An unknown credential is an error, not a silent success.
    let out = env.run(&["check", "nope"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("nope"), "{}", stderr(&out));

    assert_key_only_in_header(&fake, &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_one_provider_are_paced_to_its_request_rate() {
    let fake = Fake::new();
    let server = fake.serve().await;
    let env = Env::with_credentials(&[]);
    env.write_config(&format!(
        "[checks]\ninterval = \"1s\"\njitter = 0.0\n\n{}{}{}{}{}",
        provider(&server, "requests_per_second = 2"),
        credential("or-a", "check_interval = \"1s\""),
        credential("or-b", "check_interval = \"1s\""),
        credential("or-c", "check_interval = \"1s\""),
        credential("or-d", "check_interval = \"1s\""),
    ));
    for name in ["or-a", "or-b", "or-c", "or-d"] {
        env.import(name, &canary(), &[]);
    }
    // Four keys checked every second want 4/s, twice the provider's budget of 2/s: the
    // pacer has to hold requests back to give each its own slot, 500 ms after the last.
    let spacing = Duration::from_millis(500);
    let wanted = 10;
    let before = fake.seen().len();
    let spawned = Instant::now();
    let daemon = env.start();
    let enough = wait_for(common::HANG_TIMEOUT, || {
        (fake.seen().len() - before >= wanted).then_some(())
    });
    daemon.stop();
    let seen = fake.seen().split_off(before);
    assert!(
        enough.is_some(),
        "only {} checks in {:?}",
        seen.len(),
        common::HANG_TIMEOUT
    );
    // A count no scheduling delay can break: slots start no earlier than the daemon, follow
    // each other at least `spacing` apart, and a request reaches the fake only after its
    // slot (a late request is only later). So by `k * spacing` after the spawn at most `k`
    // requests can have arrived, and the k-th (from 0) cannot arrive before that.
    let mut arrivals: Vec<Duration> = seen.iter().map(|s| s.at - spawned).collect();
    arrivals.sort();
    for (k, arrival) in arrivals.iter().enumerate() {
        assert!(
            *arrival >= spacing * k as u32,
            "request {k} arrived {arrival:?} after the spawn, before its earliest slot at \
             {:?}: the provider's rate is not kept; all arrivals: {arrivals:?}",
            spacing * k as u32
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_reports_a_credential_without_a_key_beside_the_checked_ones() {
    // `keyrotd check` reads every current key in one query: a credential missing from that
    // read must come out as "no current key", and must not take the others with it.
    let fake = Fake::new();
    let server = fake.serve().await;
    let env = Env::new();
    env.write_config(&format!(
        "{}{}{}",
        provider(&server, ""),
        credential(CREDENTIAL, ""),
        credential("not-imported-yet", "")
    ));
    let key = canary();
    env.import(CREDENTIAL, &key, &[]);
    let out = env.run(&["check", "--json"]);
    assert_success(&out, "check --json");
    let items: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    let item = |name: &str| {
        items
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["credential"] == name)
            .unwrap_or_else(|| panic!("no item for {name}: {items:#}"))
            .clone()
    };
    assert_eq!(item(CREDENTIAL)["status"], "valid");
    let missing = item("not-imported-yet");
    assert_eq!(missing["status"], Value::Null);
    assert!(
        missing["detail"]
            .as_str()
            .is_some_and(|d| d.contains("no current key")),
        "{missing:#}"
    );
    assert_no_canary("check --json", &stdout(&out), &key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_lists_results_in_config_order_and_checks_only_the_named_credential() {
    // The keys stream in the store's order while the checks run; the report follows the
    // config, whatever order the store holds them in.
    let fake = Fake::new();
    let server = fake.serve().await;
    let env = Env::new();
    let names = ["cred-a", "cred-b", "cred-c", "cred-d"];
    let config = |order: &[&str]| {
        let mut text = provider(&server, "");
        for name in order {
            text.push_str(&credential(name, ""));
        }
        text
    };
    env.write_config(&config(&names));
    for name in names {
        env.import(name, &canary(), &[]);
    }
    let reordered = ["cred-d", "cred-b", "cred-a", "cred-c"];
    env.write_config(&config(&reordered));
    let before = fake.seen().len();
    let out = env.run(&["check", "--json"]);
    assert_success(&out, "check --json");
    let items: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    let listed: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["credential"].as_str().unwrap())
        .collect();
    assert_eq!(listed, reordered);
    assert!(
        items
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "valid"),
        "{items:#}"
    );
    assert_eq!(fake.seen().len() - before, 4);

    let out = env.run(&["check", "--json", "cred-b"]);
    assert_success(&out, "check --json cred-b");
    let items: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    assert_eq!(items.as_array().unwrap().len(), 1, "{items:#}");
    assert_eq!(items[0]["credential"], "cred-b");
    assert_eq!(items[0]["status"], "valid");
    assert_eq!(
        fake.seen().len() - before,
        5,
        "only the named credential is checked"
    );
}
