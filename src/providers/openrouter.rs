//! OpenRouter: `GET {base}/key` with `Authorization: Bearer`.
//!
//! The answer carries the key's spending limit (`limit` null = unlimited, so no credit entry;
//! otherwise `limit_remaining` in USD) and its `expires_at` (ISO-8601 or null). 401 means
//! invalid or disabled; 402 is out of credits (account or key limit).

use super::classify::{amount, check_flow, error_report, expiry, unexpected_body, unsendable_key};
use super::client::{join_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Credit, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct OpenRouter {
    client: HttpClient,
    key_url: String,
}

impl OpenRouter {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenRouter {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            key_url: join_url(&base_url(config)?, "key"),
        })
    }
}

fn classify(response: &Response) -> CheckReport {
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
        let Some(auth) = secret_header("Bearer ", key) else {
            return unsendable_key();
        };
        let request = self
            .client
            .request(reqwest::Method::GET, &self.key_url)
            .header(reqwest::header::AUTHORIZATION, auth);
        check_flow(&self.client, request, key, classify).await
    }
}
