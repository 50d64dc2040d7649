//! OpenAI project keys issued with an admin key, in one of two shapes the config chooses:
//!
//! - **a service account per key** (the default): `POST …/projects/{project}/service_accounts
//!   {name, expires_in_seconds?}` returns the account and its first key, and the account's id
//!   is the key's provider id. Revoking deletes the account, which kills the key. OpenAI
//!   expires the key, never the account: the account goes when its version is revoked
//!   (after grace, or discarded), whether or not its key has expired by then.
//!   Listing the project's accounts (every page) is what the orphan sweep reads: an account
//!   a rotation created but never stored is found by its keyrotd name and deleted whole.
//! - **keys of one service account** (`service_account = "svc_acct_…"`):
//!   `POST …/service_accounts/{sa}/api_keys {name, scopes?, expires_in_seconds?}` →
//!   `{value, id, expires_at}`; `DELETE …/projects/{project}/api_keys/{key id}` revokes one;
//!   the project's key listing, narrowed to that account, finds orphans. A rotation is then
//!   two overlapping keys of one account, which keeps the account, its role and its
//!   permissions, instead of a new account each time.

use super::{create, delete, expires_in_seconds, issued_expiry, list_all, AdminKey};
use crate::config::ProviderConfig;
use crate::providers::classify::{string_at, take_secret_json};
use crate::providers::client::{encode_component, join_url, HttpClient};
use crate::providers::{
    base_url, IssueRequest, IssuedKey, Issuer, ProviderError, ProviderTelemetry, RemoteKey,
};
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

/// Which of the two shapes this provider section issues.
enum Mode {
    /// A service account per key; its id is the key's provider id.
    Accounts,
    /// Keys of one service account; the key id is the provider id.
    AccountKeys {
        service_account: String,
        scopes: Option<Vec<String>>,
    },
}

pub(crate) struct OpenAiIssuer {
    client: HttpClient,
    /// `{base}/organization/projects/{project}`.
    project_url: String,
    admin_key: AdminKey,
    mode: Mode,
}

impl OpenAiIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let project = config.project.as_ref().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind openai needs `project` to issue keys",
                config.name()
            ))
        })?;
        let mode = match &config.service_account {
            Some(account) => Mode::AccountKeys {
                service_account: account.get_ref().clone(),
                scopes: config.scopes.as_ref().map(|s| s.get_ref().clone()),
            },
            None => Mode::Accounts,
        };
        Ok(OpenAiIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            project_url: join_url(
                &base_url(config)?,
                &format!(
                    "organization/projects/{}",
                    encode_component(project.get_ref())
                ),
            ),
            admin_key: AdminKey::new(config)?,
            mode,
        })
    }

    fn accounts_url(&self) -> String {
        format!("{}/service_accounts", self.project_url)
    }
}

#[async_trait]
impl Issuer for OpenAiIssuer {
    async fn issue(&self, issue: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let expires_in = expires_in_seconds(issue);
        let (url, mut body) = match &self.mode {
            Mode::Accounts => (
                self.accounts_url(),
                serde_json::json!({ "name": issue.name }),
            ),
            Mode::AccountKeys {
                service_account,
                scopes,
            } => {
                let mut body = serde_json::json!({ "name": issue.name });
                if let Some(scopes) = scopes {
                    body["scopes"] = serde_json::json!(scopes);
                }
                (
                    format!(
                        "{}/{}/api_keys",
                        self.accounts_url(),
                        encode_component(service_account)
                    ),
                    body,
                )
            }
        };
        if let Some(seconds) = expires_in {
            body["expires_in_seconds"] = serde_json::json!(seconds);
        }
        let (request, admin_key) = self
            .admin_key
            .authorize(self.client.request(reqwest::Method::POST, &url))?;
        let mut response =
            create(&self.client, request.json(&body), &admin_key, expires_in).await?;
        let body = take_secret_json(&mut response, "issue")?;
        // The account answer nests its key under `api_key`; a key answer is the key itself.
        let (key, remote_id) = match self.mode {
            Mode::Accounts => (
                body.get("api_key").unwrap_or(&Value::Null),
                string_at(&body, "/id", "issue")?,
            ),
            Mode::AccountKeys { .. } => (&body, string_at(&body, "/id", "issue")?),
        };
        Ok(IssuedKey {
            secret: SecretString::from(string_at(key, "/value", "issue")?),
            remote_id,
            expires_at: issued_expiry(key.get("expires_at"), issue, expires_in),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        let named = |item: &Value| {
            item.get("name")
                .and_then(Value::as_str)
                .is_some_and(|name| name.starts_with(prefix))
        };
        match &self.mode {
            Mode::Accounts => {
                list_all(&self.client, &self.admin_key, &self.accounts_url(), named).await
            }
            Mode::AccountKeys {
                service_account, ..
            } => {
                // The project's keys of every owner: only this account's are ours to judge.
                // `any`: without it the listing may leave out keys by its membership rules,
                // and an orphan left out is never deleted.
                let url = format!("{}/api_keys?owner_project_access=any", self.project_url);
                list_all(&self.client, &self.admin_key, &url, |item| {
                    named(item)
                        && item
                            .pointer("/owner/service_account/id")
                            .and_then(Value::as_str)
                            == Some(service_account.as_str())
                })
                .await
            }
        }
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let url = match self.mode {
            Mode::Accounts => format!("{}/{}", self.accounts_url(), encode_component(remote_id)),
            Mode::AccountKeys { .. } => format!(
                "{}/api_keys/{}",
                self.project_url,
                encode_component(remote_id)
            ),
        };
        delete(&self.client, &self.admin_key, &url).await
    }
}
