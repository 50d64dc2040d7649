//! Shared pieces of classification: the common check flow, vendor error bodies, the default
//! status table, and parsing of the loosely typed values vendors send (string amounts,
//! ISO-8601 or epoch expiries).
//!
//! Every `detail` leaves through [`check_flow`], which sanitises it against the key: an
//! adapter cannot forget to.

use super::client::{parse_url, secret_header, HttpClient, Response};
use super::sanitize::sanitize;
use super::{CheckReport, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::{CheckStatus, UnixTime};
use secrecy::SecretString;
use serde_json::Value;

/// Longest vendor message kept in a detail (before the final sanitising cut).
const MESSAGE_LEN: usize = 120;

/// Sends one check request and lets `classify` judge the response. Transport failures are
/// `unreachable`; `http_status` and `retry_after` are filled in; `detail` is sanitised.
pub(crate) async fn check_flow(
    client: &HttpClient,
    request: reqwest::RequestBuilder,
    key: &SecretString,
    classify: impl FnOnce(&Response) -> CheckReport,
) -> CheckReport {
    let mut report = match client.send("check", request).await {
        Err(err) => CheckReport::new(CheckStatus::Unreachable, err.to_string()),
        Ok(response) => {
            let mut report = classify(&response);
            report.http_status = Some(response.status);
            if report.status != CheckStatus::Valid && report.retry_after.is_none() {
                report.retry_after = response.retry_after();
            }
            report
        }
    };
    report.detail = sanitize(&report.detail, Some(key));
    report
}

/// The most common check: `GET url` with `Authorization: Bearer <key>`.
pub(crate) async fn bearer_get_check(
    client: &HttpClient,
    url: &reqwest::Url,
    key: &SecretString,
    classify: impl FnOnce(&Response) -> CheckReport,
) -> CheckReport {
    let Some(auth) = secret_header("Bearer ", key) else {
        return unsendable_key();
    };
    let request = client
        .request(reqwest::Method::GET, url.clone())
        .header(reqwest::header::AUTHORIZATION, auth);
    check_flow(client, request, key, classify).await
}

/// The check of a vendor that takes the key in a header of its own rather than as Bearer
/// (Anthropic `x-api-key`, Gemini `x-goog-api-key`, Azure `api-key`): `GET url` with
/// `header_name: <key>` and any fixed headers the vendor wants beside it. Built once per
/// provider; the vendor's `classify` judges each answer.
pub(crate) struct HeaderKeyCheck {
    client: HttpClient,
    url: reqwest::Url,
    header_name: &'static str,
    fixed_headers: Vec<(&'static str, String)>,
}

impl HeaderKeyCheck {
    /// A check of `url` (parsed now) sending the key in `header_name`.
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
        url: String,
        header_name: &'static str,
    ) -> Result<Self, ProviderError> {
        Ok(HeaderKeyCheck {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            url: parse_url(config.name(), url)?,
            header_name,
            fixed_headers: Vec::new(),
        })
    }

    /// Adds a header sent with every check (Anthropic's `anthropic-version`).
    pub(crate) fn with_header(mut self, name: &'static str, value: &str) -> Self {
        self.fixed_headers.push((name, value.to_string()));
        self
    }

    /// Probes `key` once; see [`check_flow`].
    pub(crate) async fn run(
        &self,
        key: &SecretString,
        classify: impl FnOnce(&Response) -> CheckReport,
    ) -> CheckReport {
        let Some(secret) = secret_header("", key) else {
            return unsendable_key();
        };
        let mut request = self
            .client
            .request(reqwest::Method::GET, self.url.clone())
            .header(self.header_name, secret);
        for (name, value) in &self.fixed_headers {
            request = request.header(*name, value);
        }
        check_flow(&self.client, request, key, classify).await
    }
}

/// A key that cannot even be put in a header (newline, control characters) cannot work.
pub(crate) fn unsendable_key() -> CheckReport {
    CheckReport::new(
        CheckStatus::Invalid,
        "the key contains characters that cannot be sent in an HTTP header",
    )
}

/// The usual meaning of an error status: 401/403 invalid, 402 exhausted, 429 rate limited,
/// anything else (5xx, 529, Groq's 498, an unexpected 404 from a wrong base URL) unreachable —
/// never blame the key for a status that does not speak about it. A 403 is judged further by
/// [`error_report`]: only the vendor's own JSON error may call a key invalid.
pub(crate) fn default_status(status: u16) -> CheckStatus {
    match status {
        401 | 403 => CheckStatus::Invalid,
        402 => CheckStatus::Exhausted,
        429 => CheckStatus::RateLimited,
        _ => CheckStatus::Unreachable,
    }
}

/// Vendor error codes of a 403 that refuse the caller's location, not the key (OpenAI's
/// region block): the key may be fine from elsewhere.
const REGION_CODES: [&str; 3] = [
    "unsupported_country_region_territory",
    "unsupported_country",
    "unsupported_region",
];

/// Report for a non-success response using [`default_status`]. A 403 says the key is bad
/// only when the body is the vendor's own JSON error about it: a WAF or proxy page (HTML, or
/// JSON without an error) and a region block cannot judge the key, so they are
/// `unreachable` with a detail that says why, and the key's validity stays as it was.
pub(crate) fn error_report(response: &Response) -> CheckReport {
    let detail = error_detail(response);
    if response.status == 403 {
        let error = response.json().map(|body| vendor_error(&body));
        match error {
            Some(e) if REGION_CODES.iter().any(|code| e.has_code(code)) => {
                return CheckReport::new(
                    CheckStatus::Unreachable,
                    format!("{detail} (the provider refuses this location, not the key)"),
                );
            }
            Some(e) if !e.codes.is_empty() || e.message.is_some() => {}
            _ => {
                return CheckReport::new(
                    CheckStatus::Unreachable,
                    format!(
                        "{detail} (not the provider's JSON error: a proxy or firewall answered, the key was not judged)"
                    ),
                );
            }
        }
    }
    CheckReport::new(default_status(response.status), detail)
}

/// The check of a listing endpoint (Anthropic's and Azure's `/models`, OpenAI's admin keys):
/// a 2xx with a `data` array is valid, another 2xx body is unexpected, an error status goes
/// by [`error_report`].
pub(crate) fn data_list_report(response: &Response) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(Value::Object(body)) if body.get("data").is_some_and(Value::is_array) => {
                CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
            }
            _ => unexpected_body(response),
        },
        _ => error_report(response),
    }
}

/// Report for a success status whose body is not what the vendor documents.
pub(crate) fn unexpected_body(response: &Response) -> CheckReport {
    let what = if response.json().is_some() {
        "body is not the documented shape"
    } else {
        "body is not JSON"
    };
    CheckReport::new(
        CheckStatus::Unreachable,
        format!("HTTP {} but {what}", response.status),
    )
}

/// The recognisable parts of a vendor error body.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct VendorError {
    /// Machine-readable identifiers: `error.code`, `error.type`, `error.status`, in that order.
    pub codes: Vec<String>,
    pub message: Option<String>,
    /// Gemini / Google `error.details[].reason`.
    pub reasons: Vec<String>,
}

impl VendorError {
    pub(crate) fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|c| c == code)
    }
}

fn scalar(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads OpenAI/OpenRouter/Gemini `{error:{code,type,message,status,details}}`, Anthropic
/// `{type:"error",error:{type,message}}`, and the plain `{error:"..."}`, `{message}`,
/// `{detail}` shapes.
pub(crate) fn vendor_error(body: &Value) -> VendorError {
    let mut out = VendorError::default();
    let error = body.get("error");
    match error {
        Some(Value::Object(_)) => {
            let e = error.unwrap();
            for field in ["code", "type", "status"] {
                if let Some(code) = scalar(e.get(field)) {
                    if !out.codes.contains(&code) {
                        out.codes.push(code);
                    }
                }
            }
            out.message = scalar(e.get("message"));
            if let Some(details) = e.get("details").and_then(Value::as_array) {
                out.reasons = details
                    .iter()
                    .filter_map(|d| scalar(d.get("reason")))
                    .collect();
            }
        }
        Some(Value::String(message)) => out.message = Some(message.clone()),
        _ => {
            out.codes.extend(scalar(body.get("code")));
            out.message = scalar(body.get("message"))
                .or_else(|| scalar(body.get("detail")))
                .or_else(|| scalar(body.get("msg")));
        }
    }
    out
}

/// `HTTP 429 insufficient_quota: You exceeded your current quota…` — status, vendor codes
/// and a cut vendor message; never the body itself. The caller's sanitising masks keys.
pub(crate) fn error_detail(response: &Response) -> String {
    let mut detail = format!("HTTP {}", response.status);
    if let Some(body) = response.json() {
        let error = vendor_error(&body);
        for code in error.codes.iter().chain(error.reasons.iter()).take(4) {
            detail.push(' ');
            detail.push_str(&code.chars().take(40).collect::<String>());
        }
        if let Some(message) = error.message {
            detail.push_str(": ");
            detail.push_str(
                &sanitize(&message, None)
                    .chars()
                    .take(MESSAGE_LEN)
                    .collect::<String>(),
            );
        }
    }
    detail
}

/// A `ProviderError` for a failed issuer request (status + vendor codes + cut message).
pub(crate) fn rejected(response: &Response, secret: Option<&SecretString>) -> ProviderError {
    ProviderError::Rejected {
        status: response.status,
        detail: sanitize(&error_detail(response), secret),
        retry_after: response.retry_after(),
    }
}

/// Sends one issuer request. Transport failures become `Timeout`/`Unreachable`, 5xx
/// `Unreachable`-like `Rejected`, any non-2xx (except the `also_ok` statuses) `Rejected` with a
/// sanitised detail. The response is returned for the caller to read.
pub(crate) async fn call(
    client: &HttpClient,
    operation: &str,
    request: reqwest::RequestBuilder,
    secret: Option<&SecretString>,
    also_ok: &[u16],
) -> Result<Response, ProviderError> {
    let response = client.send(operation, request).await?;
    if (200..=299).contains(&response.status) || also_ok.contains(&response.status) {
        Ok(response)
    } else {
        Err(rejected(&response, secret))
    }
}

/// The body of a success response as JSON, or `Malformed`.
pub(crate) fn json_body(response: &Response, what: &str) -> Result<Value, ProviderError> {
    response.json().ok_or_else(|| {
        ProviderError::Malformed(format!("{what}: HTTP {} body is not JSON", response.status))
    })
}

/// One page of a key listing whose body is `{"data": [...], ...}` (OpenAI, Anthropic and
/// OpenRouter list keys this way): the `data` items, and the rest of the body for paging.
pub(crate) async fn list_page(
    client: &HttpClient,
    request: reqwest::RequestBuilder,
    secret: &SecretString,
) -> Result<(Vec<Value>, Value), ProviderError> {
    let response = call(client, "list", request, Some(secret), &[]).await?;
    let mut body = json_body(&response, "list")?;
    match body.get_mut("data").map(Value::take) {
        Some(Value::Array(items)) => Ok((items, body)),
        _ => Err(ProviderError::Malformed("list: no `data` array".into())),
    }
}

/// Parses a body that carries a new key, then wipes the raw bytes whatever the outcome, so
/// the plaintext key is left only in the parsed value the caller turns into a secret.
pub(crate) fn take_secret_json(
    response: &mut Response,
    what: &str,
) -> Result<Value, ProviderError> {
    let body = json_body(response, what);
    zeroize::Zeroize::zeroize(&mut response.body);
    body
}

/// A non-empty string at `pointer`, or `Malformed` naming the field.
pub(crate) fn string_at(body: &Value, pointer: &str, what: &str) -> Result<String, ProviderError> {
    match body.pointer(pointer) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(ProviderError::Malformed(format!(
            "{what}: no `{pointer}` in the response"
        ))),
    }
}

/// An amount sent as a JSON number or a numeric string ("110.00").
pub(crate) fn amount(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}

/// An expiry sent as epoch seconds (number or digit string) or an RFC 3339 / ISO-8601 string.
/// `Err` when present but unreadable; `Ok(None)` when null or absent.
pub(crate) fn expiry(value: Option<&Value>) -> Result<Option<UnixTime>, ()> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_i64().map(Some).ok_or(()),
        Some(Value::String(s)) => {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return s.parse().map(Some).map_err(|_| ());
            }
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|d| Some(d.timestamp()))
                .map_err(|_| ())
        }
        Some(_) => Err(()),
    }
}

/// An expiry as RFC 3339 in UTC, to the second: `2027-01-15T08:00:00Z`.
pub(crate) fn iso_utc(at: UnixTime) -> Result<String, ProviderError> {
    chrono::DateTime::from_timestamp(at, 0)
        .map(|at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .ok_or_else(|| ProviderError::Config(format!("expiry {at} is not a representable time")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_vendor_error_shapes() {
        let openai = json!({"error":{"message":"quota","type":"insufficient_quota","code":"insufficient_quota"}});
        assert_eq!(vendor_error(&openai).codes, vec!["insufficient_quota"]);
        let anthropic = json!({"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}});
        assert_eq!(vendor_error(&anthropic).codes, vec!["authentication_error"]);
        let gemini = json!({"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT",
            "details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}});
        let g = vendor_error(&gemini);
        assert_eq!(g.codes, vec!["400", "INVALID_ARGUMENT"]);
        assert_eq!(g.reasons, vec!["API_KEY_INVALID"]);
        assert_eq!(
            vendor_error(&json!({"error":"nope"})).message.as_deref(),
            Some("nope")
        );
        assert_eq!(
            vendor_error(&json!({"detail":"x"})).message.as_deref(),
            Some("x")
        );
    }

    #[test]
    fn amounts_and_expiries() {
        assert_eq!(amount(&json!("110.00")), Some(110.0));
        assert_eq!(amount(&json!(3.5)), Some(3.5));
        assert_eq!(amount(&json!("lots")), None);
        assert_eq!(amount(&json!("NaN")), None);
        assert_eq!(expiry(Some(&json!(null))), Ok(None));
        assert_eq!(expiry(Some(&json!(1700000000))), Ok(Some(1_700_000_000)));
        assert_eq!(
            expiry(Some(&json!("2023-11-14T22:13:20Z"))),
            Ok(Some(1_700_000_000))
        );
        assert_eq!(
            expiry(Some(&json!("2023-11-14T22:13:20.000+00:00"))),
            Ok(Some(1_700_000_000))
        );
        assert_eq!(expiry(Some(&json!("tomorrow"))), Err(()));
    }
}
