//! Anthropic: `GET {base}/models` with `x-api-key` and `anthropic-version`.
//!
//! A 429 is a rate limit (`rate_limit_error`) whether or not it carries `retry-after`; out of
//! credit is a 402 `billing_error` (exhausted). 529 (overloaded) is transient.
//!
//! Anthropic cannot issue keys by API, but with an admin key (`sk-ant-admin01-…`) the Admin
//! API deactivates one: [`AnthropicRevoker`] finds an imported key by its `partial_key_hint`
//! in `GET /organizations/api_keys` and sends `POST /organizations/api_keys/{id}`
//! `{"status":"inactive"}`.

use super::classify::{call, data_list_report, list_page, string_at, HeaderKeyCheck};
use super::client::{encode_component, join_url, secret_header, HttpClient};
use super::{base_url, CheckReport, Provider, ProviderError, ProviderTelemetry, Revoker};
use crate::config::ProviderConfig;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub(crate) struct Anthropic {
    check: HeaderKeyCheck,
}

impl Anthropic {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let models_url = join_url(&base_url(config)?, "models");
        let check = HeaderKeyCheck::new(config, telemetry, models_url, "x-api-key")?
            .with_header("anthropic-version", config.anthropic_version());
        Ok(Anthropic { check })
    }
}

#[async_trait]
impl Provider for Anthropic {
    async fn check(&self, key: &SecretString) -> CheckReport {
        // A 429 is `rate_limit_error`, with or without `retry-after`: running out of credit
        // is a 402 `billing_error` (exhausted by the default table).
        self.check.run(key, data_list_report).await
    }
}

/// Deactivates keys through the Anthropic Admin API (admin key in `x-api-key`).
pub(crate) struct AnthropicRevoker {
    client: HttpClient,
    base: String,
    version: String,
    admin_key: SecretString,
}

/// Keys asked for per page of `GET /organizations/api_keys` (the API allows 1-1000).
const PAGE_LIMIT: usize = 100;
/// Safety net against a server that always says `has_more`.
const MAX_PAGES: usize = 100;

/// One entry of the key listing that matched the secret's hint.
struct Listed {
    id: String,
    status: String,
}

impl AnthropicRevoker {
    /// `None` without a `management_key`: the key is then only retired locally.
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Option<Self>, ProviderError> {
        let Some(admin_key) = super::management_key(config)? else {
            return Ok(None);
        };
        Ok(Some(AnthropicRevoker {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            version: config.anthropic_version().to_string(),
            admin_key,
        }))
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let key = secret_header("", &self.admin_key).ok_or_else(|| {
            ProviderError::Config("management key cannot be sent in a header".into())
        })?;
        Ok(self
            .client
            .request(method, join_url(&self.base, path))
            .header("x-api-key", key)
            .header("anthropic-version", &self.version))
    }

    /// Every key of the organisation whose `partial_key_hint` fits `key`.
    async fn find(&self, key: &SecretString) -> Result<Vec<Listed>, ProviderError> {
        let mut found = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut path = format!("organizations/api_keys?limit={PAGE_LIMIT}");
            if let Some(after) = &after {
                path.push_str(&format!("&after_id={}", encode_component(after)));
            }
            let request = self.request(reqwest::Method::GET, &path)?;
            let (page, body) = list_page(&self.client, request, &self.admin_key).await?;
            for item in &page {
                let hint = item
                    .get("partial_key_hint")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if hint_matches(hint, key) {
                    found.push(Listed {
                        id: string_at(item, "/id", "list")?,
                        status: item
                            .get("status")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    });
                }
            }
            if body.get("has_more").and_then(Value::as_bool) != Some(true) {
                return Ok(found);
            }
            let last = body
                .get("last_id")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
                .or_else(|| {
                    page.last()
                        .and_then(|i| i.get("id"))
                        .and_then(Value::as_str)
                })
                .ok_or_else(|| {
                    ProviderError::Malformed("list: `has_more` without `last_id`".into())
                })?;
            if after.as_deref() == Some(last) {
                return Err(ProviderError::Malformed(
                    "list: the next page cursor does not move".into(),
                ));
            }
            after = Some(last.to_string());
        }
        Err(ProviderError::Malformed(format!(
            "list: more than {MAX_PAGES} pages"
        )))
    }

    async fn set_inactive(&self, id: &str) -> Result<(), ProviderError> {
        let request = self
            .request(
                reqwest::Method::POST,
                &format!("organizations/api_keys/{}", encode_component(id)),
            )?
            .json(&serde_json::json!({ "status": "inactive" }));
        call(&self.client, "revoke", request, Some(&self.admin_key), &[]).await?;
        Ok(())
    }
}

/// `partial_key_hint` shows the start and the end of a key with `...` between
/// (`sk-ant-api03-R2D...igAA`): both ends must match, around at least one hidden character.
pub(crate) fn hint_matches(hint: &str, key: &SecretString) -> bool {
    let Some((head, tail)) = hint.split_once("...") else {
        return false;
    };
    let key = key.expose_secret();
    !head.is_empty()
        && !tail.is_empty()
        && key.len() > head.len() + tail.len()
        && key.starts_with(head)
        && key.ends_with(tail)
}

#[async_trait]
impl Revoker for AnthropicRevoker {
    async fn deactivate(
        &self,
        key: &SecretString,
        remote_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        if let Some(id) = remote_id {
            return self.set_inactive(id).await;
        }
        let mut found = self.find(key).await?;
        match found.len() {
            0 => Err(ProviderError::Unidentified(
                "no API key of the organization has a partial_key_hint matching this key; deactivate it in the Console".into(),
            )),
            1 => {
                let listed = found.remove(0);
                if matches!(listed.status.as_str(), "inactive" | "archived") {
                    return Ok(());
                }
                self.set_inactive(&listed.id).await
            }
            n => Err(ProviderError::Unidentified(format!(
                "{n} API keys of the organization share this key's partial_key_hint; refusing to guess, deactivate it in the Console"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_match_both_ends() {
        let key = SecretString::from("sk-ant-api03-R2Dxxxxxxxxxxxxxxxxxxxxxxxx-igAA");
        assert!(hint_matches("sk-ant-api03-R2D...igAA", &key));
        assert!(!hint_matches("sk-ant-api03-R2D...igAB", &key));
        assert!(!hint_matches("sk-ant-api03-X2D...igAA", &key));
        assert!(!hint_matches("sk-ant-api03-R2DigAA", &key));
        assert!(!hint_matches("...igAA", &key));
        assert!(!hint_matches("", &key));
        let short = SecretString::from("abcd");
        assert!(!hint_matches("ab...cd", &short));
    }
}
