//! `[[provider]]` sections: an account at a vendor (kind, base URL, management key, limits).
//!
//! The two kinds described entirely in config have tables of their own: `[provider.http]`
//! (`http.rs`) and `[provider.exec]` (`exec.rs`); so does Google's key-issuing API for
//! `gemini`, `[provider.google]` (`google.rs`).

mod exec;
mod google;
mod http;

pub use exec::{ExecAdapterConfig, ExecKeyVia};
pub use google::GoogleConfig;
pub(crate) use http::{expiry_uses, ExpiryPlaceholder, Standing};
pub use http::{
    HttpAdapterConfig, HttpCheckConfig, HttpIssueConfig, HttpListConfig, HttpRevokeConfig,
};

use super::{HumanDuration, Issues, ProviderPositions, SecretRef};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    /// OpenAI admin API keys (`/organization/admin_api_keys`): the credential is keyrotd's own
    /// management key, rotated with itself and delivered to the file `management_key` reads.
    OpenaiAdmin,
    /// Any `GET {base}/models` Bearer API: Mistral, Groq, Together, DeepSeek chat, relays.
    OpenaiCompatible,
    Anthropic,
    Openrouter,
    /// DeepSeek's balance endpoint (credit per currency).
    Deepseek,
    Gemini,
    AzureOpenai,
    /// A HolySheep-style relay API (`/auth/verify`, `/auth/refresh`, `/keys/rotate`), as that
    /// vendor's integration guide describes it.
    Relay,
    /// Generic HTTP adapter configured entirely in `[provider.http]`.
    Http,
    /// A command that prints JSON.
    Exec,
    /// The built-in simulated provider of `keyrotd demo` and tests.
    Simulated,
}

impl ProviderKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::OpenaiAdmin => "openai_admin",
            ProviderKind::OpenaiCompatible => "openai_compatible",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Openrouter => "openrouter",
            ProviderKind::Deepseek => "deepseek",
            ProviderKind::Gemini => "gemini",
            ProviderKind::AzureOpenai => "azure_openai",
            ProviderKind::Relay => "relay",
            ProviderKind::Http => "http",
            ProviderKind::Exec => "exec",
            ProviderKind::Simulated => "simulated",
        }
    }

    /// The vendor's public endpoint, used when `base_url` is not set.
    pub(crate) fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai | ProviderKind::OpenaiAdmin => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Openrouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Deepseek => Some("https://api.deepseek.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            _ => None,
        }
    }
}

/// The relay issuer's `rotation_policy` when the config sets none.
pub(crate) const DEFAULT_RELAY_ROTATION_POLICY: &str = "30d";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: Spanned<String>,
    pub kind: ProviderKind,
    /// Base URL of the API (defaults per kind; required for compatible, azure, relay, http).
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    /// Management key (OpenRouter; formerly "provisioning key") or admin key (OpenAI,
    /// Anthropic), or the Entra token (Azure), used to issue and revoke keys.
    #[serde(default)]
    pub management_key: Option<SecretRef>,
    /// Upper bound on requests per second to this provider (checks and rotation together).
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Per-request timeout.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Azure OpenAI: the `api-version` query parameter of the data-plane check.
    #[serde(default)]
    pub api_version: Option<Spanned<String>>,
    /// Anthropic: the `anthropic-version` header.
    #[serde(default)]
    pub anthropic_version: Option<Spanned<String>>,
    /// OpenAI issuer: the project whose service accounts hold the issued keys (`proj_...`).
    #[serde(default)]
    pub project: Option<Spanned<String>>,
    /// OpenAI issuer: issue every key as a key of this one service account
    /// (`POST …/service_accounts/{id}/api_keys`), keeping the account and its permissions,
    /// instead of one new service account per key.
    #[serde(default)]
    pub service_account: Option<Spanned<String>>,
    /// OpenAI issuer with `service_account`: the scopes of each issued key (the vendor's
    /// default when absent).
    #[serde(default)]
    pub scopes: Option<Spanned<Vec<String>>>,
    /// OpenRouter issuer: the workspace keys are created in and listed from (`workspace_id`);
    /// unset = the account's default workspace.
    #[serde(default)]
    pub workspace_id: Option<Spanned<String>>,
    /// Relay issuer: the `rotation_policy` sent to `POST /keys/rotate` (default "30d").
    #[serde(default)]
    pub rotation_policy: Option<Spanned<String>>,
    /// Azure OpenAI management plane (ARM): the subscription holding the account. With
    /// `resource_group`, `account_name` and an Entra bearer token as `management_key`, keyrotd
    /// rotates the account's two key slots (key1/key2) itself.
    #[serde(default)]
    pub subscription_id: Option<Spanned<String>>,
    /// Azure OpenAI management plane: the resource group of the account.
    #[serde(default)]
    pub resource_group: Option<Spanned<String>>,
    /// Azure OpenAI management plane: the Cognitive Services account name.
    #[serde(default)]
    pub account_name: Option<Spanned<String>>,
    /// Azure OpenAI management plane base URL (default `https://management.azure.com`).
    #[serde(default)]
    pub management_url: Option<Spanned<String>>,
    /// Azure OpenAI management plane `api-version` (default `2024-10-01`).
    #[serde(default)]
    pub management_api_version: Option<Spanned<String>>,
    /// Generic HTTP adapter (`kind = "http"`).
    #[serde(default)]
    pub http: Option<HttpAdapterConfig>,
    /// Command adapter (`kind = "exec"`).
    #[serde(default)]
    pub exec: Option<ExecAdapterConfig>,
    /// Gemini keys issued through Google Cloud's API Keys v2 API (`kind = "gemini"`).
    #[serde(default)]
    pub google: Option<GoogleConfig>,
}

fn default_requests_per_second() -> f64 {
    5.0
}

fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

impl ProviderConfig {
    pub(crate) fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// How long every key this provider issues lives, when the config says so: the relay's
    /// `rotation_policy` (default "30d") is the lifetime it gives a rotated key. `None` when
    /// only the provider knows (it reports each key's expiry).
    pub(crate) fn issued_key_lifetime(&self) -> Option<Duration> {
        match self.kind {
            ProviderKind::Relay => {
                let policy = self
                    .rotation_policy
                    .as_ref()
                    .map_or(DEFAULT_RELAY_ROTATION_POLICY, |p| p.get_ref().as_str());
                super::parse_duration(policy).ok()
            }
            _ => None,
        }
    }

    pub fn base_url(&self) -> Option<&str> {
        self.base_url
            .as_ref()
            .map(|u| u.get_ref().as_str())
            .or(self.kind.default_base_url())
    }

    /// OpenRouter: the workspace keys are created in and listed from.
    pub(crate) fn workspace_id(&self) -> Option<&str> {
        self.workspace_id.as_ref().map(|v| v.get_ref().as_str())
    }

    /// Per-request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout.0
    }

    /// Azure data-plane `api-version` (default `2024-10-21`).
    pub fn api_version(&self) -> &str {
        self.api_version
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("2024-10-21")
    }

    /// Azure management plane base URL (default `https://management.azure.com`).
    pub(crate) fn management_url(&self) -> &str {
        self.management_url
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("https://management.azure.com")
    }

    /// Azure management plane `api-version` (default `2024-10-01`).
    pub(crate) fn management_api_version(&self) -> &str {
        self.management_api_version
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("2024-10-01")
    }

    /// Azure: `(subscription_id, resource_group, account_name)` when the management plane is
    /// configured.
    pub(crate) fn azure_account(&self) -> Option<(&str, &str, &str)> {
        match (
            &self.subscription_id,
            &self.resource_group,
            &self.account_name,
        ) {
            (Some(s), Some(g), Some(a)) => Some((s.get_ref(), g.get_ref(), a.get_ref())),
            _ => None,
        }
    }

    /// Anthropic `anthropic-version` header (default `2023-06-01`).
    pub(crate) fn anthropic_version(&self) -> &str {
        self.anthropic_version
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("2023-06-01")
    }

    /// `positions` is only called when an issue needs the position of a field without a span.
    pub(super) fn validate<'p>(
        &self,
        issues: &mut Issues,
        positions: impl Fn() -> Option<&'p ProviderPositions>,
    ) {
        let span = self.name.span();
        let at = |position: Option<&super::Position>| {
            position.and_then(super::span_of).unwrap_or(span.clone())
        };
        if self.timeout.0.is_zero() {
            issues.push(
                Some(span.clone()),
                "`timeout` must be longer than 0s".into(),
            );
        }
        self.validate_kind_fields(issues);
        if self.base_url().is_none()
            && !matches!(self.kind, ProviderKind::Exec | ProviderKind::Simulated)
        {
            issues.push(
                Some(span.clone()),
                format!(
                    "provider {:?} of kind {} needs `base_url`",
                    self.name(),
                    self.kind.as_str()
                ),
            );
        }
        if let Some(url) = &self.base_url {
            if !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://")) {
                issues.push(
                    Some(url.span()),
                    "`base_url` must start with http:// or https://".into(),
                );
            } else if let Err(error) = reqwest::Url::parse(url.get_ref()) {
                issues.push(
                    Some(url.span()),
                    format!("`base_url` is not a valid URL: {error}"),
                );
            }
        }
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            issues.push(
                Some(at(positions().map(|p| &p.requests_per_second))),
                "`requests_per_second` must be a positive number".into(),
            );
        }
        if let Some(key) = &self.management_key {
            if let Err(err) = key.validate() {
                issues.push(
                    Some(at(positions().map(|p| &p.management_key))),
                    format!("`management_key`: {err}"),
                );
            }
        }
        if let (Some(google), ProviderKind::Gemini) = (&self.google, self.kind) {
            google.validate(issues, |field| {
                let google = &positions()?.google;
                match field {
                    "token" => super::span_of(&google.token),
                    _ => super::span_of(&google.operation_timeout),
                }
            });
        }
    }

    /// Kind-specific fields: present where they mean something, absent elsewhere, well formed.
    fn validate_kind_fields(&self, issues: &mut Issues) {
        let span = self.name.span();
        let kind = self.kind;
        let misplaced =
            |issues: &mut Issues, span: std::ops::Range<usize>, field: &str, for_kind: &str| {
                issues.push(
                    Some(span),
                    format!(
                        "`{field}` only applies to kind {for_kind}, not {}",
                        kind.as_str()
                    ),
                )
            };
        if let Some(v) = &self.api_version {
            if kind != ProviderKind::AzureOpenai {
                misplaced(issues, v.span(), "api_version", "azure_openai");
            }
        }
        if let Some(v) = &self.anthropic_version {
            if kind != ProviderKind::Anthropic {
                misplaced(issues, v.span(), "anthropic_version", "anthropic");
            }
        }
        self.validate_azure_management(issues);
        if let Some(v) = &self.project {
            if kind != ProviderKind::Openai {
                misplaced(issues, v.span(), "project", "openai");
            } else if !plain_segment(v.get_ref()) {
                issues.push(
                    Some(v.span()),
                    "`project` must be a project id like \"proj_abc123\"".into(),
                );
            }
        }
        self.validate_openai_fields(issues);
        if let Some(v) = &self.workspace_id {
            if kind != ProviderKind::Openrouter {
                misplaced(issues, v.span(), "workspace_id", "openrouter");
            } else if v.get_ref().trim().is_empty() {
                issues.push(Some(v.span()), "`workspace_id` must not be empty".into());
            }
        }
        if let Some(v) = &self.rotation_policy {
            if kind != ProviderKind::Relay {
                misplaced(issues, v.span(), "rotation_policy", "relay");
            }
        }
        match (&self.http, kind) {
            (Some(http), ProviderKind::Http) => http.validate(issues),
            (Some(http), _) => misplaced(issues, http.check.path.span(), "[provider.http]", "http"),
            (None, ProviderKind::Http) => issues.push(
                Some(span.clone()),
                format!(
                    "provider {:?} of kind http needs a `[provider.http.check]` table",
                    self.name()
                ),
            ),
            (None, _) => {}
        }
        if let (Some(google), false) = (&self.google, kind == ProviderKind::Gemini) {
            misplaced(issues, google.project.span(), "[provider.google]", "gemini");
        }
        match (&self.exec, kind) {
            (Some(exec), ProviderKind::Exec) => exec.validate(issues),
            (Some(exec), _) => misplaced(issues, exec.command.span(), "[provider.exec]", "exec"),
            (None, ProviderKind::Exec) => issues.push(
                Some(span),
                format!(
                    "provider {:?} of kind exec needs a `[provider.exec]` table with `command`",
                    self.name()
                ),
            ),
            (None, _) => {}
        }
    }
}

impl ProviderConfig {
    /// The ARM fields: azure_openai only, all three of subscription/group/account together,
    /// with a management key (the Entra bearer token), plain path segments.
    fn validate_azure_management(&self, issues: &mut Issues) {
        let kind = self.kind;
        let fields = [
            ("subscription_id", &self.subscription_id),
            ("resource_group", &self.resource_group),
            ("account_name", &self.account_name),
            ("management_url", &self.management_url),
            ("management_api_version", &self.management_api_version),
        ];
        let mut present = 0;
        for (field, value) in fields {
            let Some(v) = value else { continue };
            if kind != ProviderKind::AzureOpenai {
                issues.push(
                    Some(v.span()),
                    format!(
                        "`{field}` only applies to kind azure_openai, not {}",
                        kind.as_str()
                    ),
                );
                continue;
            }
            if field == "management_url" {
                let url = v.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    issues.push(
                        Some(v.span()),
                        "`management_url` must start with http:// or https://".into(),
                    );
                }
                continue;
            }
            if field != "management_api_version" {
                present += 1;
            }
            if !plain_segment(v.get_ref()) {
                issues.push(
                    Some(v.span()),
                    format!("`{field}` must be a plain name (A-Z a-z 0-9 - _ .)"),
                );
            }
        }
        if kind != ProviderKind::AzureOpenai {
            return;
        }
        let span = self.name.span();
        if present > 0 && present < 3 {
            issues.push(
                Some(span),
                format!(
                    "provider {:?}: `subscription_id`, `resource_group` and `account_name` go together (the account whose key slots keyrotd rotates)",
                    self.name()
                ),
            );
        } else if present == 3 && self.management_key.is_none() {
            issues.push(
                Some(span),
                format!(
                    "provider {:?}: rotating Azure key slots needs `management_key` (an Entra bearer token for management.azure.com)",
                    self.name()
                ),
            );
        }
    }
}

impl ProviderConfig {
    /// `service_account` and `scopes`: openai only, scopes only with a service account;
    /// `openai_admin` issues with its own admin key, so it needs one.
    fn validate_openai_fields(&self, issues: &mut Issues) {
        let kind = self.kind;
        if let Some(v) = &self.service_account {
            if kind != ProviderKind::Openai {
                issues.push(
                    Some(v.span()),
                    format!(
                        "`service_account` only applies to kind openai, not {}",
                        kind.as_str()
                    ),
                );
            } else if !plain_segment(v.get_ref()) {
                issues.push(
                    Some(v.span()),
                    "`service_account` must be a service account id like \"svc_acct_abc123\""
                        .into(),
                );
            } else if self.project.is_none() {
                issues.push(
                    Some(v.span()),
                    "`service_account` needs `project` (the project that holds the account)".into(),
                );
            }
        }
        if let Some(v) = &self.scopes {
            if kind != ProviderKind::Openai || self.service_account.is_none() {
                issues.push(
                    Some(v.span()),
                    "`scopes` only applies to kind openai with `service_account` (the scopes of each key of that account)".into(),
                );
            } else if v.get_ref().iter().any(|scope| scope.trim().is_empty()) {
                issues.push(Some(v.span()), "`scopes` must not hold empty names".into());
            }
        }
        if kind == ProviderKind::OpenaiAdmin && self.management_key.is_none() {
            issues.push(
                Some(self.name.span()),
                format!(
                    "provider {:?} of kind openai_admin needs `management_key`: the admin key it rotates, read from that file at every call",
                    self.name()
                ),
            );
        }
    }

    /// A credential of an `openai_admin` provider is the provider's own admin key: each new
    /// key must land where `management_key` reads it, or keyrotd would go on using (and
    /// then revoke) the old one. So `management_key` must be a `file`, and the credential
    /// must deliver to exactly that file.
    pub(crate) fn validate_self_rotation(
        &self,
        credential: &super::CredentialConfig,
        issues: &mut Issues,
    ) {
        if self.kind != ProviderKind::OpenaiAdmin {
            return;
        }
        let span = credential.name.span();
        let Some(reference) = &self.management_key else {
            return;
        };
        let Some(path) = &reference.file else {
            issues.push(
                Some(span),
                format!(
                    "credential {:?} rotates the admin key of provider {:?}, so its `management_key` must be a `file` keyrotd can rewrite (an env variable cannot be updated, and systemd's credentials directory is read-only to the service)",
                    credential.name(),
                    self.name()
                ),
            );
            return;
        };
        let delivers_there = credential.deliver.iter().any(|target| {
            *target.kind.get_ref() == super::DeliveryKind::File
                && target
                    .path
                    .as_deref()
                    .is_some_and(|p| p.components().eq(path.components()))
        });
        if !delivers_there {
            issues.push(
                Some(span),
                format!(
                    "credential {:?} rotates the admin key of provider {:?}: it must deliver to {} (a `file` target with that `path`), the file `management_key` reads, or the next call would still use the old key",
                    credential.name(),
                    self.name(),
                    path.display()
                ),
            );
        }
    }
}

/// A value that can sit in one URL path segment without escaping.
fn plain_segment(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
