//! `[[provider]]` sections: an account at a vendor (kind, base URL, management key, limits).

use super::{HumanDuration, Issues, ProviderPositions, SecretRef};
use serde::Deserialize;
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
    /// The seed article's relay (`/auth/verify`, `/keys/rotate`, ...).
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

    pub(super) fn validate(&self, issues: &mut Issues, positions: Option<&ProviderPositions>) {
        let span = self.name.span();
        let at = |position: Option<&super::Position>| {
            position.and_then(super::span_of).unwrap_or(span.clone())
        };
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
            }
        }
        if !(self.requests_per_second > 0.0 && self.requests_per_second.is_finite()) {
            issues.push(
                Some(at(positions.map(|p| &p.requests_per_second))),
                "`requests_per_second` must be a positive number".into(),
            );
        }
        if let Some(key) = &self.management_key {
            if let Err(err) = key.validate() {
                issues.push(
                    Some(at(positions.map(|p| &p.management_key))),
                    format!("`management_key`: {err}"),
                );
            }
        }
    }
}
