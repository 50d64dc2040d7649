//! `[[provider]]` sections: an account at a vendor (kind, base URL, management key, limits).

use super::{HumanDuration, Issues, ProviderPositions, SecretRef};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// Which adapter speaks to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
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
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
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
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKind::Openrouter => Some("https://openrouter.ai/api/v1"),
            ProviderKind::Deepseek => Some("https://api.deepseek.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com/v1beta"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: Spanned<String>,
    pub kind: ProviderKind,
    /// Base URL of the API (defaults per kind; required for compatible, azure, relay, http).
    #[serde(default)]
    pub base_url: Option<Spanned<String>>,
    /// Management / provisioning / admin key used to issue and revoke keys.
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
}

/// `[provider.http]`: every request of the generic adapter, described in config.
///
/// Placeholders: `{key}` (the checked key; `check` header values only), `{management_key}`
/// (issue/list/revoke header values only), `{name}` (issue path and body), `{id}` (revoke
/// path and body), `{prefix}` (list path). Values are percent-encoded in paths and
/// JSON-escaped in bodies, so a body template reads `{"name": "{name}"}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAdapterConfig {
    pub check: HttpCheckConfig,
    #[serde(default)]
    pub issue: Option<HttpIssueConfig>,
    #[serde(default)]
    pub list: Option<HttpListConfig>,
    #[serde(default)]
    pub revoke: Option<HttpRevokeConfig>,
}

/// `[provider.http.check]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    #[serde(default = "default_get")]
    pub method: Spanned<String>,
    /// Appended to `base_url`; starts with `/`.
    pub path: Spanned<String>,
    /// Header name → value template; one of them must carry `{key}`.
    #[serde(default = "no_headers")]
    pub headers: Spanned<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default = "default_valid_status")]
    pub valid_status: Vec<u16>,
    #[serde(default = "default_invalid_status")]
    pub invalid_status: Vec<u16>,
    #[serde(default = "default_exhausted_status")]
    pub exhausted_status: Vec<u16>,
    #[serde(default = "default_rate_limited_status")]
    pub rate_limited_status: Vec<u16>,
    /// JSON pointer to a boolean: false means invalid even on a valid status.
    #[serde(default)]
    pub valid_pointer: Option<Spanned<String>>,
    /// JSON pointer to a remaining balance (number or numeric string).
    #[serde(default)]
    pub credit_pointer: Option<Spanned<String>>,
    #[serde(default = "default_credit_unit")]
    pub credit_unit: String,
    /// JSON pointer to an expiry (epoch seconds or RFC 3339 string).
    #[serde(default)]
    pub expires_at_pointer: Option<Spanned<String>>,
}

/// `[provider.http.issue]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpIssueConfig {
    #[serde(default = "default_post")]
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(default = "no_headers")]
    pub headers: Spanned<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default = "default_issue_status")]
    pub success_status: Vec<u16>,
    /// JSON pointer to the new key's plaintext.
    pub key_pointer: Spanned<String>,
    /// JSON pointer to the provider-side id; without it the key's name is its id.
    #[serde(default)]
    pub id_pointer: Option<Spanned<String>>,
    #[serde(default)]
    pub expires_at_pointer: Option<Spanned<String>>,
}

/// `[provider.http.list]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListConfig {
    #[serde(default = "default_get")]
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(default = "no_headers")]
    pub headers: Spanned<BTreeMap<String, String>>,
    /// JSON pointer to the array of keys ("" = the body is the array).
    #[serde(default = "root_pointer")]
    pub items_pointer: Spanned<String>,
    /// Pointers inside one item.
    pub id_pointer: Spanned<String>,
    pub name_pointer: Spanned<String>,
}

/// `[provider.http.revoke]`. A 404 is always success (already gone).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRevokeConfig {
    #[serde(default = "default_delete")]
    pub method: Spanned<String>,
    pub path: Spanned<String>,
    #[serde(default = "no_headers")]
    pub headers: Spanned<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    #[serde(default = "default_revoke_status")]
    pub success_status: Vec<u16>,
}

/// How the exec adapter hands a key to its command. Never argv: arguments are world-readable
/// in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyVia {
    /// Written to the command's standard input, then stdin is closed.
    #[default]
    Stdin,
    /// In the environment variable named by `key_env`.
    Env,
}

/// `[provider.exec]`: a command that prints JSON.
///
/// The operation is in `$KEYROTD_OPERATION` (`check`, `issue`, `list`, `revoke`), with
/// `$KEYROTD_NAME`, `$KEYROTD_PREFIX` or `$KEYROTD_REMOTE_ID` as they apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAdapterConfig {
    /// Program and arguments (no shell unless you write `["sh", "-c", ...]`).
    pub command: Spanned<Vec<String>>,
    /// Kill the command after this long (default: the provider's `timeout`).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub key_via: KeyVia,
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// The command also implements `issue`, `list` and `revoke`.
    #[serde(default)]
    pub issuer: bool,
}

fn no_headers() -> Spanned<BTreeMap<String, String>> {
    Spanned::new(0..0, BTreeMap::new())
}
fn root_pointer() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}
fn default_get() -> Spanned<String> {
    Spanned::new(0..0, "GET".into())
}
fn default_post() -> Spanned<String> {
    Spanned::new(0..0, "POST".into())
}
fn default_delete() -> Spanned<String> {
    Spanned::new(0..0, "DELETE".into())
}
fn default_valid_status() -> Vec<u16> {
    vec![200]
}
fn default_invalid_status() -> Vec<u16> {
    vec![401, 403]
}
fn default_exhausted_status() -> Vec<u16> {
    vec![402]
}
fn default_rate_limited_status() -> Vec<u16> {
    vec![429]
}
fn default_issue_status() -> Vec<u16> {
    vec![200, 201]
}
fn default_revoke_status() -> Vec<u16> {
    vec![200, 202, 204]
}
fn default_credit_unit() -> String {
    "usd".into()
}
fn default_key_env() -> String {
    super::DEFAULT_KEY_ENV_VAR.into()
}

fn default_requests_per_second() -> f64 {
    5.0
}

fn default_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

impl ProviderConfig {
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    pub fn base_url(&self) -> Option<&str> {
        self.base_url
            .as_ref()
            .map(|u| u.get_ref().as_str())
            .or(self.kind.default_base_url())
    }

    /// Per-request timeout.
    pub fn timeout(&self) -> Duration {
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
    pub fn management_url(&self) -> &str {
        self.management_url
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("https://management.azure.com")
    }

    /// Azure management plane `api-version` (default `2024-10-01`).
    pub fn management_api_version(&self) -> &str {
        self.management_api_version
            .as_ref()
            .map(|v| v.get_ref().as_str())
            .unwrap_or("2024-10-01")
    }

    /// Azure: `(subscription_id, resource_group, account_name)` when the management plane is
    /// configured.
    pub fn azure_account(&self) -> Option<(&str, &str, &str)> {
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
    pub fn anthropic_version(&self) -> &str {
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

/// A value that can sit in one URL path segment without escaping.
fn plain_segment(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Checks one request description: method, path, where placeholders may appear.
fn validate_request(
    issues: &mut Issues,
    table: &str,
    method: &Spanned<String>,
    path: &Spanned<String>,
    headers: &Spanned<BTreeMap<String, String>>,
    body: Option<&Spanned<String>>,
    secret_placeholder: &str,
) {
    if !METHODS.contains(&method.get_ref().as_str()) {
        issues.push(
            Some(method.span()),
            format!("[{table}] `method` must be one of {}", METHODS.join(", ")),
        );
    }
    if !path.get_ref().starts_with('/') {
        issues.push(
            Some(path.span()),
            format!("[{table}] `path` must start with /"),
        );
    }
    // Secrets travel in headers only: never in a URL (logged by every proxy) or a body.
    for placeholder in ["{key}", "{management_key}"] {
        if path.get_ref().contains(placeholder) {
            issues.push(
                Some(path.span()),
                format!(
                    "[{table}] `path` must not contain {placeholder}: secrets go in headers only"
                ),
            );
        }
        if let Some(body) = body {
            if body.get_ref().contains(placeholder) {
                issues.push(
                    Some(body.span()),
                    format!("[{table}] `body` must not contain {placeholder}: secrets go in headers only"),
                );
            }
        }
    }
    for (name, value) in headers.get_ref() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            issues.push(
                Some(headers.span()),
                format!("[{table}] header name {name:?} is not a valid HTTP header name"),
            );
        }
        let other = if secret_placeholder == "{key}" {
            "{management_key}"
        } else {
            "{key}"
        };
        if value.contains(other) {
            issues.push(
                Some(headers.span()),
                format!("[{table}] header {name:?} uses {other}, which this request does not have (use {secret_placeholder})"),
            );
        }
    }
}

fn validate_pointer(issues: &mut Issues, table: &str, field: &str, pointer: &Spanned<String>) {
    let p = pointer.get_ref();
    if !(p.is_empty() || p.starts_with('/')) {
        issues.push(
            Some(pointer.span()),
            format!("[{table}] `{field}` must be a JSON pointer: empty or starting with / (e.g. \"/data/key\")"),
        );
    }
}

impl HttpAdapterConfig {
    fn validate(&self, issues: &mut Issues) {
        let c = &self.check;
        let t = "provider.http.check";
        validate_request(
            issues,
            t,
            &c.method,
            &c.path,
            &c.headers,
            c.body.as_ref(),
            "{key}",
        );
        if !c.headers.get_ref().values().any(|v| v.contains("{key}")) {
            issues.push(
                Some(c.path.span()),
                "[provider.http.check] one header must carry the key, e.g. headers = { Authorization = \"Bearer {key}\" }".into(),
            );
        }
        if c.valid_status.is_empty() {
            issues.push(
                Some(c.path.span()),
                format!("[{t}] `valid_status` must not be empty"),
            );
        }
        for (field, pointer) in [
            ("valid_pointer", &c.valid_pointer),
            ("credit_pointer", &c.credit_pointer),
            ("expires_at_pointer", &c.expires_at_pointer),
        ] {
            if let Some(p) = pointer {
                validate_pointer(issues, t, field, p);
            }
        }
        if let Some(i) = &self.issue {
            let t = "provider.http.issue";
            validate_request(
                issues,
                t,
                &i.method,
                &i.path,
                &i.headers,
                i.body.as_ref(),
                "{management_key}",
            );
            validate_pointer(issues, t, "key_pointer", &i.key_pointer);
            for (field, pointer) in [
                ("id_pointer", &i.id_pointer),
                ("expires_at_pointer", &i.expires_at_pointer),
            ] {
                if let Some(p) = pointer {
                    validate_pointer(issues, t, field, p);
                }
            }
        }
        if let Some(l) = &self.list {
            let t = "provider.http.list";
            validate_request(
                issues,
                t,
                &l.method,
                &l.path,
                &l.headers,
                None,
                "{management_key}",
            );
            validate_pointer(issues, t, "items_pointer", &l.items_pointer);
            validate_pointer(issues, t, "id_pointer", &l.id_pointer);
            validate_pointer(issues, t, "name_pointer", &l.name_pointer);
        }
        if let Some(r) = &self.revoke {
            let t = "provider.http.revoke";
            validate_request(
                issues,
                t,
                &r.method,
                &r.path,
                &r.headers,
                r.body.as_ref(),
                "{management_key}",
            );
            if !r.path.get_ref().contains("{id}")
                && !r
                    .body
                    .as_ref()
                    .is_some_and(|b| b.get_ref().contains("{id}"))
            {
                issues.push(
                    Some(r.path.span()),
                    "[provider.http.revoke] `path` or `body` must contain {id}".into(),
                );
            }
        }
        if self.issue.is_some() != self.revoke.is_some() {
            issues.push(
                Some(c.path.span()),
                "[provider.http] `issue` and `revoke` go together: a key that cannot be revoked must not be issued automatically".into(),
            );
        }
    }
}

impl ExecAdapterConfig {
    fn validate(&self, issues: &mut Issues) {
        let command = self.command.get_ref();
        if command.is_empty() || command[0].trim().is_empty() {
            issues.push(
                Some(self.command.span()),
                "[provider.exec] `command` must name a program, e.g. [\"/usr/local/bin/check-key\"]".into(),
            );
        }
        if let Some(timeout) = self.timeout {
            if timeout.0.is_zero() {
                issues.push(
                    Some(self.command.span()),
                    "[provider.exec] `timeout` must be longer than 0s".into(),
                );
            }
        }
        let env_ok = !self.key_env.is_empty()
            && !self.key_env.starts_with(|c: char| c.is_ascii_digit())
            && self
                .key_env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !env_ok {
            issues.push(
                Some(self.command.span()),
                format!(
                    "[provider.exec] `key_env` {:?} is not an environment variable name",
                    self.key_env
                ),
            );
        }
    }
}
