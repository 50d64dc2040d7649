//! The simulated provider of `keyrotd demo` and the tests, spoken to over HTTP like any
//! vendor: `GET {base}/v1/key` with `Authorization: Bearer`, 200 valid, 401 invalid.
//!
//! The in-process simulated server will implement the other side; until then any server with
//! this shape (a wiremock in tests) stands in for it.

use super::classify::{bearer_get_check, take_secret_json};
use super::classify::{call, error_report, expiry, json_body, string_at, unexpected_body};
use super::client::{encode_component, join_url, parse_url, secret_header, HttpClient, Response};
use super::{
    base_url, CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey,
};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct Simulated {
    client: HttpClient,
    key_url: reqwest::Url,
}

impl Simulated {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(Simulated {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            key_url: parse_url(config.name(), join_url(&base_url(config)?, "v1/key"))?,
        })
    }
}

/// 200 must carry a JSON object; an optional `expires_at` (epoch seconds) is reported.
pub(super) fn classify(response: &Response) -> CheckReport {
    match response.status {
        200..=299 => match response.json() {
            Some(body @ Value::Object(_)) => match expiry(
                body.get("data")
                    .and_then(|data| data.get("expires_at"))
                    .or(body.get("expires_at")),
            ) {
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
        bearer_get_check(&self.client, &self.key_url, key, classify).await
    }
}

/// The simulated provider's key API: `POST {base}/v1/keys {name}` → `{id,key}`,
/// `GET {base}/v1/keys` → `[{id,name}]`, `DELETE {base}/v1/keys/{id}` (404 = gone).
/// A management key, when configured, is sent as Bearer.
pub(crate) struct SimulatedIssuer {
    client: HttpClient,
    keys_url: String,
    management_key: Option<SecretString>,
}

impl SimulatedIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(SimulatedIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            keys_url: join_url(&base_url(config)?, "v1/keys"),
            management_key: super::management_key(config)?,
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let mut request = self.client.request(method, url);
        if let Some(key) = &self.management_key {
            let auth = secret_header("Bearer ", key).ok_or_else(|| {
                ProviderError::Config("management key cannot be sent in a header".into())
            })?;
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        Ok(request)
    }
}

#[async_trait]
impl Issuer for SimulatedIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let name = issue.name;
        let mut body = serde_json::json!({ "name": name });
        if let Some(expires_at) = issue.expires_at {
            body["expires_at"] = expires_at.into();
        }
        let request = self
            .request(reqwest::Method::POST, &self.keys_url)?
            .json(&body);
        let secret = self.management_key.as_ref();
        let mut response = call(&self.client, "issue", request, secret, &[]).await?;
        let body = take_secret_json(&mut response, "issue")?;
        Ok(IssuedKey {
            secret: SecretString::from(string_at(&body, "/key", "issue")?),
            remote_id: string_at(&body, "/id", "issue")?,
            expires_at: expiry(body.get("expires_at")).unwrap_or(None),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let request = self.request(reqwest::Method::GET, &self.keys_url)?;
        let response = call(
            &self.client,
            "list",
            request,
            self.management_key.as_ref(),
            &[],
        )
        .await?;
        let body = json_body(&response, "list")?;
        // The simulator answers `{"data": [...]}`; a bare array is accepted too.
        let items = body
            .get("data")
            .unwrap_or(&body)
            .as_array()
            .ok_or_else(|| ProviderError::Malformed("list: body is not an array".into()))?;
        let mut found = Vec::new();
        for item in items {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.starts_with(prefix) {
                found.push(RemoteKey {
                    remote_id: string_at(item, "/id", "list")?,
                    name: name.to_string(),
                });
            }
        }
        Ok(found)
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let url = format!("{}/{}", self.keys_url, encode_component(remote_id));
        let request = self.request(reqwest::Method::DELETE, &url)?;
        call(
            &self.client,
            "revoke",
            request,
            self.management_key.as_ref(),
            &[404],
        )
        .await?;
        Ok(())
    }
}
