//! Shared harness for the provider adapter tests: builds adapters from TOML, stands up
//! wiremock servers answering like the vendor, and checks that the key travels only in the
//! documented header and never comes back in a `detail`.
#![allow(dead_code)]

use keyrotd::config::{Config, ProviderConfig};
use keyrotd::model::CheckStatus;
use keyrotd::providers::{build, CheckReport, Provider, ProviderTelemetry};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The key under test. Deliberately *not* key-shaped, so only exact masking can hide it.
pub const CANARY: &str = "kr-canary-7f3a";

pub fn canary() -> SecretString {
    SecretString::from(CANARY)
}

/// Parses `[[provider]] name = "p"` plus `fields` through the real config loader.
pub fn provider_config(fields: &str) -> ProviderConfig {
    let text = format!("[[provider]]\nname = \"p\"\n{fields}\n");
    Config::parse(Path::new("test.toml"), &text)
        .unwrap_or_else(|e| panic!("config did not parse: {e}\n{text}"))
        .providers
        .remove(0)
}

/// What a vendor looks like from the outside, for the shared scenarios.
pub struct Spec {
    /// TOML fields after `name`, with `{base}` for the server's URL.
    pub toml: &'static str,
    pub method: &'static str,
    /// Request path on the server.
    pub path: &'static str,
    pub query: &'static [(&'static str, &'static str)],
    /// The documented key header and its value with `{key}`.
    pub auth: (&'static str, &'static str),
    /// Other headers the vendor requires.
    pub headers: &'static [(&'static str, &'static str)],
    pub valid: Value,
    pub invalid: (u16, Value),
    pub exhausted: Exhausted,
    pub rate_limited: (u16, Value),
    /// What a 429 without Retry-After means (Anthropic: the spend cap, exhausted).
    pub rate_limited_without_retry_after: CheckStatus,
    /// An error body that quotes the key back (`{key}` placeholder).
    pub echo: (u16, Value),
    pub echo_status: CheckStatus,
    /// Whether the success body has a documented shape beyond "a JSON object".
    pub strict_shape: bool,
}

/// How a vendor says "out of credit". Every adapter names one: the answer that means it, or
/// why there is none and how the answer nearest to it is classified. No adapter skips it.
#[derive(Clone)]
pub enum Exhausted {
    /// This answer means the key (or its account) is out of credit.
    Answer(u16, Value),
    /// The vendor has no answer meaning "out of credit", for the reason `why`; `nearest`, the
    /// answer a reader could take for one, is classified `as_status`, which is not exhausted.
    NoSuchAnswer {
        why: &'static str,
        nearest: (u16, Value),
        as_status: CheckStatus,
    },
}

impl Exhausted {
    /// The vendor's out-of-credit answer; panics when it documents none.
    pub fn answer(&self) -> (u16, Value) {
        match self {
            Exhausted::Answer(status, body) => (*status, body.clone()),
            Exhausted::NoSuchAnswer { why, .. } => panic!("no out-of-credit answer: {why}"),
        }
    }
}

pub struct Harness {
    pub server: MockServer,
    pub provider: Arc<dyn Provider>,
    pub telemetry: ProviderTelemetry,
    spec_auth: (&'static str, String),
}

/// The adapter's timeout in every scenario that is not about a timeout: it only bounds a
/// hang, so a busy machine's late answer on loopback is never taken for one.
pub const PATIENT_TIMEOUT: &str = "30s";

impl Spec {
    pub async fn start(&self, timeout: &str) -> Harness {
        let server = MockServer::start().await;
        let toml = format!(
            "timeout = \"{timeout}\"\n{}",
            self.toml.replace("{base}", &server.uri())
        );
        let telemetry = ProviderTelemetry::new();
        let provider = build(&provider_config(&toml), &telemetry).expect("adapter builds");
        Harness {
            server,
            provider,
            telemetry,
            spec_auth: (self.auth.0, self.auth.1.replace("{key}", CANARY)),
        }
    }

    /// A mock that only answers a request carrying the key in the documented header
    /// (anything else gets wiremock's 404, which no scenario accepts as its outcome).
    pub fn mock(&self, response: ResponseTemplate) -> Mock {
        let mut mock = Mock::given(method(self.method))
            .and(path(self.path))
            .and(header(
                self.auth.0,
                self.auth.1.replace("{key}", CANARY).as_str(),
            ));
        for (name, value) in self.headers {
            mock = mock.and(header(*name, *value));
        }
        for (name, value) in self.query {
            mock = mock.and(query_param(*name, *value));
        }
        mock.respond_with(response)
    }

    /// Runs one check against `response` and returns the report, after the leak checks.
    pub async fn run(&self, response: ResponseTemplate) -> CheckReport {
        self.run_with_timeout(response, PATIENT_TIMEOUT).await
    }

    pub async fn run_with_timeout(&self, response: ResponseTemplate, timeout: &str) -> CheckReport {
        let h = self.start(timeout).await;
        self.mock(response).mount(&h.server).await;
        let report = h.provider.check(&canary()).await;
        h.assert_no_leak(&report).await;
        report
    }
}

impl Harness {
    /// The key appears in the documented header and nowhere else: not in the URL, not in
    /// another header, not in a body, not in the report.
    pub async fn assert_no_leak(&self, report: &CheckReport) {
        assert!(
            !report.detail.contains(CANARY),
            "key in detail: {}",
            report.detail
        );
        for request in self.server.received_requests().await.unwrap_or_default() {
            assert!(
                !request.url.as_str().contains(CANARY),
                "key in URL {}",
                request.url
            );
            assert!(
                !String::from_utf8_lossy(&request.body).contains(CANARY),
                "key in request body"
            );
            let mut carriers = 0;
            for (name, value) in request.headers.iter() {
                let value = value.to_str().unwrap_or_default();
                if value.contains(CANARY) {
                    assert!(
                        name.as_str().eq_ignore_ascii_case(self.spec_auth.0),
                        "key in header {name}"
                    );
                    assert_eq!(value, self.spec_auth.1);
                    carriers += 1;
                }
            }
            assert_eq!(carriers, 1, "the key must travel in exactly one header");
        }
    }
}

pub fn json_response(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body.clone())
}

pub fn http_date_in(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

pub fn html_page() -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/html")
        .set_body_string("<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>")
}

// ---- the shared scenarios -------------------------------------------------------------

pub async fn valid(spec: &Spec) -> CheckReport {
    let report = spec.run(json_response(200, &spec.valid)).await;
    assert_eq!(report.status, CheckStatus::Valid, "{report:?}");
    assert_eq!(report.http_status, Some(200));
    report
}

pub async fn invalid(spec: &Spec) {
    let (status, body) = &spec.invalid;
    let report = spec.run(json_response(*status, body)).await;
    assert_eq!(report.status, CheckStatus::Invalid, "{report:?}");
    assert_eq!(report.http_status, Some(*status));
}

pub async fn exhausted(spec: &Spec) {
    match &spec.exhausted {
        Exhausted::Answer(status, body) => {
            let report = spec.run(json_response(*status, body)).await;
            assert_eq!(report.status, CheckStatus::Exhausted, "{report:?}");
        }
        Exhausted::NoSuchAnswer {
            why,
            nearest: (status, body),
            as_status,
        } => {
            assert!(why.len() > 20, "say why there is no out-of-credit answer");
            assert_ne!(*as_status, CheckStatus::Exhausted, "{why}");
            let report = spec.run(json_response(*status, body)).await;
            assert_eq!(report.status, *as_status, "{why}: {report:?}");
            assert_eq!(report.http_status, Some(*status));
        }
    }
}

pub async fn rate_limited_retry_after_seconds(spec: &Spec) {
    let (status, body) = &spec.rate_limited;
    let report = spec
        .run(json_response(*status, body).insert_header("retry-after", "7"))
        .await;
    assert_eq!(report.status, CheckStatus::RateLimited, "{report:?}");
    assert_eq!(report.retry_after, Some(Duration::from_secs(7)));
}

pub async fn rate_limited_retry_after_date(spec: &Spec) {
    let (status, body) = &spec.rate_limited;
    let report = spec
        .run(json_response(*status, body).insert_header("retry-after", http_date_in(120).as_str()))
        .await;
    assert_eq!(report.status, CheckStatus::RateLimited, "{report:?}");
    let wait = report.retry_after.expect("retry_after from an HTTP date");
    assert!((100..=121).contains(&wait.as_secs()), "{wait:?}");
}

pub async fn rate_limited_without_retry_after(spec: &Spec) {
    let (status, body) = &spec.rate_limited;
    let report = spec.run(json_response(*status, body)).await;
    assert_eq!(
        report.status, spec.rate_limited_without_retry_after,
        "{report:?}"
    );
    assert_eq!(report.retry_after, None);
}

pub async fn server_error(spec: &Spec) {
    for status in [500, 502, 503] {
        let report = spec
            .run(
                json_response(status, &json!({"error": {"message": "upstream"}}))
                    .insert_header("retry-after", "30"),
            )
            .await;
        assert_eq!(
            report.status,
            CheckStatus::Unreachable,
            "{status}: {report:?}"
        );
        assert_eq!(report.http_status, Some(status));
    }
}

/// Bounds a hang only: a check that ends at all ends within milliseconds of its timeout.
const HANG: Duration = Duration::from_secs(60);

pub async fn timeout(spec: &Spec) {
    // The answer would come in an hour: only the adapter's own 250 ms timeout can end the
    // check, and the detail must name that timeout. No elapsed time is judged.
    let report = tokio::time::timeout(
        HANG,
        spec.run_with_timeout(
            json_response(200, &spec.valid).set_delay(Duration::from_secs(3600)),
            "250ms",
        ),
    )
    .await
    .expect("the check waited for the answer: timeout not enforced");
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    assert!(
        report.detail.contains("timeout after 250ms"),
        "{}",
        report.detail
    );
}

pub async fn malformed_json(spec: &Spec) {
    let report = spec
        .run(ResponseTemplate::new(200).set_body_raw("{\"data\": [", "application/json"))
        .await;
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    if !spec.strict_shape {
        return;
    }
    // Valid JSON of the wrong shape is not a valid key either.
    let report = spec
        .run(json_response(200, &json!({"unexpected": true})))
        .await;
    assert_ne!(report.status, CheckStatus::Valid, "{report:?}");
}

pub async fn html_error_page(spec: &Spec) {
    let report = spec.run(html_page()).await;
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    assert!(!report.detail.contains("<html"), "{}", report.detail);
    let report = spec
        .run(ResponseTemplate::new(502).set_body_string("<html><body>Bad Gateway</body></html>"))
        .await;
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    assert!(!report.detail.contains("<html"), "{}", report.detail);
}

pub async fn oversized_body(spec: &Spec) {
    let huge = format!("{{\"data\": [\"{}\"]}}", "a".repeat(2 * 1024 * 1024));
    let report = spec
        .run(ResponseTemplate::new(200).set_body_raw(huge, "application/json"))
        .await;
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    assert!(report.detail.contains("larger"), "{}", report.detail);
}

pub async fn echoed_key(spec: &Spec) {
    let (status, body) = &spec.echo;
    let body: Value = serde_json::from_str(&body.to_string().replace("{key}", CANARY)).unwrap();
    let report = spec.run(json_response(*status, &body)).await;
    assert_eq!(report.status, spec.echo_status, "{report:?}");
    assert!(!report.detail.contains(CANARY), "{}", report.detail);
}

pub async fn connection_refused(spec: &Spec) {
    // A socket bound but not listening holds the port for the whole check (no other test
    // can take it) and refuses every connection to it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let toml = spec
        .toml
        .replace("{base}", &format!("http://127.0.0.1:{port}"));
    let provider = build(&provider_config(&toml), &ProviderTelemetry::new()).unwrap();
    let report = provider.check(&canary()).await;
    assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
    assert!(!report.detail.contains("127.0.0.1"), "{}", report.detail);
    drop(socket);
}

pub async fn telemetry_counts(spec: &Spec) {
    let h = spec.start(PATIENT_TIMEOUT).await;
    spec.mock(json_response(200, &spec.valid))
        .mount(&h.server)
        .await;
    h.provider.check(&canary()).await;
    assert_eq!(h.telemetry.requests("p", "check", "200"), 1);
}

/// Generates one `#[tokio::test]` per shared scenario for the spec returned by `$spec`.
#[macro_export]
macro_rules! adapter_suite {
    ($spec:expr) => {
        #[tokio::test]
        async fn valid() {
            providers_support::valid(&$spec).await;
        }
        #[tokio::test]
        async fn invalid() {
            providers_support::invalid(&$spec).await;
        }
        #[tokio::test]
        async fn exhausted() {
            providers_support::exhausted(&$spec).await;
        }
        #[tokio::test]
        async fn rate_limited_retry_after_seconds() {
            providers_support::rate_limited_retry_after_seconds(&$spec).await;
        }
        #[tokio::test]
        async fn rate_limited_retry_after_date() {
            providers_support::rate_limited_retry_after_date(&$spec).await;
        }
        #[tokio::test]
        async fn rate_limited_without_retry_after() {
            providers_support::rate_limited_without_retry_after(&$spec).await;
        }
        #[tokio::test]
        async fn server_error() {
            providers_support::server_error(&$spec).await;
        }
        #[tokio::test]
        async fn timeout() {
            providers_support::timeout(&$spec).await;
        }
        #[tokio::test]
        async fn malformed_json() {
            providers_support::malformed_json(&$spec).await;
        }
        #[tokio::test]
        async fn html_error_page() {
            providers_support::html_error_page(&$spec).await;
        }
        #[tokio::test]
        async fn oversized_body() {
            providers_support::oversized_body(&$spec).await;
        }
        #[tokio::test]
        async fn echoed_key() {
            providers_support::echoed_key(&$spec).await;
        }
        #[tokio::test]
        async fn connection_refused() {
            providers_support::connection_refused(&$spec).await;
        }
        #[tokio::test]
        async fn telemetry_counts() {
            providers_support::telemetry_counts(&$spec).await;
        }
    };
}
