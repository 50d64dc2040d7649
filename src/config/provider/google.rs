//! `[provider.google]`: the Google Cloud project whose API keys a `gemini` provider issues
//! and deletes through the API Keys v2 API, and the OAuth access token that may do so.
//!
//! keyrotd does not obtain the token: it is short-lived (about an hour) and Google's ways of
//! minting one (gcloud, a metadata server, a workload identity federation sidecar) are better
//! left to the tools built for them. The file the reference names is read again at every
//! call, so an external refresher can replace it at any time.

use super::super::{HumanDuration, Issues, SecretRef};
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// The API Keys API endpoint when `api_keys_url` is not set.
pub(crate) const DEFAULT_API_KEYS_URL: &str = "https://apikeys.googleapis.com";

/// How many provider `timeout`s a long-running operation may take, when
/// `operation_timeout` is not set: creating a key usually takes a few seconds.
const OPERATION_TIMEOUTS: u32 = 6;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoogleConfig {
    /// Project id or number holding the keys (`projects/{project}/locations/global/keys`).
    pub project: Spanned<String>,
    /// An OAuth 2.0 access token with `apikeys.keys.*` permissions (role API Keys Admin).
    pub token: SecretRef,
    /// The API Keys API base URL (default `https://apikeys.googleapis.com`); tests point it
    /// at a local server.
    #[serde(default)]
    pub api_keys_url: Option<Spanned<String>>,
    /// How long to wait for a create or delete operation to be `done` (default: six times
    /// the provider's `timeout`).
    #[serde(default)]
    pub operation_timeout: Option<HumanDuration>,
}

impl GoogleConfig {
    pub(crate) fn project(&self) -> &str {
        self.project.get_ref()
    }

    pub(crate) fn api_keys_url(&self) -> &str {
        self.api_keys_url
            .as_ref()
            .map_or(DEFAULT_API_KEYS_URL, |u| u.get_ref().as_str())
    }

    /// The bound on waiting for one long-running operation.
    pub(crate) fn operation_timeout(&self, request_timeout: Duration) -> Duration {
        self.operation_timeout
            .map_or(request_timeout * OPERATION_TIMEOUTS, |t| t.0)
    }

    /// `at(field)` is the position of a field whose type carries no span (`token`,
    /// `operation_timeout`), falling back to `project`'s.
    pub(super) fn validate(
        &self,
        issues: &mut Issues,
        at: impl Fn(&str) -> Option<std::ops::Range<usize>>,
    ) {
        let project = self.project.get_ref();
        // Project ids are 6-30 of a-z 0-9 -; project numbers are digits. Either goes into a
        // URL path segment unescaped.
        let project_ok = !project.is_empty()
            && project.len() <= 30
            && project
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !project_ok {
            issues.push(
                Some(self.project.span()),
                "[provider.google] `project` must be a project id (a-z 0-9 -) or number".into(),
            );
        }
        let fallback = || self.project.span();
        if let Err(err) = self.token.validate() {
            issues.push(
                Some(at("token").unwrap_or_else(fallback)),
                format!("[provider.google] `token`: {err}"),
            );
        }
        if let Some(url) = &self.api_keys_url {
            let text = url.get_ref();
            if !(text.starts_with("http://") || text.starts_with("https://")) {
                issues.push(
                    Some(url.span()),
                    "[provider.google] `api_keys_url` must start with http:// or https://".into(),
                );
            } else if let Err(error) = reqwest::Url::parse(text) {
                issues.push(
                    Some(url.span()),
                    format!("[provider.google] `api_keys_url` is not a valid URL: {error}"),
                );
            }
        }
        if self.operation_timeout.is_some_and(|t| t.0.is_zero()) {
            issues.push(
                Some(at("operation_timeout").unwrap_or_else(fallback)),
                "[provider.google] `operation_timeout` must be longer than 0s".into(),
            );
        }
    }
}
