//! The generic HTTP adapter: every request and every rule comes from `[provider.http]`.
//!
//! It serves in-house key services, LiteLLM, and HolySheep-style relay APIs (whose preset
//! lives in `relay.rs`). Placeholders are filled per request: `{key}` / `{management_key}`
//! only ever into header values (config validation refuses them elsewhere), `{name}`, `{id}`
//! and `{prefix}` percent-encoded into paths and JSON-escaped into bodies. The issue body
//! also takes the provider-side expiry the engine computed for the new key
//! (`{expires_at}`, `{expires_at_unix}`, `{expires_in_seconds}`), each as a whole JSON value
//! and `null` for a key issued without one ([`fill_expiry`]); an issuer that sends it records
//! it as the key's expiry unless the answer says otherwise.
//!
//! A success status must come with a JSON body (an empty body only with 204): an HTML page
//! behind a 200 is a broken proxy, not a valid key.

use super::classify::{amount, check_flow, error_detail, expiry, unexpected_body, unsendable_key};
use super::classify::{iso_utc, take_secret_json};
use super::client::{encode_component, join_url, HttpClient, Response};
use super::{base_url, CheckReport, Credit, Provider, ProviderError, ProviderTelemetry};
use crate::config::{expiry_uses, ExpiryPlaceholder, HttpCheckConfig, ProviderConfig, Standing};
use crate::model::CheckStatus;
use async_trait::async_trait;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use zeroize::Zeroizing;

/// One configured request, placeholders still in it.
#[derive(Clone)]
pub(crate) struct RequestTemplate {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<String>,
}

impl RequestTemplate {
    pub(crate) fn from_config(
        method: &str,
        path: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: Option<&str>,
    ) -> Result<Self, ProviderError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| ProviderError::Config(format!("invalid HTTP method {method:?}")))?;
        let headers = headers
            .iter()
            .map(|(name, value)| {
                HeaderName::from_bytes(name.as_bytes())
                    .map(|name| (name, value.clone()))
                    .map_err(|_| ProviderError::Config(format!("invalid header name {name:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(RequestTemplate {
            method,
            path: path.to_string(),
            headers,
            body: body.map(str::to_string),
        })
    }

    /// Builds the request. `secret` fills `{secret_placeholder}` in header values only;
    /// `vars` fill `{name}`-style placeholders in path (encoded) and body (JSON-escaped).
    /// `None` when the secret cannot be carried in a header.
    pub(crate) fn build(
        &self,
        client: &HttpClient,
        base: &str,
        secret_placeholder: &str,
        secret: Option<&SecretString>,
        vars: &[(&str, &str)],
    ) -> Option<reqwest::RequestBuilder> {
        let mut path = self.path.clone();
        for (name, value) in vars {
            path = path.replace(&format!("{{{name}}}"), &encode_component(value));
        }
        let mut request = client.request(self.method.clone(), join_url(base, &path));
        for (name, template) in &self.headers {
            let value = if template.contains(secret_placeholder) {
                let raw = secret.map(|s| s.expose_secret()).unwrap_or_default();
                let filled = Zeroizing::new(template.replace(secret_placeholder, raw));
                let mut value = HeaderValue::from_str(&filled).ok()?;
                value.set_sensitive(true);
                value
            } else {
                HeaderValue::from_str(template).ok()?
            };
            request = request.header(name.clone(), value);
        }
        if let Some(body) = &self.body {
            let mut body = body.clone();
            for (name, value) in vars {
                let escaped = serde_json::to_string(value).unwrap_or_default();
                body = body.replace(&format!("{{{name}}}"), &escaped[1..escaped.len() - 1]);
            }
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        Some(request)
    }
}

/// Fills the expiry placeholders of an issue body template with `request`'s provider-side
/// expiry. Each stands for a whole JSON value: bare, `{expires_at}` becomes a string and the
/// others numbers; in quotes of its own, a string; `null` either way when the key gets no
/// expiry (a rotation only by hand, or `provider_expiry_margin = "off"`), which JSON APIs
/// read as "none" where an empty string would be a malformed date. `{expires_in_seconds}`
/// counts from `request.now`, at least a second.
pub(crate) fn fill_expiry(
    body: &str,
    request: &super::IssueRequest<'_>,
) -> Result<String, ProviderError> {
    let uses = expiry_uses(body);
    if uses.is_empty() {
        return Ok(body.to_string());
    }
    let expiry = match request.expires_at {
        Some(at) => Some((iso_utc(at)?, at, at.saturating_sub(request.now).max(1))),
        None => None,
    };
    let mut filled = String::with_capacity(body.len() + 32);
    let mut from = 0;
    for found in uses {
        filled.push_str(&body[from..found.range.start]);
        from = found.range.end;
        let Some((text, unix, lifetime)) = &expiry else {
            // Config refuses a placeholder inside a longer string, where null has no place.
            if found.standing != Standing::InsideString {
                filled.push_str("null");
            }
            continue;
        };
        let value = match found.placeholder {
            ExpiryPlaceholder::At => text.clone(),
            ExpiryPlaceholder::AtUnix => unix.to_string(),
            ExpiryPlaceholder::InSeconds => lifetime.to_string(),
        };
        let as_json_string = match found.standing {
            Standing::WholeString => true,
            Standing::Bare => found.placeholder == ExpiryPlaceholder::At,
            Standing::InsideString => false,
        };
        if as_json_string {
            filled.push_str(&Value::from(value).to_string());
        } else {
            filled.push_str(&value);
        }
    }
    filled.push_str(&body[from..]);
    Ok(filled)
}

/// How check responses are judged.
#[derive(Clone)]
pub(crate) struct CheckRules {
    pub request: RequestTemplate,
    pub valid_status: Vec<u16>,
    pub invalid_status: Vec<u16>,
    pub exhausted_status: Vec<u16>,
    pub rate_limited_status: Vec<u16>,
    pub valid_pointer: Option<String>,
    pub credit_pointer: Option<String>,
    pub credit_unit: String,
    pub expires_at_pointer: Option<String>,
}

impl CheckRules {
    fn from_config(check: &HttpCheckConfig) -> Result<Self, ProviderError> {
        Ok(CheckRules {
            request: RequestTemplate::from_config(
                check.method.get_ref(),
                check.path.get_ref(),
                check.headers.get_ref(),
                check.body.as_ref().map(|b| b.get_ref().as_str()),
            )?,
            valid_status: check.valid_status.clone(),
            invalid_status: check.invalid_status.clone(),
            exhausted_status: check.exhausted_status.clone(),
            rate_limited_status: check.rate_limited_status.clone(),
            valid_pointer: check.valid_pointer.as_ref().map(|p| p.get_ref().clone()),
            credit_pointer: check.credit_pointer.as_ref().map(|p| p.get_ref().clone()),
            credit_unit: check.credit_unit.to_ascii_lowercase(),
            expires_at_pointer: check
                .expires_at_pointer
                .as_ref()
                .map(|p| p.get_ref().clone()),
        })
    }

    pub(super) fn classify(&self, response: &Response) -> CheckReport {
        let status = response.status;
        if !self.valid_status.contains(&status) {
            // Even where 403 is configured as invalid, a WAF/proxy page or a region block is
            // not the service judging the key: the shared 403 rule decides.
            if status == 403 && self.invalid_status.contains(&status) {
                return super::classify::error_report(response);
            }
            let outcome = if self.invalid_status.contains(&status) {
                CheckStatus::Invalid
            } else if self.exhausted_status.contains(&status) {
                CheckStatus::Exhausted
            } else if self.rate_limited_status.contains(&status) {
                CheckStatus::RateLimited
            } else {
                CheckStatus::Unreachable
            };
            return CheckReport::new(outcome, error_detail(response));
        }
        let body = if response.body.is_empty() && status == 204 {
            Value::Null
        } else {
            match response.json() {
                Some(body) => body,
                None => return unexpected_body(response),
            }
        };
        let at = |pointer: &Option<String>| pointer.as_ref().map(|p| body.pointer(p));
        let mut report = CheckReport::new(CheckStatus::Valid, format!("HTTP {status}"));
        match at(&self.valid_pointer) {
            None => {}
            Some(Some(Value::Bool(true))) => {}
            Some(Some(Value::Bool(false))) => {
                report.status = CheckStatus::Invalid;
                report.detail = format!("HTTP {status} but the service reports the key not valid");
            }
            Some(_) => return unexpected_body(response),
        }
        match at(&self.credit_pointer) {
            None | Some(None) | Some(Some(Value::Null)) => {}
            Some(Some(value)) => match amount(value) {
                Some(remaining) => report.credit.push(Credit {
                    unit: self.credit_unit.clone(),
                    remaining,
                }),
                None => return unexpected_body(response),
            },
        }
        if let Some(value) = at(&self.expires_at_pointer) {
            match expiry(value) {
                Ok(expires_at) => report.expires_at = expires_at,
                Err(()) => return unexpected_body(response),
            }
        }
        report
    }
}

/// A checker built from rules (the generic kind, or a preset such as the relay).
pub(crate) struct Http {
    client: HttpClient,
    base: String,
    rules: CheckRules,
}

impl Http {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let http = config.http.as_ref().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind http needs a `[provider.http.check]` table",
                config.name()
            ))
        })?;
        Self::with_rules(config, telemetry, CheckRules::from_config(&http.check)?)
    }

    pub(crate) fn with_rules(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
        rules: CheckRules,
    ) -> Result<Self, ProviderError> {
        Ok(Http {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            rules,
        })
    }
}

#[async_trait]
impl Provider for Http {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let Some(request) =
            self.rules
                .request
                .build(&self.client, &self.base, "{key}", Some(key), &[])
        else {
            return unsendable_key();
        };
        check_flow(&self.client, request, key, |r| self.rules.classify(r)).await
    }
}

/// Issue / list / revoke requests from `[provider.http.issue|list|revoke]`, with
/// `{management_key}` in headers.
pub(crate) struct HttpIssuer {
    client: HttpClient,
    base: String,
    management_key: Option<SecretString>,
    issue: (
        RequestTemplate,
        Vec<u16>,
        String,
        Option<String>,
        Option<String>,
    ),
    list: Option<(RequestTemplate, String, String, String)>,
    revoke: (RequestTemplate, Vec<u16>),
    /// The issue body carries the key's provider-side expiry.
    sends_expiry: bool,
}

const MANAGEMENT: &str = "{management_key}";

impl HttpIssuer {
    /// `None` when the section has no `issue` request.
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Option<Self>, ProviderError> {
        let Some(http) = config.http.as_ref() else {
            return Ok(None);
        };
        let (Some(issue), Some(revoke)) = (&http.issue, &http.revoke) else {
            return Ok(None);
        };
        let template = |method: &str, path: &str, headers, body: Option<&toml::Spanned<String>>| {
            RequestTemplate::from_config(method, path, headers, body.map(|b| b.get_ref().as_str()))
        };
        let issue_t = template(
            issue.method.get_ref(),
            issue.path.get_ref(),
            issue.headers.get_ref(),
            issue.body.as_ref(),
        )?;
        let revoke_t = template(
            revoke.method.get_ref(),
            revoke.path.get_ref(),
            revoke.headers.get_ref(),
            revoke.body.as_ref(),
        )?;
        let list = match &http.list {
            Some(list) => Some((
                template(
                    list.method.get_ref(),
                    list.path.get_ref(),
                    list.headers.get_ref(),
                    None,
                )?,
                list.items_pointer.get_ref().clone(),
                list.id_pointer.get_ref().clone(),
                list.name_pointer.get_ref().clone(),
            )),
            None => None,
        };
        let sends_expiry = issue_t
            .body
            .as_deref()
            .is_some_and(|body| !expiry_uses(body).is_empty());
        let uses_management_key = [&issue_t, &revoke_t]
            .into_iter()
            .chain(list.as_ref().map(|l| &l.0))
            .any(|t| t.headers.iter().any(|(_, v)| v.contains(MANAGEMENT)));
        let management_key = if uses_management_key {
            Some(super::required_management_key(config)?)
        } else {
            super::management_key(config)?
        };
        Ok(Some(HttpIssuer {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            base: base_url(config)?,
            management_key,
            issue: (
                issue_t,
                issue.success_status.clone(),
                issue.key_pointer.get_ref().clone(),
                issue.id_pointer.as_ref().map(|p| p.get_ref().clone()),
                issue
                    .expires_at_pointer
                    .as_ref()
                    .map(|p| p.get_ref().clone()),
            ),
            list,
            revoke: (revoke_t, revoke.success_status.clone()),
            sends_expiry,
        }))
    }

    fn build(
        &self,
        template: &RequestTemplate,
        vars: &[(&str, &str)],
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        template
            .build(
                &self.client,
                &self.base,
                MANAGEMENT,
                self.management_key.as_ref(),
                vars,
            )
            .ok_or_else(|| ProviderError::Config("a configured header value cannot be sent".into()))
    }

    /// A configured status list narrows "success": anything else is rejected.
    fn check_status(&self, response: &Response, ok: &[u16]) -> Result<(), ProviderError> {
        if ok.contains(&response.status) {
            Ok(())
        } else {
            Err(super::classify::rejected(
                response,
                self.management_key.as_ref(),
            ))
        }
    }
}

#[async_trait]
impl super::Issuer for HttpIssuer {
    async fn issue(
        &self,
        issue: &super::IssueRequest<'_>,
    ) -> Result<super::IssuedKey, ProviderError> {
        let name = issue.name;
        let (template, ok, key_pointer, id_pointer, expires_pointer) = &self.issue;
        let request = match &template.body {
            Some(body) if self.sends_expiry => self.build(
                &RequestTemplate {
                    body: Some(fill_expiry(body, issue)?),
                    ..template.clone()
                },
                &[("name", name)],
            )?,
            _ => self.build(template, &[("name", name)])?,
        };
        let mut response = super::classify::call(
            &self.client,
            "issue",
            request,
            self.management_key.as_ref(),
            ok,
        )
        .await?;
        self.check_status(&response, ok)?;
        let body = take_secret_json(&mut response, "issue")?;
        let secret = SecretString::from(super::classify::string_at(&body, key_pointer, "issue")?);
        let remote_id = match id_pointer {
            Some(pointer) => super::classify::string_at(&body, pointer, "issue")?,
            None => name.to_string(),
        };
        let answered = match expires_pointer {
            Some(pointer) => expiry(body.pointer(pointer)).unwrap_or(None),
            None => None,
        };
        // The service was told the expiry: it is the key's unless the answer says otherwise.
        let expires_at = answered.or(issue.expires_at.filter(|_| self.sends_expiry));
        Ok(super::IssuedKey {
            secret,
            remote_id,
            expires_at,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<super::RemoteKey>, ProviderError> {
        let Some((template, items_pointer, id_pointer, name_pointer)) = &self.list else {
            return Err(ProviderError::Unsupported {
                kind: "http",
                operation: "listing keys (no [provider.http.list])",
            });
        };
        let request = self.build(template, &[("prefix", prefix)])?;
        let response = super::classify::call(
            &self.client,
            "list",
            request,
            self.management_key.as_ref(),
            &[],
        )
        .await?;
        let body = super::classify::json_body(&response, "list")?;
        let items = body
            .pointer(items_pointer)
            .and_then(Value::as_array)
            .ok_or_else(|| {
                ProviderError::Malformed(format!("list: no array at `{items_pointer}`"))
            })?;
        let mut found = Vec::new();
        for item in items {
            let name = item
                .pointer(name_pointer)
                .and_then(Value::as_str)
                .unwrap_or_default();
            if name.starts_with(prefix) {
                found.push(super::RemoteKey {
                    remote_id: super::classify::string_at(item, id_pointer, "list")?,
                    name: name.to_string(),
                });
            }
        }
        Ok(found)
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        let (template, ok) = &self.revoke;
        let request = self.build(template, &[("id", remote_id)])?;
        let response = super::classify::call(
            &self.client,
            "revoke",
            request,
            self.management_key.as_ref(),
            &[404],
        )
        .await?;
        if response.status == 404 {
            return Ok(());
        }
        self.check_status(&response, ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::IssueRequest;

    /// 2026-12-01T00:00:00Z, asked for thirty days before.
    const AT: i64 = 1_796_083_200;
    const NOW: i64 = AT - 30 * 86_400;

    fn with_expiry(at: Option<i64>) -> IssueRequest<'static> {
        IssueRequest {
            expires_at: at,
            now: NOW,
            ..IssueRequest::named("keyrotd/i/c/r")
        }
    }

    fn filled(body: &str, at: Option<i64>) -> Value {
        let text = fill_expiry(body, &with_expiry(at)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    const BODY: &str = r#"{"at": "{expires_at}", "bare_at": {expires_at}, "unix": {expires_at_unix}, "unix_text": "{expires_at_unix}", "ttl": {expires_in_seconds}}"#;

    #[test]
    fn an_expiry_fills_each_placeholder_as_a_json_value() {
        assert_eq!(
            filled(BODY, Some(AT)),
            serde_json::json!({
                "at": "2026-12-01T00:00:00Z",
                "bare_at": "2026-12-01T00:00:00Z",
                "unix": AT,
                "unix_text": AT.to_string(),
                "ttl": 30 * 86_400,
            })
        );
    }

    #[test]
    fn no_expiry_is_null_never_an_empty_string() {
        assert_eq!(
            filled(BODY, None),
            serde_json::json!({
                "at": null, "bare_at": null, "unix": null, "unix_text": null, "ttl": null,
            })
        );
    }

    #[test]
    fn other_placeholders_and_text_are_left_as_they_are() {
        let body = r#"{"name": "{name}", "note": "{expires}", "ttl": {expires_in_seconds}}"#;
        assert_eq!(
            fill_expiry(body, &with_expiry(Some(AT))).unwrap(),
            r#"{"name": "{name}", "note": "{expires}", "ttl": 2592000}"#
        );
        let plain = r#"{"name": "{name}"}"#;
        assert_eq!(fill_expiry(plain, &with_expiry(None)).unwrap(), plain);
    }

    #[test]
    fn a_lifetime_is_never_zero_or_negative() {
        let request = IssueRequest {
            expires_at: Some(NOW - 5),
            now: NOW,
            ..IssueRequest::named("n")
        };
        assert_eq!(fill_expiry("{expires_in_seconds}", &request).unwrap(), "1");
    }
}
