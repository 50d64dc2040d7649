//! Anthropic: `GET {base}/models` with `x-api-key` and `anthropic-version`.
//!
//! A 429 *with* `retry-after` is a rate limit; *without* it, it is the organisation's spend
//! cap (exhausted). 529 (overloaded) is transient.

use super::classify::{check_flow, error_report, unexpected_body, unsendable_key};
use super::client::{join_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Anthropic {
    client: HttpClient,
    models_url: String,
    version: String,
}

impl Anthropic {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(Anthropic {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            models_url: join_url(&base_url(config)?, "models"),
            version: config.anthropic_version().to_string(),
        })
    }
}

pub(super) fn classify(response: &Response) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(Value::Object(body)) if body.get("data").is_some_and(Value::is_array) => {
                CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
            }
            _ => unexpected_body(response),
        },
        429 => {
            let mut report = error_report(response);
            if !response.has_header("retry-after") {
                report.status = CheckStatus::Exhausted;
                report
                    .detail
                    .push_str(" (no retry-after: spend limit reached)");
            }
            report
        }
        _ => error_report(response),
    }
}

#[async_trait]
impl Provider for Anthropic {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let Some(secret) = secret_header("", key) else {
            return unsendable_key();
        };
        let request = self
            .client
            .request(reqwest::Method::GET, &self.models_url)
            .header("x-api-key", secret)
            .header("anthropic-version", &self.version);
        check_flow(&self.client, request, key, classify).await
    }
}
