//! Azure OpenAI: `GET {endpoint}/openai/models?api-version=…` with the `api-key` header.
//!
//! Azure keys come in two slots and regenerating one kills its old value at once, so a 401
//! here right after a regeneration is the expected end of the previous key.
//!
//! With the management plane configured, [`AzureIssuer`] rotates the two slots through ARM.

use super::classify::take_secret_json;
use super::classify::{call, data_list_report, string_at, HeaderKeyCheck};
use super::client::{encode_component, join_url, secret_header, HttpClient};
use super::sanitize::sanitize;
use super::{
    base_url, CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError,
    ProviderTelemetry, RemoteKey, Revoker,
};
use crate::config::ProviderConfig;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

pub(crate) struct Azure {
    check: HeaderKeyCheck,
}

impl Azure {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let models_url = format!(
            "{}?api-version={}",
            join_url(&base_url(config)?, "openai/models"),
            encode_component(config.api_version())
        );
        Ok(Azure {
            check: HeaderKeyCheck::new(config, telemetry, models_url, "api-key")?,
        })
    }
}

#[async_trait]
impl Provider for Azure {
    async fn check(&self, key: &SecretString) -> CheckReport {
        self.check.run(key, data_list_report).await
    }
}

/// Azure OpenAI key slots through the management plane (ARM), with an Entra bearer token as
/// `management_key`:
/// `POST {management_url}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/accounts/{account}/regenerateKey?api-version=…`
/// `{"keyName":"Key1"|"Key2"}` → `{"key1","key2"}`, and `…/listKeys` → the same shape.
///
/// The account has two slots, `key1` and `key2`; the provider id of a key is its slot name.
/// A rotation regenerates the slot consumers do *not* use (the other one than the current
/// key's), and revoking a key regenerates its slot, which kills the old value at once.
///
/// The token is short-lived (about an hour): keyrotd does not obtain it. Refresh it
/// externally (e.g. a systemd timer running `az account get-access-token` into the file the
/// `management_key` reference names); it is read again at every call.
pub(crate) struct AzureIssuer {
    client: HttpClient,
    account_url: String,
    api_version: String,
    provider: String,
    token: crate::config::SecretRef,
}

/// The two key slots: (provider id, ARM `keyName`).
const SLOTS: [(&str, &str); 2] = [("key1", "Key1"), ("key2", "Key2")];

impl AzureIssuer {
    /// `None` unless `subscription_id`, `resource_group` and `account_name` are configured.
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Option<Self>, ProviderError> {
        let Some((subscription, group, account)) = config.azure_account() else {
            return Ok(None);
        };
        let token = config.management_key.clone().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind azure_openai needs `management_key` (an Entra bearer token) to rotate key slots",
                config.name()
            ))
        })?;
        let account_url = join_url(
            config.management_url(),
            &format!(
                "subscriptions/{}/resourceGroups/{}/providers/Microsoft.CognitiveServices/accounts/{}",
                encode_component(subscription),
                encode_component(group),
                encode_component(account)
            ),
        );
        Ok(Some(AzureIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            account_url,
            api_version: config.management_api_version().to_string(),
            provider: config.name().to_string(),
            token,
        }))
    }

    /// The bearer token, read now (an external job refreshes it).
    fn token(&self) -> Result<SecretString, ProviderError> {
        self.token.resolve().map_err(|err| {
            ProviderError::Config(format!(
                "provider {:?}: management key: {err}",
                self.provider
            ))
        })
    }

    /// One ARM action on the account; the answer is `{"key1","key2"}` in both cases.
    /// Error details are sanitised against the token and `key` (when given).
    async fn action(
        &self,
        operation: &str,
        action: &str,
        body: Option<Value>,
        key: Option<&SecretString>,
    ) -> Result<[SecretString; 2], ProviderError> {
        let token = self.token()?;
        let auth = secret_header("Bearer ", &token).ok_or_else(|| {
            ProviderError::Config("management key cannot be sent in a header".into())
        })?;
        let url = format!(
            "{}/{action}?api-version={}",
            self.account_url,
            encode_component(&self.api_version)
        );
        let mut request = self
            .client
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::AUTHORIZATION, auth);
        request = match body {
            Some(body) => request.json(&body),
            None => request.header(reqwest::header::CONTENT_LENGTH, "0"),
        };
        let mut response = call(&self.client, operation, request, Some(&token), &[])
            .await
            .map_err(|err| match (err, key) {
                (
                    ProviderError::Rejected {
                        status,
                        detail,
                        retry_after,
                    },
                    Some(key),
                ) => ProviderError::Rejected {
                    status,
                    detail: sanitize(&detail, Some(key)),
                    retry_after,
                },
                (err, _) => err,
            })?;
        let body = take_secret_json(&mut response, operation)?;
        let key1 = SecretString::from(string_at(&body, "/key1", operation)?);
        let key2 = SecretString::from(string_at(&body, "/key2", operation)?);
        Ok([key1, key2])
    }

    async fn regenerate(&self, slot: usize) -> Result<SecretString, ProviderError> {
        let [key1, key2] = self
            .action(
                "issue",
                "regenerateKey",
                Some(serde_json::json!({ "keyName": SLOTS[slot].1 })),
                None,
            )
            .await?;
        Ok(if slot == 0 { key1 } else { key2 })
    }

    /// Which slot holds `key` now, if any.
    async fn slot_of(&self, key: &SecretString) -> Result<Option<usize>, ProviderError> {
        let keys = self.action("list", "listKeys", None, Some(key)).await?;
        Ok(keys.iter().position(|k| same(k, key)))
    }
}

fn slot_index(remote_id: &str) -> Option<usize> {
    SLOTS.iter().position(|(id, _)| *id == remote_id)
}

/// Compares two secrets without an early exit on the first differing byte.
fn same(a: &SecretString, b: &SecretString) -> bool {
    let (a, b) = (a.expose_secret().as_bytes(), b.expose_secret().as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl Issuer for AzureIssuer {
    /// Without knowing the slot in use, no slot is safe to regenerate.
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let Some(current) = request.replaces else {
            return Err(ProviderError::Unidentified(
                "the credential has no current key, so the Azure slot in use is unknown; import the key consumers use first (`keyrotd key import`)".into(),
            ));
        };
        let in_use = match current.remote_id.and_then(slot_index) {
            Some(slot) => slot,
            None => {
                let secret = current.secret.ok_or_else(|| {
                    ProviderError::Unidentified(
                        "the current key has no slot id and its value is not available".into(),
                    )
                })?;
                self.slot_of(secret).await?.ok_or_else(|| {
                    ProviderError::Unidentified(
                        "the current key is in neither key1 nor key2 of the Azure account; is `account_name` right?".into(),
                    )
                })?
            }
        };
        let other = 1 - in_use;
        let secret = self.regenerate(other).await?;
        Ok(IssuedKey {
            secret,
            remote_id: SLOTS[other].0.to_string(),
            expires_at: None,
        })
    }

    /// Always empty: Azure keeps no key names, and there are no orphans to find — a
    /// rotation only ever regenerates the one slot not in use, so a crash after the call
    /// leaves that slot holding an unknown value that the retry regenerates again.
    async fn list(&self, _prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        Ok(Vec::new())
    }

    /// Regenerates the slot `remote_id` (`key1`/`key2`); the new value is discarded.
    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let slot = slot_index(remote_id).ok_or_else(|| {
            ProviderError::Unidentified(format!("{remote_id:?} is not an Azure key slot"))
        })?;
        self.regenerate(slot).await.map(drop)
    }
}

#[async_trait]
impl Revoker for AzureIssuer {
    /// Regenerates the slot that still holds `key`; when no slot holds it any more (already
    /// regenerated), there is nothing to do. Checking the value first means a stale retry
    /// can never regenerate a slot that meanwhile holds a newer key.
    async fn deactivate(
        &self,
        key: &SecretString,
        _remote_id: Option<&str>,
    ) -> Result<(), ProviderError> {
        match self.slot_of(key).await? {
            Some(slot) => self.regenerate(slot).await.map(drop),
            None => Ok(()),
        }
    }
}
