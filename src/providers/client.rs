//! The one way adapters speak HTTP: a per-provider reqwest client with the configured timeout,
//! a hard cap on response bodies, `Retry-After` parsing, and request telemetry.
//!
//! Everything an adapter needs from a response is read into memory here, at most
//! [`MAX_BODY_BYTES`], so a hostile or broken endpoint cannot make the daemon allocate without
//! bound. Redirects are not followed: a redirect could carry a key header to another host.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use reqwest::header::{HeaderMap, HeaderValue};
use std::time::{Duration, Instant, SystemTime};

/// Largest response body read from a provider.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Request metrics shared by every adapter:
/// `keyrotd_provider_requests_total{provider,operation,code}` (code = HTTP status, `timeout`
/// or `error`) and `keyrotd_provider_request_duration_seconds{provider,operation}`.
#[derive(Clone)]
pub struct ProviderTelemetry {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl ProviderTelemetry {
    /// Creates the metrics without registering them anywhere (tests, tools).
    pub fn new() -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "keyrotd_provider_requests_total",
                "Requests to providers by operation and outcome (HTTP status, timeout or error).",
            ),
            &["provider", "operation", "code"],
        )
        .expect("valid metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "keyrotd_provider_request_duration_seconds",
                "Duration of requests to providers.",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["provider", "operation"],
        )
        .expect("valid metric definition");
        ProviderTelemetry { requests, duration }
    }

    /// Creates the metrics and registers them in `registry`.
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let telemetry = Self::new();
        registry.register(Box::new(telemetry.requests.clone()))?;
        registry.register(Box::new(telemetry.duration.clone()))?;
        Ok(telemetry)
    }

    /// Records one finished request (or command run).
    pub(crate) fn observe(&self, provider: &str, operation: &str, code: &str, elapsed: Duration) {
        self.requests
            .with_label_values(&[provider, operation, code])
            .inc();
        self.duration
            .with_label_values(&[provider, operation])
            .observe(elapsed.as_secs_f64());
    }

    /// Count of requests so far with these labels (tests and diagnostics).
    pub fn requests(&self, provider: &str, operation: &str, code: &str) -> u64 {
        self.requests
            .with_label_values(&[provider, operation, code])
            .get()
    }
}

impl Default for ProviderTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// A response read completely (within the cap).
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, or `None` when it is not JSON (an HTML error page, garbage).
    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// `Retry-After`, when present and parseable.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    }
}

/// Why no response was read. Messages are fixed text: nothing from the peer, no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("timeout after {}", crate::config::format_duration(*.0))]
    Timeout(Duration),
    #[error("connection failed")]
    Connect,
    #[error("response body larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
    #[error("request failed: {0}")]
    Other(&'static str),
}

/// How long an idle keep-alive connection to a provider is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// One provider's HTTP client.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    provider: String,
    timeout: Duration,
    telemetry: ProviderTelemetry,
}

impl HttpClient {
    pub fn new(
        provider: &str,
        timeout: Duration,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, super::ProviderError> {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Checks come in bursts (start-up, a sweep) and then rarely: keep-alive
            // connections (and their buffers) are closed soon after a burst, and the pool's
            // eviction timer stops once it is empty, instead of holding up to
            // `max_concurrent` idle connections for reqwest's default 90 s.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!("keyrotd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| super::ProviderError::Config("cannot build the HTTP client".into()))?;
        Ok(HttpClient {
            client,
            provider: provider.to_string(),
            timeout,
            telemetry: telemetry.clone(),
        })
    }

    pub(crate) fn request(
        &self,
        method: reqwest::Method,
        url: impl reqwest::IntoUrl,
    ) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends `request`, reads at most [`MAX_BODY_BYTES`] of its body, and records telemetry.
    /// The whole exchange, body included, is bounded by the configured timeout.
    pub(crate) async fn send(
        &self,
        operation: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, TransportError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(self.timeout)),
        };
        let code = match &result {
            Ok(response) => response.status.to_string(),
            Err(TransportError::Timeout(_)) => "timeout".to_string(),
            Err(_) => "error".to_string(),
        };
        self.telemetry
            .observe(&self.provider, operation, &code, started.elapsed());
        result.map_err(|err| match err {
            TransportError::Timeout(_) => TransportError::Timeout(self.timeout),
            other => other,
        })
    }
}

async fn exchange(request: reqwest::RequestBuilder) -> Result<Response, TransportError> {
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    if response
        .content_length()
        .is_some_and(|len| len > MAX_BODY_BYTES as u64)
    {
        return Err(TransportError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(TransportError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// reqwest's messages carry the URL and the peer's words; keep only the category.
fn transport_error(err: reqwest::Error) -> TransportError {
    if err.is_timeout() {
        TransportError::Timeout(Duration::ZERO)
    } else if err.is_connect() {
        TransportError::Connect
    } else if err.is_body() || err.is_decode() {
        TransportError::Other("reading the response body failed")
    } else if err.is_request() {
        TransportError::Other("sending the request failed")
    } else {
        TransportError::Other("HTTP error")
    }
}

/// The longest wait a provider's `Retry-After` can impose: a day, enough for a daily quota
/// to reset. A longer value (a date years ahead, `18446744073709551615` seconds) is a broken
/// or hostile peer; honoured as given it would silence the key's checks for good, and the
/// largest values overflow the scheduler's clock arithmetic.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date
/// (`Wed, 21 Oct 2015 07:28:00 GMT`, also the obsolete RFC 850 and asctime forms).
/// A date in the past means "now" (zero); a wait beyond [`MAX_RETRY_AFTER`] is cut to it.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits beyond u64 are still a number of seconds: a very long wait, not garbage.
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value)
        .map(|d| d.timestamp())
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|format| chrono::NaiveDateTime::parse_from_str(value, format).ok())
                .map(|naive| naive.and_utc().timestamp())
        })?;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(when.saturating_sub(now).max(0) as u64).min(MAX_RETRY_AFTER))
}

/// A header value carrying a secret (`prefix` + key), marked sensitive so it is never
/// printed by the HTTP stack. `None` when the key has characters a header cannot carry.
pub(crate) fn secret_header(prefix: &str, secret: &secrecy::SecretString) -> Option<HeaderValue> {
    use secrecy::ExposeSecret;
    let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose_secret())).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A URL requested again and again (a provider's check endpoint), parsed once when the
/// adapter is built: reqwest parses a URL given as text on every request, IDNA host
/// processing included, and a sweep sends thousands of them.
pub(crate) fn parse_url(provider: &str, url: String) -> Result<reqwest::Url, super::ProviderError> {
    reqwest::Url::parse(&url).map_err(|error| {
        super::ProviderError::Config(format!(
            "provider {provider:?}: {url:?} is not a valid URL: {error}"
        ))
    })
}

/// `base` + `path`, with exactly one slash between them.
pub(crate) fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Percent-encodes a value for one URL path segment or query value (RFC 3986 unreserved kept).
pub(crate) fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(
            parse_retry_after("120", at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", at(0)), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_http_dates() {
        // 2015-10-21T07:28:00Z = 1445412480
        let now = at(1_445_412_480 - 90);
        for value in [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Wednesday, 21-Oct-15 07:28:00 GMT",
            "Wed Oct 21 07:28:00 2015",
        ] {
            assert_eq!(
                parse_retry_after(value, now),
                Some(Duration::from_secs(90)),
                "{value}"
            );
        }
    }

    #[test]
    fn retry_after_beyond_a_day_is_capped() {
        let now = at(1_445_412_480);
        for value in [
            "86401",
            "18446744073709551615",
            "99999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Thu, 22 Oct 2015 07:28:01 GMT",
        ] {
            assert_eq!(
                parse_retry_after(value, now),
                Some(MAX_RETRY_AFTER),
                "{value}"
            );
        }
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:27:59 GMT", now),
            Some(MAX_RETRY_AFTER - Duration::from_secs(1))
        );
    }

    #[test]
    fn retry_after_in_the_past_is_zero_and_garbage_is_none() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", at(2_000_000_000)),
            Some(Duration::ZERO)
        );
        for bad in ["", "soon", "-5", "1.5", "Wed, 99 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad}");
        }
    }

    #[test]
    fn urls_join_and_encode() {
        assert_eq!(join_url("http://x/v1/", "/models"), "http://x/v1/models");
        assert_eq!(join_url("http://x/v1", "models"), "http://x/v1/models");
        assert_eq!(encode_component("keyrotd/a b"), "keyrotd%2Fa%20b");
    }
}
