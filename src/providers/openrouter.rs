//! OpenRouter: `GET {base}/key` with `Authorization: Bearer`.
//!
//! The answer carries the key's spending limit (`limit` null = unlimited, so no credit entry;
//! otherwise `limit_remaining` in USD) and its `expires_at` (ISO-8601 or null). 401 means
//! invalid or disabled; 402 is out of credits (account or key limit).

use super::classify::{amount, call, error_report, expiry, string_at, unexpected_body};
use super::classify::{bearer_get_check, list_page, take_secret_json};
use super::client::{encode_component, join_url, parse_url, secret_header, HttpClient, Response};
use super::{
    base_url, CheckReport, Credit, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey,
};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct OpenRouter {
    client: HttpClient,
    key_url: reqwest::Url,
}

impl OpenRouter {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenRouter {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            key_url: parse_url(config.name(), join_url(&base_url(config)?, "key"))?,
        })
    }
}

pub(super) fn classify(response: &Response) -> CheckReport {
    if !(200..=299).contains(&response.status) {
        let mut report = error_report(response);
        if response.status == 402 {
            report.status = CheckStatus::Exhausted;
        }
        return report;
    }
    let Some(data) = response
        .json()
        .and_then(|body| body.get("data").cloned())
        .filter(Value::is_object)
    else {
        return unexpected_body(response);
    };
    let Ok(expires_at) = expiry(data.get("expires_at")) else {
        return unexpected_body(response);
    };
    let mut credit = Vec::new();
    let limited = data.get("limit").is_some_and(|l| !l.is_null());
    if limited {
        match data.get("limit_remaining").and_then(amount) {
            Some(remaining) => credit.push(Credit {
                unit: "usd".into(),
                remaining,
            }),
            None => return unexpected_body(response),
        }
    }
    let (status, detail) = if data.get("disabled").and_then(Value::as_bool) == Some(true) {
        (CheckStatus::Invalid, "key is disabled".to_string())
    } else if credit.first().is_some_and(|c| c.remaining <= 0.0) {
        (
            CheckStatus::Exhausted,
            "key limit reached (limit_remaining <= 0)".to_string(),
        )
    } else {
        (CheckStatus::Valid, format!("HTTP {}", response.status))
    };
    let mut report = CheckReport::new(status, detail);
    report.credit = credit;
    report.expires_at = expires_at;
    report
}

#[async_trait]
impl Provider for OpenRouter {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.key_url, key, classify).await
    }
}

/// OpenRouter key management with a management (formerly "provisioning") key:
/// `POST /keys` → 201 `{data:{hash,...}, key}`, `GET /keys?offset=&include_disabled=true`,
/// `DELETE /keys/{hash}` (404 = already gone).
pub(crate) struct OpenRouterIssuer {
    client: HttpClient,
    base: String,
    management_key: SecretString,
}

/// Safety net against a server that never returns an empty page.
const MAX_PAGES: usize = 100;

impl OpenRouterIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenRouterIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            management_key: super::required_management_key(config)?,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let auth = secret_header("Bearer ", &self.management_key).ok_or_else(|| {
            ProviderError::Config("management key cannot be sent in a header".into())
        })?;
        Ok(self
            .client
            .request(method, join_url(&self.base, path))
            .header(reqwest::header::AUTHORIZATION, auth))
    }
}

#[async_trait]
impl Issuer for OpenRouterIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let name = issue.name;
        let request = self
            .request(reqwest::Method::POST, "keys")?
            .json(&serde_json::json!({ "name": name }));
        let mut response = call(
            &self.client,
            "issue",
            request,
            Some(&self.management_key),
            &[],
        )
        .await?;
        let body = take_secret_json(&mut response, "issue")?;
        let secret = SecretString::from(string_at(&body, "/key", "issue")?);
        let remote_id = string_at(&body, "/data/hash", "issue")?;
        let expires_at = expiry(body.pointer("/data/expires_at")).unwrap_or(None);
        Ok(IssuedKey {
            secret,
            remote_id,
            expires_at,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let mut found = Vec::new();
        let mut offset = 0usize;
        for _ in 0..MAX_PAGES {
            let request = self.request(
                reqwest::Method::GET,
                &format!("keys?offset={offset}&include_disabled=true"),
            )?;
            let (page, _) = list_page(&self.client, request, &self.management_key).await?;
            if page.is_empty() {
                return Ok(found);
            }
            offset += page.len();
            for item in &page {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.starts_with(prefix) {
                    found.push(RemoteKey {
                        remote_id: string_at(item, "/hash", "list")?,
                        name: name.to_string(),
                    });
                }
            }
        }
        Err(ProviderError::Malformed(format!(
            "list: more than {MAX_PAGES} pages"
        )))
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let request = self.request(
            reqwest::Method::DELETE,
            &format!("keys/{}", encode_component(remote_id)),
        )?;
        call(
            &self.client,
            "revoke",
            request,
            Some(&self.management_key),
            &[404],
        )
        .await?;
        Ok(())
    }
}
