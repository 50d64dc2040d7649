//! Google Gemini: `GET {base}/models` with `x-goog-api-key` (never the `?key=` query
//! parameter Google also accepts: URLs end up in logs).
//!
//! An invalid key is a **400** `INVALID_ARGUMENT` whose `details[].reason` is
//! `API_KEY_INVALID`; any other 400 says nothing about the key.
//!
//! With `[provider.google]`, [`ApiKeysIssuer`] issues and deletes the keys through Google
//! Cloud's API Keys v2 API (`api_keys.rs`), whose creates and deletes are long-running
//! operations (`operation.rs`), under display names that fit Google's limit (`names.rs`).

mod api_keys;
mod names;
mod operation;

pub(crate) use api_keys::ApiKeysIssuer;

use super::classify::{error_report, unexpected_body, vendor_error, HeaderKeyCheck};
use super::client::{join_url, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Gemini {
    check: HeaderKeyCheck,
}

impl Gemini {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let models_url = join_url(&base_url(config)?, "models");
        Ok(Gemini {
            check: HeaderKeyCheck::new(config, telemetry, models_url, "x-goog-api-key")?,
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
        self.check.run(key, classify).await
    }
}
