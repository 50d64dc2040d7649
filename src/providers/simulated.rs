//! The simulated provider of `keyrotd demo` and the tests, spoken to over HTTP like any
//! vendor: `GET {base}/v1/key` with `Authorization: Bearer`, 200 valid, 401 invalid.
//!
//! The in-process simulated server will implement the other side; until then any server with
//! this shape (a wiremock in tests) stands in for it.

use super::classify::{check_flow, error_report, expiry, unexpected_body, unsendable_key};
use super::client::{join_url, secret_header, HttpClient, Response};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Simulated {
    client: HttpClient,
    key_url: String,
}

impl Simulated {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(Simulated {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            key_url: join_url(&base_url(config)?, "v1/key"),
        })
    }
}

/// 200 must carry a JSON object; an optional `expires_at` (epoch seconds) is reported.
fn classify(response: &Response) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(body @ Value::Object(_)) => match expiry(body.get("expires_at")) {
                Ok(expires_at) => {
                    let mut report =
                        CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status));
                    report.expires_at = expires_at;
                    report
                }
                Err(()) => unexpected_body(response),
            },
            _ => unexpected_body(response),
        },
        _ => error_report(response),
    }
}

#[async_trait]
impl Provider for Simulated {
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
