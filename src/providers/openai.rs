//! OpenAI and OpenAI-compatible APIs (Mistral, Groq, Together, relays): `GET {base}/models`
//! with `Authorization: Bearer`.
//!
//! OpenAI's 429 means two different things: `insufficient_quota` (out of credit: exhausted)
//! or a rate limit. Together answers a bare JSON array instead of `{data:[...]}`; Groq's 498
//! (capacity) is transient like a 5xx.

use super::classify::{check_flow, error_report, unexpected_body, unsendable_key, vendor_error};
use super::client::{join_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::{ProviderConfig, ProviderKind};
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct OpenAi {
    client: HttpClient,
    models_url: String,
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
            models_url: join_url(&base_url(config)?, "models"),
            compatible: config.kind == ProviderKind::OpenaiCompatible,
        })
    }

    fn classify(&self, response: &Response) -> CheckReport {
        match response.status {
            200..=299 => match response.json() {
                Some(Value::Object(body)) if body.get("data").is_some_and(Value::is_array) => {
                    CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
                }
                Some(Value::Array(_)) if self.compatible => {
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
}

#[async_trait]
impl Provider for OpenAi {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let Some(auth) = secret_header("Bearer ", key) else {
            return unsendable_key();
        };
        let request = self
            .client
            .request(reqwest::Method::GET, &self.models_url)
            .header(reqwest::header::AUTHORIZATION, auth);
        check_flow(&self.client, request, key, |r| self.classify(r)).await
    }
}
