//! Google Gemini: `GET {base}/models` with `x-goog-api-key` (never the `?key=` query
//! parameter Google also accepts: URLs end up in logs).
//!
//! An invalid key is a **400** `INVALID_ARGUMENT` whose `details[].reason` is
//! `API_KEY_INVALID`; any other 400 says nothing about the key.

use super::classify::{check_flow, error_report, unexpected_body, unsendable_key, vendor_error};
use super::client::{join_url, parse_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Gemini {
    client: HttpClient,
    models_url: reqwest::Url,
}

impl Gemini {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(Gemini {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            models_url: parse_url(config.name(), join_url(&base_url(config)?, "models"))?,
        })
    }
}

pub(super) fn classify(response: &Response) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(Value::Object(body)) if body.get("models").is_some_and(Value::is_array) => {
                CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
            }
            _ => unexpected_body(response),
        },
        400 => {
            let mut report = error_report(response);
            let key_invalid = response.json().is_some_and(|body| {
                let error = vendor_error(&body);
                error.reasons.iter().any(|r| r == "API_KEY_INVALID")
            });
            if key_invalid {
                report.status = CheckStatus::Invalid;
            }
            report
        }
        _ => error_report(response),
    }
}

#[async_trait]
impl Provider for Gemini {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let Some(secret) = secret_header("", key) else {
            return unsendable_key();
        };
        let request = self
            .client
            .request(reqwest::Method::GET, self.models_url.clone())
            .header("x-goog-api-key", secret);
        check_flow(&self.client, request, key, classify).await
    }
}
