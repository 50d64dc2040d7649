//! Gemini keys issued and deleted through Google Cloud's API Keys v2 API, with an OAuth
//! access token read from its file at every call (`[provider.google]`).
//!
//! - issue: the replaced key's restrictions are read (`GET /v2/{key}`) and copied onto its
//!   successor, so a rotation never widens what a key may do; with no replaced key (or one
//!   keyrotd knows only by value: Google's lookup by value takes the key in a URL query,
//!   which keyrotd never sends) or one without API targets, the new key is limited to
//!   `generativelanguage.googleapis.com`. `POST /v2/projects/{p}/locations/global/keys`
//!   starts an operation, polled until `done` (`operation.rs`); the Key it answers carries
//!   `keyString`, else `GET /v2/{key}/keyString` reads it.
//! - list: `GET /v2/projects/{p}/locations/global/keys`, paged; deleted keys are not listed
//!   (they are dead for callers). Names come from the annotation described in `names.rs`.
//! - revoke: `DELETE /v2/{key}`, an operation too (a soft delete: Google keeps the key
//!   undeletable for 30 days, but it stops working at once); a 404 is already gone.
//!
//! The API has no expiry on keys: `IssueRequest::expires_at` is ignored.

use super::super::classify::{call, json_body, string_at, take_secret_json};
use super::super::client::{encode_component, join_url, secret_header, HttpClient, Response};
use super::super::{IssueRequest, IssuedKey, Issuer, ProviderError, ProviderTelemetry, RemoteKey};
use super::names::{display_name, NAME_ANNOTATION};
use super::operation::{operation_name, resource_path, state, Pauses, State};
use crate::config::{ProviderConfig, SecretRef};
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The API target every Gemini key keyrotd issues is limited to, at least.
const GEMINI_SERVICE: &str = "generativelanguage.googleapis.com";

/// Keys per listing page (the API's maximum is 300).
const PAGE_SIZE: u32 = 300;
/// Safety net against a server whose `nextPageToken` never ends.
const MAX_PAGES: usize = 100;

pub(crate) struct ApiKeysIssuer {
    client: HttpClient,
    /// `{api_keys_url}/v2/`, to which resource names are appended.
    v2: String,
    /// `projects/{project}/locations/global/keys`.
    keys: String,
    provider: String,
    token: SecretRef,
    operation_timeout: Duration,
}

impl ApiKeysIssuer {
    /// `None` without a `[provider.google]` table: the provider is check-only.
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Option<Self>, ProviderError> {
        let Some(google) = &config.google else {
            return Ok(None);
        };
        Ok(Some(ApiKeysIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            v2: join_url(google.api_keys_url(), "v2/"),
            keys: format!("projects/{}/locations/global/keys", google.project()),
            provider: config.name().to_string(),
            token: google.token.clone(),
            operation_timeout: google.operation_timeout(config.timeout()),
        }))
    }

    /// The access token, read now (something else refreshes the file).
    fn token(&self) -> Result<SecretString, ProviderError> {
        self.token.resolve().map_err(|err| {
            ProviderError::Config(format!(
                "provider {:?}: [provider.google] token: {err}",
                self.provider
            ))
        })
    }

    /// One request to `{v2}{path}` with the token as Bearer; errors sanitised against it.
    async fn send(
        &self,
        operation: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        also_ok: &[u16],
    ) -> Result<Response, ProviderError> {
        let token = self.token()?;
        let auth = secret_header("Bearer ", &token).ok_or_else(|| {
            ProviderError::Config("the access token cannot be sent in a header".into())
        })?;
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.v2))
            .header(reqwest::header::AUTHORIZATION, auth);
        if let Some(body) = body {
            request = request.json(body);
        }
        call(&self.client, operation, request, Some(&token), also_ok).await
    }

    /// The restrictions for the successor of `replaces` (see the module doc).
    async fn restrictions(&self, replaces: Option<&str>) -> Result<Value, ProviderError> {
        let mut restrictions = Map::new();
        if let Some(old) = replaces {
            let key = key_name(old, "issue")?;
            let response = self
                .send("issue", reqwest::Method::GET, key, None, &[404])
                .await?;
            if response.status == 404 {
                // The key consumers use is gone at Google already: nothing left to copy, and
                // the rotation is what brings them a working key again.
                tracing::warn!(provider = %self.provider, remote_id = %key, "the replaced key no longer exists at Google; its successor gets the default restrictions");
            } else {
                let mut old = json_body(&response, "issue")?;
                if let Some(Value::Object(old)) = old.get_mut("restrictions").map(Value::take) {
                    restrictions = old;
                }
            }
        }
        let has_targets = restrictions
            .get("apiTargets")
            .and_then(Value::as_array)
            .is_some_and(|targets| !targets.is_empty());
        if !has_targets {
            restrictions.insert("apiTargets".into(), json!([{ "service": GEMINI_SERVICE }]));
        }
        Ok(Value::Object(restrictions))
    }

    /// Polls `operation` (an answer to create or delete) until `done`, within the bound.
    async fn finish(&self, what: &str, mut operation: Value) -> Result<Value, ProviderError> {
        let mut pauses = Pauses::within(self.operation_timeout);
        loop {
            match state(&operation, what)? {
                State::Succeeded(response) => return Ok(response),
                State::Failed(error) => return Err(error),
                State::Running => {}
            }
            let name = operation_name(&operation, what)?.to_string();
            // A poll that fails for a passing reason (5xx, 429, a timeout) is asked again
            // within the bound; the operation goes on at Google either way.
            loop {
                if !pauses.wait().await {
                    return Err(ProviderError::Timeout(self.operation_timeout));
                }
                match self
                    .send(what, reqwest::Method::GET, &name, None, &[])
                    .await
                {
                    Ok(mut response) => {
                        operation = take_secret_json(&mut response, what)?;
                        break;
                    }
                    Err(error) if error.is_transient() => continue,
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

/// `remote_id` as a key resource name that can go into a URL path unescaped.
fn key_name<'a>(remote_id: &'a str, what: &str) -> Result<&'a str, ProviderError> {
    let segments: Vec<&str> = remote_id.split('/').collect();
    let shaped = segments.len() == 6
        && segments[0] == "projects"
        && segments[2] == "locations"
        && segments[4] == "keys";
    if shaped && resource_path(remote_id) {
        Ok(remote_id)
    } else {
        Err(ProviderError::Unidentified(format!(
            "{what}: {remote_id:?} is not an API key name (projects/…/locations/…/keys/…)"
        )))
    }
}

#[async_trait]
impl Issuer for ApiKeysIssuer {
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let restrictions = self
            .restrictions(request.replaces.and_then(|current| current.remote_id))
            .await?;
        let body = json!({
            "displayName": display_name(request.name),
            "annotations": { NAME_ANNOTATION: request.name },
            "restrictions": restrictions,
        });
        let mut response = self
            .send("issue", reqwest::Method::POST, &self.keys, Some(&body), &[])
            .await?;
        let operation = take_secret_json(&mut response, "issue")?;
        let key = self.finish("issue", operation).await?;
        let remote_id = key_name(&string_at(&key, "/name", "issue")?, "issue")?.to_string();
        let secret = match key.get("keyString").and_then(Value::as_str) {
            Some(secret) if !secret.is_empty() => SecretString::from(secret.to_string()),
            _ => {
                let mut response = self
                    .send(
                        "issue",
                        reqwest::Method::GET,
                        &format!("{remote_id}/keyString"),
                        None,
                        &[],
                    )
                    .await?;
                let body = take_secret_json(&mut response, "issue")?;
                SecretString::from(string_at(&body, "/keyString", "issue")?)
            }
        };
        Ok(IssuedKey {
            secret,
            remote_id,
            expires_at: None,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let mut found = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut path = format!("{}?pageSize={PAGE_SIZE}", self.keys);
            if let Some(page) = &page_token {
                path.push_str("&pageToken=");
                path.push_str(&encode_component(page));
            }
            let response = self
                .send("list", reqwest::Method::GET, &path, None, &[])
                .await?;
            let body = json_body(&response, "list")?;
            let keys = match body.get("keys") {
                Some(Value::Array(keys)) => keys.as_slice(),
                // An empty page leaves `keys` out.
                None => &[],
                Some(_) => {
                    return Err(ProviderError::Malformed(
                        "list: `keys` is not a list".into(),
                    ))
                }
            };
            for key in keys {
                let annotated = key
                    .pointer(&format!("/annotations/{NAME_ANNOTATION}"))
                    .and_then(Value::as_str);
                let display = key.get("displayName").and_then(Value::as_str);
                let Some(name) = annotated.or(display) else {
                    continue;
                };
                if name.starts_with(prefix) {
                    found.push(RemoteKey {
                        remote_id: string_at(key, "/name", "list")?,
                        name: name.to_string(),
                    });
                }
            }
            page_token = body
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|token| !token.is_empty())
                .map(str::to_string);
            if page_token.is_none() {
                return Ok(found);
            }
        }
        Err(ProviderError::Malformed(format!(
            "list: more than {MAX_PAGES} pages"
        )))
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let key = key_name(remote_id, "revoke")?;
        let outcome = match self
            .send("revoke", reqwest::Method::DELETE, key, None, &[404])
            .await
        {
            Ok(response) if response.status == 404 => return Ok(()),
            Ok(response) => match json_body(&response, "revoke") {
                Ok(operation) => self.finish("revoke", operation).await.map(drop),
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => Err(error),
            // What a repeated delete of a soft-deleted key answers is not documented (nor a
            // delete operation that ends in NOT_FOUND): if the key is deleted, it is revoked.
            Err(error) => match self.deleted(key).await {
                Ok(true) => Ok(()),
                _ => Err(error),
            },
        }
    }
}

impl ApiKeysIssuer {
    /// Whether `key` is gone or marked deleted (`deleteTime` set).
    async fn deleted(&self, key: &str) -> Result<bool, ProviderError> {
        let response = self
            .send("revoke", reqwest::Method::GET, key, None, &[404])
            .await?;
        if response.status == 404 {
            return Ok(true);
        }
        let body = json_body(&response, "revoke")?;
        Ok(body
            .get("deleteTime")
            .and_then(Value::as_str)
            .is_some_and(|time| !time.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_key_resource_names_are_used_in_urls() {
        let ok = "projects/123/locations/global/keys/b7ff1f9f-8275-410a-94dd-3855ee9b5dd2";
        assert_eq!(key_name(ok, "t").unwrap(), ok);
        for bad in [
            "key1",
            "projects/123/locations/global/keys",
            "projects/123/locations/global/keys/../../x",
            "projects/123/locations/global/keys/a?b=c",
            "projects/123/locations/global/other/k",
            "projects//locations/global/keys/k",
        ] {
            assert!(key_name(bad, "t").is_err(), "{bad}");
        }
    }
}
