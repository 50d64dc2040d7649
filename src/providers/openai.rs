//! OpenAI and OpenAI-compatible APIs (Mistral, Groq, Together, relays): `GET {base}/models`
//! with `Authorization: Bearer`.
//!
//! OpenAI's 429 means two different things: `insufficient_quota` (out of credit: exhausted)
//! or a rate limit. Together answers a bare JSON array instead of `{data:[...]}`; Groq's 498
//! (capacity) is transient like a 5xx.

use super::classify::{bearer_get_check, list_page, take_secret_json};
use super::classify::{call, error_report, string_at, unexpected_body, vendor_error};
use super::client::{encode_component, join_url, parse_url, secret_header, HttpClient, Response};
use super::{
    base_url, CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey,
};
use crate::config::{ProviderConfig, ProviderKind};
use crate::model::CheckStatus;
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

/// OpenAI key management with an admin key (`sk-admin-…`): one service account per issued
/// key in the configured project. `POST …/service_accounts {name}` returns the account and its
/// key; deleting the account kills the key; listing the accounts finds orphans.
pub(crate) struct OpenAiIssuer {
    client: HttpClient,
    accounts_url: String,
    admin_key: SecretString,
}

/// Safety net against a server that always says `has_more`.
const MAX_PAGES: usize = 100;

impl OpenAiIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let project = config.project.as_ref().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind openai needs `project` to issue keys",
                config.name()
            ))
        })?;
        let path = format!(
            "organization/projects/{}/service_accounts",
            encode_component(project.get_ref())
        );
        Ok(OpenAiIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            accounts_url: join_url(&base_url(config)?, &path),
            admin_key: super::required_management_key(config)?,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let auth = secret_header("Bearer ", &self.admin_key)
            .ok_or_else(|| ProviderError::Config("admin key cannot be sent in a header".into()))?;
        Ok(self
            .client
            .request(method, url)
            .header(reqwest::header::AUTHORIZATION, auth))
    }
}

#[async_trait]
impl Issuer for OpenAiIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let name = issue.name;
        let request = self
            .request(reqwest::Method::POST, &self.accounts_url)?
            .json(&serde_json::json!({ "name": name }));
        let mut response = call(&self.client, "issue", request, Some(&self.admin_key), &[]).await?;
        let body = take_secret_json(&mut response, "issue")?;
        Ok(IssuedKey {
            secret: SecretString::from(string_at(&body, "/api_key/value", "issue")?),
            remote_id: string_at(&body, "/id", "issue")?,
            expires_at: None,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let url = match &after {
                Some(id) => format!(
                    "{}?limit=100&after={}",
                    self.accounts_url,
                    encode_component(id)
                ),
                None => format!("{}?limit=100", self.accounts_url),
            };
            let request = self.request(reqwest::Method::GET, &url)?;
            let (page, body) = list_page(&self.client, request, &self.admin_key).await?;
            for item in &page {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.starts_with(prefix) {
                    found.push(RemoteKey {
                        remote_id: string_at(item, "/id", "list")?,
                        name: name.to_string(),
                    });
                }
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

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let url = format!("{}/{}", self.accounts_url, encode_component(remote_id));
        let request = self.request(reqwest::Method::DELETE, &url)?;
        call(
            &self.client,
            "revoke",
            request,
            Some(&self.admin_key),
            &[404],
        )
        .await?;
        Ok(())
    }
}
