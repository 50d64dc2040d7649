//! OpenRouter: `GET {base}/key` with `Authorization: Bearer`.
//!
//! The answer carries the key's spending limit (`limit` null = unlimited, so no credit entry;
//! otherwise `limit_remaining` in USD), its spend this UTC day, week and month
//! (`usage_daily/weekly/monthly`, usage entries beside the credit) and its `expires_at`
//! (ISO-8601 or null). 401 means invalid or disabled; 402 is out of credits (account or key
//! limit).

use super::classify::{amount, call, error_report, expiry, iso_utc, string_at, unexpected_body};
use super::classify::{bearer_get_check, list_page, take_secret_json};
use super::client::{encode_component, join_url, parse_url, secret_header, HttpClient, Response};
use super::{
    base_url, CheckReport, Credit, CurrentKey, IssueRequest, IssuedKey, Issuer, Provider,
    ProviderError, ProviderTelemetry, RemoteKey,
};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct OpenRouter {
    client: HttpClient,
    key_url: reqwest::Url,
}

impl OpenRouter {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenRouter {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            key_url: parse_url(config.name(), join_url(&base_url(config)?, "key"))?,
        })
    }
}

pub(super) fn classify(response: &Response) -> CheckReport {
    if !(200..=299).contains(&response.status) {
        let mut report = error_report(response);
        if response.status == 402 {
            report.status = CheckStatus::Exhausted;
        }
        return report;
    }
    let Some(data) = response
        .json()
        .and_then(|body| body.get("data").cloned())
        .filter(Value::is_object)
    else {
        return unexpected_body(response);
    };
    let Ok(expires_at) = expiry(data.get("expires_at")) else {
        return unexpected_body(response);
    };
    let mut credit = Vec::new();
    let limited = data.get("limit").is_some_and(|l| !l.is_null());
    if limited {
        match data.get("limit_remaining").and_then(amount) {
            Some(remaining) => credit.push(Credit {
                unit: "usd".into(),
                remaining,
            }),
            None => return unexpected_body(response),
        }
    }
    let spent = credit.first().is_some_and(|c| c.remaining <= 0.0);
    for period in ["daily", "weekly", "monthly"] {
        if let Some(used) = data.get(format!("usage_{period}")).and_then(amount) {
            credit.push(Credit::usage("usd", period, used));
        }
    }
    let (status, detail) = if data.get("disabled").and_then(Value::as_bool) == Some(true) {
        (CheckStatus::Invalid, "key is disabled".to_string())
    } else if spent {
        (
            CheckStatus::Exhausted,
            "key limit reached (limit_remaining <= 0)".to_string(),
        )
    } else {
        (CheckStatus::Valid, format!("HTTP {}", response.status))
    };
    let mut report = CheckReport::new(status, detail);
    report.credit = credit;
    report.expires_at = expires_at;
    report
}

#[async_trait]
impl Provider for OpenRouter {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.key_url, key, classify).await
    }
}

/// OpenRouter key management with a management key (the vendor's current word;
/// formerly "provisioning key"): `POST /keys` → 201 `{data:{hash,...}, key}`,
/// `GET /keys/{hash}`, `GET /keys?offset=&include_disabled=true[&workspace_id=]`,
/// `DELETE /keys/{hash}` (404 = already gone).
///
/// A new key carries the spending cap of the key it replaces (`limit`, `limit_reset`,
/// `include_byok_in_limit`), read from the provider just before the create: a rotation must
/// never turn a capped key into an uncapped one. If the cap cannot be read, nothing is
/// issued and the rotation is retried.
pub(crate) struct OpenRouterIssuer {
    client: HttpClient,
    base: String,
    management_key: SecretString,
    /// The workspace new keys are created in and listed from (`workspace_id`).
    workspace_id: Option<String>,
}

/// Safety net against a server that never returns an empty page.
const MAX_PAGES: usize = 100;

/// The spending cap of a key, as OpenRouter reports it and takes it on create.
#[derive(Debug, Default, Clone, PartialEq)]
struct SpendingCap {
    /// USD; `None` = unlimited.
    limit: Option<Value>,
    /// `daily` / `weekly` / `monthly`; `None` = the limit never resets.
    limit_reset: Option<String>,
    include_byok_in_limit: Option<bool>,
}

impl SpendingCap {
    /// Reads the cap from a key object (`data` of `GET /keys/{hash}` or `GET /key`).
    fn read(data: &Value) -> Result<SpendingCap, String> {
        let limit = match data.get("limit") {
            None | Some(Value::Null) => None,
            Some(value) if amount(value).is_some() => Some(value.clone()),
            Some(_) => return Err("`limit` is not an amount".into()),
        };
        let limit_reset = match data.get("limit_reset") {
            None | Some(Value::Null) => None,
            Some(Value::String(reset))
                if matches!(reset.as_str(), "daily" | "weekly" | "monthly") =>
            {
                Some(reset.clone())
            }
            Some(_) => return Err("`limit_reset` is not daily, weekly or monthly".into()),
        };
        let include_byok_in_limit = match data.get("include_byok_in_limit") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(include)) => Some(*include),
            Some(_) => return Err("`include_byok_in_limit` is not a boolean".into()),
        };
        Ok(SpendingCap {
            limit,
            limit_reset,
            include_byok_in_limit,
        })
    }
}

impl OpenRouterIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(OpenRouterIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            management_key: super::required_management_key(config)?,
            workspace_id: config.workspace_id().map(str::to_string),
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let auth = secret_header("Bearer ", &self.management_key).ok_or_else(|| {
            ProviderError::Config("the management key cannot be sent in a header".into())
        })?;
        Ok(self
            .client
            .request(method, join_url(&self.base, path))
            .header(reqwest::header::AUTHORIZATION, auth))
    }

    /// The spending cap of the key `replaces` names: by its hash through the management API,
    /// or, for a key imported by value, through `GET /key` with the key itself (the only
    /// way to name it for certain: the listing shows a masked label, not the value).
    async fn replaced_cap(&self, replaces: &CurrentKey<'_>) -> Result<SpendingCap, ProviderError> {
        let (response, secret) = if let Some(hash) = replaces.remote_id {
            let request = self.request(
                reqwest::Method::GET,
                &format!("keys/{}", encode_component(hash)),
            )?;
            let response = call(
                &self.client,
                "read_limit",
                request,
                Some(&self.management_key),
                &[],
            )
            .await?;
            (response, None)
        } else if let Some(secret) = replaces.secret {
            let auth = secret_header("Bearer ", secret).ok_or_else(|| {
                ProviderError::Unidentified(
                    "the replaced key cannot be sent in a header to read its limit".into(),
                )
            })?;
            let request = self
                .client
                .request(reqwest::Method::GET, join_url(&self.base, "key"))
                .header(reqwest::header::AUTHORIZATION, auth);
            let response = call(&self.client, "read_limit", request, Some(secret), &[])
                .await
                .map_err(|error| match error {
                    // Only the key itself can name a key imported without its hash: once
                    // OpenRouter refuses it (disabled, deleted), nothing can read its cap.
                    ProviderError::Rejected {
                        status: 401 | 403, ..
                    } => ProviderError::Unidentified(format!(
                        "the replaced key was imported without its hash and OpenRouter refuses it ({error}), so its spending limit cannot be read: create its successor with that limit at OpenRouter and `keyrotd key import` it"
                    )),
                    other => other,
                })?;
            (response, Some(secret))
        } else {
            return Err(ProviderError::Unidentified(
                "the replaced key has neither a hash nor a stored value".into(),
            ));
        };
        let body = response.json().ok_or_else(|| {
            ProviderError::Malformed(format!(
                "read_limit: HTTP {} body is not JSON",
                response.status
            ))
        })?;
        let data = body
            .get("data")
            .filter(|d| d.is_object())
            .ok_or_else(|| ProviderError::Malformed("read_limit: no `data` object".into()))?;
        let cap = SpendingCap::read(data)
            .map_err(|what| ProviderError::Malformed(format!("read_limit: {what}")))?;
        if secret.is_some() && cap.limit.is_some() && cap.include_byok_in_limit.is_none() {
            tracing::warn!(
                "the replaced key was imported without its hash and GET /key does not say whether its limit includes BYOK usage; the new key gets the vendor's default (import keys with their hash to copy it)"
            );
        }
        Ok(cap)
    }
}

/// A failure to read the replaced key's cap, as the engine should see it: transient (retried
/// with backoff), whatever the cause, because issuing without the cap would silently remove
/// it, and the cause (a management key without read access, an API outage) is outside the
/// new key.
fn cap_unreadable(error: ProviderError) -> ProviderError {
    if error.is_transient() {
        return error;
    }
    ProviderError::Unreachable(format!(
        "could not read the spending limit of the replaced key, so no key was issued (a rotation never drops a cap): {error}"
    ))
}

#[async_trait]
impl Issuer for OpenRouterIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let mut body = serde_json::Map::new();
        body.insert("name".into(), Value::from(issue.name));
        if let Some(replaces) = &issue.replaces {
            let cap = self.replaced_cap(replaces).await.map_err(cap_unreadable)?;
            if let Some(limit) = cap.limit {
                body.insert("limit".into(), limit);
            }
            if let Some(reset) = cap.limit_reset {
                body.insert("limit_reset".into(), Value::from(reset));
            }
            if let Some(include) = cap.include_byok_in_limit {
                body.insert("include_byok_in_limit".into(), Value::from(include));
            }
        }
        if let Some(at) = issue.expires_at {
            // ISO-8601, UTC only, as OpenRouter takes it.
            body.insert("expires_at".into(), Value::from(iso_utc(at)?));
        }
        if let Some(workspace) = &self.workspace_id {
            body.insert("workspace_id".into(), Value::from(workspace.as_str()));
        }
        let request = self
            .request(reqwest::Method::POST, "keys")?
            .json(&Value::Object(body));
        let mut response = call(
            &self.client,
            "issue",
            request,
            Some(&self.management_key),
            &[],
        )
        .await?;
        let body = take_secret_json(&mut response, "issue")?;
        let secret = SecretString::from(string_at(&body, "/key", "issue")?);
        let remote_id = string_at(&body, "/data/hash", "issue")?;
        // The expiry the vendor answered; the one asked for when it accepted it without
        // echoing it (recording an expiry is the safe side: the key is rotated before it).
        let expires_at = expiry(body.pointer("/data/expires_at"))
            .unwrap_or(None)
            .or(issue.expires_at);
        Ok(IssuedKey {
            secret,
            remote_id,
            expires_at,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let mut found = Vec::new();
        let mut offset = 0usize;
        let workspace = self
            .workspace_id
            .as_deref()
            .map(|w| format!("&workspace_id={}", encode_component(w)))
            .unwrap_or_default();
        for _ in 0..MAX_PAGES {
            let request = self.request(
                reqwest::Method::GET,
                &format!("keys?offset={offset}&include_disabled=true{workspace}"),
            )?;
            let (page, _) = list_page(&self.client, request, &self.management_key).await?;
            if page.is_empty() {
                return Ok(found);
            }
            offset += page.len();
            for item in &page {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.starts_with(prefix) {
                    found.push(RemoteKey {
                        remote_id: string_at(item, "/hash", "list")?,
                        name: name.to_string(),
                    });
                }
            }
        }
        Err(ProviderError::Malformed(format!(
            "list: more than {MAX_PAGES} pages"
        )))
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let request = self.request(
            reqwest::Method::DELETE,
            &format!("keys/{}", encode_component(remote_id)),
        )?;
        call(
            &self.client,
            "revoke",
            request,
            Some(&self.management_key),
            &[404],
        )
        .await?;
        Ok(())
    }
}
