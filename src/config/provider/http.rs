//! `[provider.http]`: every request of the generic HTTP adapter, described in config, and
//! the rules that keep secrets in headers.

use super::super::Issues;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

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
    pub(super) fn validate(&self, issues: &mut Issues) {
        self.check.validate(issues);
        if let Some(issue) = &self.issue {
            issue.validate(issues);
        }
        if let Some(list) = &self.list {
            list.validate(issues);
        }
        if let Some(revoke) = &self.revoke {
            revoke.validate(issues);
        }
        if self.issue.is_some() != self.revoke.is_some() {
            issues.push(
                Some(self.check.path.span()),
                "[provider.http] `issue` and `revoke` go together: a key that cannot be revoked must not be issued automatically".into(),
            );
        }
    }
}

impl HttpCheckConfig {
    fn validate(&self, issues: &mut Issues) {
        let table = "provider.http.check";
        validate_request(
            issues,
            table,
            &self.method,
            &self.path,
            &self.headers,
            self.body.as_ref(),
            "{key}",
        );
        if !self.headers.get_ref().values().any(|v| v.contains("{key}")) {
            issues.push(
                Some(self.path.span()),
                "[provider.http.check] one header must carry the key, e.g. headers = { Authorization = \"Bearer {key}\" }".into(),
            );
        }
        if self.valid_status.is_empty() {
            issues.push(
                Some(self.path.span()),
                format!("[{table}] `valid_status` must not be empty"),
            );
        }
        for (field, pointer) in [
            ("valid_pointer", &self.valid_pointer),
            ("credit_pointer", &self.credit_pointer),
            ("expires_at_pointer", &self.expires_at_pointer),
        ] {
            if let Some(pointer) = pointer {
                validate_pointer(issues, table, field, pointer);
            }
        }
    }
}

impl HttpIssueConfig {
    fn validate(&self, issues: &mut Issues) {
        let table = "provider.http.issue";
        validate_request(
            issues,
            table,
            &self.method,
            &self.path,
            &self.headers,
            self.body.as_ref(),
            "{management_key}",
        );
        validate_pointer(issues, table, "key_pointer", &self.key_pointer);
        for (field, pointer) in [
            ("id_pointer", &self.id_pointer),
            ("expires_at_pointer", &self.expires_at_pointer),
        ] {
            if let Some(pointer) = pointer {
                validate_pointer(issues, table, field, pointer);
            }
        }
    }
}

impl HttpListConfig {
    fn validate(&self, issues: &mut Issues) {
        let table = "provider.http.list";
        validate_request(
            issues,
            table,
            &self.method,
            &self.path,
            &self.headers,
            None,
            "{management_key}",
        );
        validate_pointer(issues, table, "items_pointer", &self.items_pointer);
        validate_pointer(issues, table, "id_pointer", &self.id_pointer);
        validate_pointer(issues, table, "name_pointer", &self.name_pointer);
    }
}

impl HttpRevokeConfig {
    fn validate(&self, issues: &mut Issues) {
        validate_request(
            issues,
            "provider.http.revoke",
            &self.method,
            &self.path,
            &self.headers,
            self.body.as_ref(),
            "{management_key}",
        );
        let names_the_key = self.path.get_ref().contains("{id}")
            || self
                .body
                .as_ref()
                .is_some_and(|b| b.get_ref().contains("{id}"));
        if !names_the_key {
            issues.push(
                Some(self.path.span()),
                "[provider.http.revoke] `path` or `body` must contain {id}".into(),
            );
        }
    }
}
