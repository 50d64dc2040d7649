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
///
/// The provider-side expiry of the key being issued fills [`EXPIRY_PLACEHOLDERS`] in the
/// issue `body` only, each standing for a whole JSON value (see [`expiry_uses`]): a key
/// issued without an expiry is sent `null`, which JSON APIs read as "none"; a URL or a
/// longer string has no such spelling, so config refuses them there.
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

/// The one request that issues a key, and so the one that knows its expiry.
const ISSUE_TABLE: &str = "provider.http.issue";

/// The placeholders of the provider-side expiry of the key being issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryPlaceholder {
    /// `{expires_at}`: RFC 3339 in UTC, `"2026-12-01T00:00:00Z"`.
    At,
    /// `{expires_at_unix}`: Unix seconds.
    AtUnix,
    /// `{expires_in_seconds}`: seconds from the moment the key is asked for.
    InSeconds,
}

/// Every expiry placeholder.
pub(crate) const EXPIRY_PLACEHOLDERS: [ExpiryPlaceholder; 3] = [
    ExpiryPlaceholder::At,
    ExpiryPlaceholder::AtUnix,
    ExpiryPlaceholder::InSeconds,
];

impl ExpiryPlaceholder {
    pub(crate) fn text(self) -> &'static str {
        match self {
            ExpiryPlaceholder::At => "{expires_at}",
            ExpiryPlaceholder::AtUnix => "{expires_at_unix}",
            ExpiryPlaceholder::InSeconds => "{expires_in_seconds}",
        }
    }
}

/// How an expiry placeholder stands in a JSON body template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Outside any string, a JSON value of its own: `"ttl": {expires_in_seconds}`.
    Bare,
    /// A whole string of its own: `"expires_at": "{expires_at}"`.
    WholeString,
    /// Part of a longer string, where "no expiry" cannot be written: refused by config.
    InsideString,
}

/// One expiry placeholder in a body template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpiryUse {
    pub placeholder: ExpiryPlaceholder,
    pub standing: Standing,
    /// The bytes its value replaces: the placeholder, with its quotes for a whole string.
    pub range: std::ops::Range<usize>,
}

/// Every expiry placeholder of a JSON body template, in order. A lexical scan that follows
/// strings through their escapes: it needs no valid JSON (other placeholders are still in
/// the template), only to know whether each placeholder is inside a string.
pub(crate) fn expiry_uses(body: &str) -> Vec<ExpiryUse> {
    let bytes = body.as_bytes();
    let mut uses = Vec::new();
    // The opening quote of the string the scan is in.
    let mut string_from: Option<usize> = None;
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'\\' if string_from.is_some() => {
                at += 2;
                continue;
            }
            b'"' => {
                string_from = match string_from {
                    Some(_) => None,
                    None => Some(at),
                };
            }
            b'{' => {
                if let Some(placeholder) = EXPIRY_PLACEHOLDERS
                    .into_iter()
                    .find(|p| body[at..].starts_with(p.text()))
                {
                    let end = at + placeholder.text().len();
                    let (standing, range) = match string_from {
                        None => (Standing::Bare, at..end),
                        Some(quote) if quote + 1 == at && bytes.get(end) == Some(&b'"') => {
                            string_from = None;
                            (Standing::WholeString, quote..end + 1)
                        }
                        Some(_) => (Standing::InsideString, at..end),
                    };
                    at = range.end;
                    uses.push(ExpiryUse {
                        placeholder,
                        standing,
                        range,
                    });
                    continue;
                }
            }
            _ => {}
        }
        at += 1;
    }
    uses
}

/// Expiry placeholders only where a key's expiry is known and "none" can be written: as
/// whole JSON values in the issue body.
fn validate_expiry_placeholders(
    issues: &mut Issues,
    table: &str,
    path: &Spanned<String>,
    headers: &Spanned<BTreeMap<String, String>>,
    body: Option<&Spanned<String>>,
) {
    for placeholder in EXPIRY_PLACEHOLDERS.map(ExpiryPlaceholder::text) {
        if path.get_ref().contains(placeholder) {
            issues.push(
                Some(path.span()),
                format!("[{table}] `path` must not contain {placeholder}: a URL cannot say \"no expiry\"; put it in the `body` of [{ISSUE_TABLE}], where a key without an expiry is sent as null"),
            );
        }
        if let Some((name, _)) = headers
            .get_ref()
            .iter()
            .find(|(_, value)| value.contains(placeholder))
        {
            issues.push(
                Some(headers.span()),
                format!("[{table}] header {name:?} uses {placeholder}, which is filled only in the `body` of [{ISSUE_TABLE}]"),
            );
        }
    }
    let Some(body) = body else {
        return;
    };
    for found in expiry_uses(body.get_ref()) {
        let placeholder = found.placeholder.text();
        if table != ISSUE_TABLE {
            issues.push(
                Some(body.span()),
                format!("[{table}] `body` must not contain {placeholder}: only [{ISSUE_TABLE}] issues a key with an expiry"),
            );
        } else if found.standing == Standing::InsideString {
            issues.push(
                Some(body.span()),
                format!("[{table}] `body` has {placeholder} inside a longer string: it must stand for a whole JSON value, e.g. \"expires_at\": \"{{expires_at}}\" or \"ttl\": {{expires_in_seconds}}, so that a key without an expiry is sent as null"),
            );
        }
    }
}

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
    validate_expiry_placeholders(issues, table, path, headers, body);
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
        let table = ISSUE_TABLE;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn standings(body: &str) -> Vec<(&'static str, Standing, &str)> {
        expiry_uses(body)
            .into_iter()
            .map(|u| (u.placeholder.text(), u.standing, &body[u.range]))
            .collect()
    }

    #[test]
    fn expiry_placeholders_are_told_apart_by_where_they_stand() {
        let body = r#"{"name": "{name}", "at": "{expires_at}", "unix": {expires_at_unix}, "ttl": "{expires_in_seconds}", "note": "until {expires_at}", "bare": {expires_at}}"#;
        assert_eq!(
            standings(body),
            vec![
                ("{expires_at}", Standing::WholeString, "\"{expires_at}\""),
                ("{expires_at_unix}", Standing::Bare, "{expires_at_unix}"),
                (
                    "{expires_in_seconds}",
                    Standing::WholeString,
                    "\"{expires_in_seconds}\""
                ),
                ("{expires_at}", Standing::InsideString, "{expires_at}"),
                ("{expires_at}", Standing::Bare, "{expires_at}"),
            ]
        );
    }

    #[test]
    fn escaped_quotes_do_not_end_a_string() {
        let body = r#"{"a": "say \"{expires_at}\" here", "b": {expires_in_seconds}}"#;
        assert_eq!(
            standings(body),
            vec![
                ("{expires_at}", Standing::InsideString, "{expires_at}"),
                (
                    "{expires_in_seconds}",
                    Standing::Bare,
                    "{expires_in_seconds}"
                ),
            ]
        );
        assert!(expiry_uses(r#"{"name": "{name}", "x": "{expires}"}"#).is_empty());
    }
}
