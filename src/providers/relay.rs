//! `kind = "relay"`: a HolySheep-style relay API, an OpenAI-compatible relay at `…/v1` that
//! has key endpoints of its own: `GET /auth/verify` with Bearer (401 when expired) for
//! checks — a preset of the generic HTTP adapter — and `POST /keys/rotate` /
//! `GET /keys/{name}/metadata` for issuing.
//!
//! The API shape is as HolySheep's integration guide describes it, not a confirmed public
//! API: a relay that differs is served by the generic `http` kind. The guide's
//! `POST /auth/refresh` (a short-lived access token) is not used: keyrotd checks and rotates
//! the key itself.

use super::classify::take_secret_json;
use super::classify::{call, expiry, json_body, string_at};
use super::client::{encode_component, join_url, secret_header, HttpClient};
use super::http::{CheckRules, Http, RequestTemplate};
use super::{
    base_url, IssueRequest, IssuedKey, Issuer, ProviderError, ProviderTelemetry, RemoteKey,
};
use crate::config::ProviderConfig;
use async_trait::async_trait;
use reqwest::header::AUTHORIZATION;
use reqwest::Method;
use secrecy::SecretString;

/// The check preset: `GET {base}/auth/verify`, Bearer; 200 valid (an `expires_at` in the
/// body, epoch seconds, is reported), 401/403 invalid, 402 exhausted, 429 rate limited.
pub(crate) fn check_rules() -> CheckRules {
    CheckRules {
        request: RequestTemplate {
            method: Method::GET,
            path: "/auth/verify".into(),
            headers: vec![(AUTHORIZATION, "Bearer {key}".into())],
            body: None,
        },
        valid_status: vec![200],
        invalid_status: vec![401, 403],
        exhausted_status: vec![402],
        rate_limited_status: vec![429],
        valid_pointer: None,
        credit_pointer: None,
        credit_unit: "usd".into(),
        expires_at_pointer: Some("/expires_at".into()),
    }
}

pub(crate) fn checker(
    config: &ProviderConfig,
    telemetry: &ProviderTelemetry,
) -> Result<Http, ProviderError> {
    Http::with_rules(config, telemetry, check_rules())
}

/// The relay's key API with the management key as Bearer: `POST {base}/keys/rotate`
/// `{"rotation_policy": …, "name": …}` → `{"key": …}`, then `GET {base}/keys/{name}/metadata`
/// → `{created_at, expires_at}` (epoch seconds). The key's name is its id.
///
/// The integration guide describes neither listing nor revoking, so `list` and `revoke` report
/// `Unsupported`; use the generic `http` kind for a relay that has them.
pub(crate) struct RelayIssuer {
    client: HttpClient,
    base: String,
    management_key: SecretString,
    rotation_policy: String,
}

impl RelayIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(RelayIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            management_key: super::required_management_key(config)?,
            rotation_policy: config
                .rotation_policy
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_else(|| crate::config::DEFAULT_RELAY_ROTATION_POLICY.into()),
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let auth = secret_header("Bearer ", &self.management_key).ok_or_else(|| {
            ProviderError::Config("management key cannot be sent in a header".into())
        })?;
        Ok(self
            .client
            .request(method, join_url(&self.base, path))
            .header(AUTHORIZATION, auth))
    }
}

#[async_trait]
impl Issuer for RelayIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let name = issue.name;
        let request = self
            .request(Method::POST, "keys/rotate")?
            .json(&serde_json::json!({
                "rotation_policy": self.rotation_policy,
                "name": name,
            }));
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
        // The key exists now: a failed metadata lookup must not lose it, only its expiry.
        let metadata = async {
            let request = self.request(
                Method::GET,
                &format!("keys/{}/metadata", encode_component(name)),
            )?;
            let response = call(
                &self.client,
                "issue",
                request,
                Some(&self.management_key),
                &[],
            )
            .await?;
            let body = json_body(&response, "metadata")?;
            expiry(body.get("expires_at"))
                .map_err(|()| ProviderError::Malformed("metadata: unreadable expires_at".into()))
        };
        let expires_at = metadata.await.unwrap_or(None);
        Ok(IssuedKey {
            secret,
            remote_id: name.to_string(),
            expires_at,
        })
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        Err(ProviderError::Unsupported {
            kind: "relay",
            operation: "listing keys",
        })
    }

    fn can_revoke(&self) -> bool {
        false
    }

    async fn revoke(&self, _remote_id: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported {
            kind: "relay",
            operation: "revoking keys",
        })
    }
}
