//! Azure OpenAI: `GET {endpoint}/openai/models?api-version=…` with the `api-key` header.
//!
//! Azure keys come in two slots and regenerating one kills its old value at once, so a 401
//! here right after a regeneration is the expected end of the previous key.

use super::classify::{check_flow, error_report, unexpected_body, unsendable_key};
use super::client::{encode_component, join_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Azure {
    client: HttpClient,
    models_url: String,
}

impl Azure {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let url = join_url(&base_url(config)?, "openai/models");
        Ok(Azure {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            models_url: format!(
                "{url}?api-version={}",
                encode_component(config.api_version())
            ),
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
        _ => error_report(response),
    }
}

#[async_trait]
impl Provider for Azure {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let Some(secret) = secret_header("", key) else {
            return unsendable_key();
        };
        let request = self
            .client
            .request(reqwest::Method::GET, &self.models_url)
            .header("api-key", secret);
        check_flow(&self.client, request, key, classify).await
    }
}
