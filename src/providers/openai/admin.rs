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
//! The admin key an operator imported has no id in keyrotd's store, so [`AdminKeys`] is also
//! a [`Revoker`]: it finds that key among the organisation's admin keys by its
//! `redacted_value` (`sk-admin...xyz`: the key's first and last characters) and deletes it
//! only when exactly one admin key matches.
//!
//! Not every vendor allows this: OpenRouter management keys and Anthropic admin keys cannot
//! be created by API, so they are rotated by hand (see docs/providers.md).

use super::{create, delete, expires_in_seconds, issued_expiry, list_all, AdminKey};
use crate::config::ProviderConfig;
use crate::providers::classify::{bearer_get_check, data_list_report, string_at, take_secret_json};
use crate::providers::client::{encode_component, join_url, parse_url, HttpClient};
use crate::providers::{
    base_url, CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey, Revoker,
};
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
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

#[async_trait]
impl Provider for AdminKeyCheck {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.url, key, data_list_report).await
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

/// Whether `redacted` (`sk-admin...xyz`) can be the redacted form of `key`.
fn redacts(redacted: &str, key: &str) -> bool {
    match redacted.split_once("...") {
        Some((head, tail)) if !head.is_empty() && !tail.is_empty() => {
            key.len() > head.len() + tail.len() && key.starts_with(head) && key.ends_with(tail)
        }
        _ => false,
    }
}

#[async_trait]
impl Revoker for AdminKeys {
    /// Deletes the admin key `key`: by id when known, else the one admin key whose
    /// `redacted_value` fits it. None fitting means it is gone already; several fitting
    /// (the same first and last characters) is refused, as deleting the wrong admin key
    /// could cut keyrotd off.
    async fn deactivate(
        &self,
        key: &SecretString,
        remote_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        if let Some(id) = remote_id {
            return self.revoke(id).await;
        }
        let value = key.expose_secret();
        let fitting = list_all(&self.client, &self.admin_key, &self.url, |item| {
            item.get("redacted_value")
                .and_then(Value::as_str)
                .is_some_and(|redacted| redacts(redacted, value))
        })
        .await?;
        match fitting.as_slice() {
            [] => Ok(()),
            [one] => self.revoke(&one.remote_id).await,
            several => Err(ProviderError::Unidentified(format!(
                "{} admin keys have the same redacted value; delete the old one in the OpenAI console",
                several.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacts;

    #[test]
    fn a_redacted_value_fits_only_keys_with_its_ends() {
        assert!(redacts("sk-admin...xyz", "sk-admin-1234xyz"));
        assert!(!redacts("sk-admin...xyz", "sk-admin-1234xya"));
        assert!(!redacts("sk-admin...xyz", "sk-proj-1234xyz"));
        assert!(!redacts("sk-admin...", "sk-admin-1234xyz"));
        assert!(!redacts("sk-admin-1234xyz", "sk-admin-1234xyz"));
    }
}
