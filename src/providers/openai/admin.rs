//! Kind `openai_admin`: keyrotd's own OpenAI admin key as a credential of its own.
//!
//! The admin key that issues project keys is itself a long-lived secret. OpenAI lets an
//! admin key create, list and delete admin keys (`/organization/admin_api_keys`: `POST
//! {name, expires_in_seconds?}` → `{id, value, expires_at, …}` with `value` only on create;
//! `GET` lists `{data:[{id, name, redacted_value, expires_at, last_used_at}], has_more}`;
//! `DELETE …/{key_id}`), so keyrotd rotates it like any key: the current admin key (read from
//! the `management_key` file at every call) issues its successor, the successor is verified
//! by listing admin keys with it, delivered to that same file (config validation insists the
//! credential delivers there), used from the next call on, and the old one is deleted after
//! grace — by the new one.
//!
//! Not every vendor allows this: OpenRouter management keys and Anthropic admin keys cannot
//! be created by API, so they are rotated by hand (see docs/providers.md).

use super::{create, delete, expires_in_seconds, issued_expiry, list_all, AdminKey};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use crate::providers::classify::{
    bearer_get_check, error_report, string_at, take_secret_json, unexpected_body,
};
use crate::providers::client::{encode_component, join_url, parse_url, HttpClient, Response};
use crate::providers::{
    base_url, CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey,
};
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

const PATH: &str = "organization/admin_api_keys";

/// Checks an admin key by listing one admin key with it: 200 with `data` is valid, 401/403
/// invalid (an ordinary project key gets 401/403 here too, so it cannot pass for one).
pub(crate) struct AdminKeyCheck {
    client: HttpClient,
    url: reqwest::Url,
}

impl AdminKeyCheck {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(AdminKeyCheck {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            url: parse_url(
                config.name(),
                format!("{}?limit=1", join_url(&base_url(config)?, PATH)),
            )?,
        })
    }
}

pub(crate) fn classify(response: &Response) -> CheckReport {
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
impl Provider for AdminKeyCheck {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.url, key, classify).await
    }
}

/// Issues, lists and deletes admin keys with the current admin key.
pub(crate) struct AdminKeys {
    client: HttpClient,
    url: String,
    admin_key: AdminKey,
}

impl AdminKeys {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(AdminKeys {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            url: join_url(&base_url(config)?, PATH),
            admin_key: AdminKey::new(config)?,
        })
    }
}

#[async_trait]
impl Issuer for AdminKeys {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let expires_in = expires_in_seconds(issue);
        let mut body = serde_json::json!({ "name": issue.name });
        if let Some(seconds) = expires_in {
            body["expires_in_seconds"] = serde_json::json!(seconds);
        }
        let (request, admin_key) = self
            .admin_key
            .authorize(self.client.request(reqwest::Method::POST, &self.url))?;
        let mut response =
            create(&self.client, request.json(&body), &admin_key, expires_in).await?;
        let body = take_secret_json(&mut response, "issue")?;
        Ok(IssuedKey {
            secret: SecretString::from(string_at(&body, "/value", "issue")?),
            remote_id: string_at(&body, "/id", "issue")?,
            expires_at: issued_expiry(body.get("expires_at"), issue, expires_in),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        list_all(&self.client, &self.admin_key, &self.url, |item| {
            item.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| name.starts_with(prefix))
        })
        .await
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let url = format!("{}/{}", self.url, encode_component(remote_id));
        delete(&self.client, &self.admin_key, &url).await
    }
}
