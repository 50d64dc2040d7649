//! OpenAI and OpenAI-compatible APIs (Mistral, Groq, Together, relays): `GET {base}/models`
//! with `Authorization: Bearer`.
//!
//! OpenAI's 429 means two different things: `insufficient_quota` (out of credit: exhausted)
//! or a rate limit. Together answers a bare JSON array instead of `{data:[...]}`; Groq's 498
//! (capacity) is transient like a 5xx.
//!
//! Key management with an admin key (`sk-admin-…`) lives beside the check: `accounts`
//! issues project keys (a service account per key, or keys of one service account), `admin`
//! rotates the admin key itself (kind `openai_admin`). Both send the admin key read from its
//! reference at every call ([`AdminKey`]), so a rotated admin key is used from the next call,
//! and both set a lifetime with `expires_in_seconds` ([`expires_in_seconds`]).

mod accounts;
pub(super) mod admin;

pub(crate) use accounts::OpenAiIssuer;

use super::classify::{bearer_get_check, error_detail, list_page, string_at};
use super::classify::{call, error_report, unexpected_body, vendor_error};
use super::client::{join_url, parse_url, secret_header, HttpClient, Response};
use super::sanitize::sanitize;
use super::RemoteKey;
use super::{base_url, CheckReport, IssueRequest, Provider, ProviderError, ProviderTelemetry};
use crate::config::{ProviderConfig, ProviderKind, SecretRef};
use crate::model::{CheckStatus, UnixTime};
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct OpenAi {
    client: HttpClient,
    models_url: reqwest::Url,
    /// Accept the bare-array `models` answer of compatible APIs.
    compatible: bool,
}

impl OpenAi {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenAi {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            models_url: parse_url(config.name(), join_url(&base_url(config)?, "models"))?,
            compatible: config.kind == ProviderKind::OpenaiCompatible,
        })
    }

    fn classify(&self, response: &Response) -> CheckReport {
        classify(response, self.compatible)
    }
}

/// `compatible` accepts the bare-array `models` answer of compatible APIs.
pub(super) fn classify(response: &Response, compatible: bool) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(Value::Object(body)) if body.get("data").is_some_and(Value::is_array) => {
                CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
            }
            Some(Value::Array(_)) if compatible => {
                CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
            }
            _ => unexpected_body(response),
        },
        429 => {
            let mut report = error_report(response);
            if let Some(body) = response.json() {
                if vendor_error(&body).has_code("insufficient_quota") {
                    report.status = CheckStatus::Exhausted;
                }
            }
            report
        }
        _ => error_report(response),
    }
}

#[async_trait]
impl Provider for OpenAi {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.models_url, key, |r| self.classify(r)).await
    }
}

/// The admin key of a provider section, read from its reference at every call (as Azure's
/// ARM token is): when keyrotd rotates the admin key into that file, the next call uses it.
pub(super) struct AdminKey {
    reference: SecretRef,
    provider: String,
}

impl AdminKey {
    pub(super) fn new(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let reference = config.management_key.clone().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind {} needs `management_key` (an admin key) to issue and revoke keys",
                config.name(),
                config.kind.as_str()
            ))
        })?;
        Ok(AdminKey {
            reference,
            provider: config.name().to_string(),
        })
    }

    /// The key as it is now, and `request` with it as Bearer.
    pub(super) fn authorize(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(reqwest::RequestBuilder, SecretString), ProviderError> {
        let key = self.reference.resolve().map_err(|err| {
            ProviderError::Config(format!(
                "provider {:?}: management key: {err}",
                self.provider
            ))
        })?;
        let auth = secret_header("Bearer ", &key)
            .ok_or_else(|| ProviderError::Config("admin key cannot be sent in a header".into()))?;
        Ok((request.header(reqwest::header::AUTHORIZATION, auth), key))
    }
}

/// The vendor's bounds on `expires_in_seconds`.
const MAX_EXPIRES_IN: i64 = 31_536_000;

/// The `expires_in_seconds` that makes a key die at `request.expires_at`, counted from the
/// engine's `now` and clamped to the vendor's 1..=31,536,000: a key asked to outlive a year
/// gets a year, and the expiry the vendor answers (or `now` plus the clamped lifetime) is
/// what keyrotd records.
pub(crate) fn expires_in_seconds(request: &IssueRequest<'_>) -> Option<i64> {
    request
        .expires_at
        .map(|at| (at - request.now).clamp(1, MAX_EXPIRES_IN))
}

/// The expiry to record for a key created with `expires_in`: the vendor's `expires_at`
/// when it answers one, else `now + expires_in`.
pub(super) fn issued_expiry(
    answered: Option<&Value>,
    request: &IssueRequest<'_>,
    expires_in: Option<i64>,
) -> Option<UnixTime> {
    super::classify::expiry(answered)
        .ok()
        .flatten()
        .or_else(|| expires_in.map(|seconds| request.now + seconds))
}

/// Turns the vendor's refusal of a key's lifetime into [`ProviderError::ExpiryPolicy`],
/// which says what to change; any other error passes through. OpenAI answers
/// `400 {"error":{"message","type":"invalid_request_error","param":"expires_in_seconds","code"}}`
/// when an organisation or project policy makes expiry mandatory (no lifetime sent) or caps
/// it (the lifetime sent is too long).
pub(super) async fn create(
    client: &HttpClient,
    request: reqwest::RequestBuilder,
    admin_key: &SecretString,
    expires_in: Option<i64>,
) -> Result<Response, ProviderError> {
    let response = client.send("issue", request).await?;
    if (200..=299).contains(&response.status) {
        return Ok(response);
    }
    if let Some(policy) = expiry_policy(&response, admin_key, expires_in) {
        return Err(policy);
    }
    Err(super::classify::rejected(&response, Some(admin_key)))
}

fn expiry_policy(
    response: &Response,
    admin_key: &SecretString,
    expires_in: Option<i64>,
) -> Option<ProviderError> {
    if !matches!(response.status, 400 | 422) {
        return None;
    }
    let body = response.json()?;
    let param = body
        .pointer("/error/param")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let error = vendor_error(&body);
    let message = error.message.clone().unwrap_or_default().to_lowercase();
    let about_expiry = param == "expires_in_seconds"
        || error.codes.iter().any(|c| c.contains("expir"))
        || (message.contains("expir") && message.contains("polic"));
    if !about_expiry {
        return None;
    }
    let vendor = sanitize(&error_detail(response), Some(admin_key));
    let what = match expires_in {
        None => "the organisation or project policy requires every API key to expire, and keyrotd asked for none; give the credential a `max_age` or `schedule` so it has a planned replacement, and leave `provider_expiry_margin` on (not \"off\")".to_string(),
        Some(seconds) => format!(
            "the organisation or project policy caps API-key lifetimes below the {seconds}s keyrotd asked for (planned replacement + `grace` + `provider_expiry_margin`); shorten `max_age`/`schedule`, `grace` or `provider_expiry_margin` until their sum fits the policy's maximum"
        ),
    };
    Some(ProviderError::ExpiryPolicy(format!("{what} ({vendor})")))
}

/// Safety net against a server that always says `has_more`.
const MAX_PAGES: usize = 100;

/// Every item of an OpenAI cursor-paged listing (`limit=100&after={last id}` while
/// `has_more`, added to any query `url` has) that `keep` accepts, as a [`RemoteKey`] named
/// by its `name`.
pub(super) async fn list_all(
    client: &HttpClient,
    admin: &AdminKey,
    url: &str,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<RemoteKey>, ProviderError> {
    let mut found = Vec::new();
    let mut after: Option<String> = None;
    let joiner = if url.contains('?') { '&' } else { '?' };
    for _ in 0..MAX_PAGES {
        let url = match &after {
            Some(id) => format!(
                "{url}{joiner}limit=100&after={}",
                super::client::encode_component(id)
            ),
            None => format!("{url}{joiner}limit=100"),
        };
        let (request, key) = admin.authorize(client.request(reqwest::Method::GET, &url))?;
        let (page, body) = list_page(client, request, &key).await?;
        for item in page.iter().filter(|item| keep(item)) {
            found.push(RemoteKey {
                remote_id: string_at(item, "/id", "list")?,
                name: item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        let has_more = body.get("has_more").and_then(Value::as_bool) == Some(true);
        let last = page
            .last()
            .and_then(|item| item.get("id"))
            .and_then(Value::as_str);
        match (has_more, last) {
            (true, Some(last)) => after = Some(last.to_string()),
            _ => return Ok(found),
        }
    }
    Err(ProviderError::Malformed(format!(
        "list: more than {MAX_PAGES} pages"
    )))
}

/// `DELETE url`; already gone (404) is success.
pub(super) async fn delete(
    client: &HttpClient,
    admin: &AdminKey,
    url: &str,
) -> Result<(), ProviderError> {
    let (request, key) = admin.authorize(client.request(reqwest::Method::DELETE, url))?;
    call(client, "revoke", request, Some(&key), &[404]).await?;
    Ok(())
}
