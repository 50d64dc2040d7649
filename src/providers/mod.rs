//! Provider adapters: one module per vendor API, behind one trait.
//!
//! An adapter turns "is this key any good?" into one HTTP request (or one command) and
//! classifies the answer. It never fails: timeouts, garbage and vendor errors are all
//! classified outcomes, and nothing it reports carries key material.
//!
//! ## Layout
//!
//! - [`client`]: the shared HTTP client (timeout, body cap, Retry-After, telemetry).
//! - [`sanitize()`]: scrubbing of every piece of outside text before it is shown.
//! - `classify`: the common check flow and vendor error parsing.
//! - one module per kind: `openai` (also OpenAI-compatible APIs, and `openai_admin`: OpenAI
//!   admin keys, keyrotd's own management key rotated as a credential), `anthropic`,
//!   `openrouter`, `deepseek`, `gemini` (with Google's API Keys API issuer), `azure`, `relay` (a HolySheep-style relay API, a
//!   preset of `http`), `http` (generic, all from config), `exec` (a command), `simulated`
//!   (demo and tests).
//!
//! Keys travel only in the vendor's documented header, never in a URL, a body or argv.
//! No type here that holds a key implements `Debug`.

mod anthropic;
mod azure;
mod classify;
pub(crate) mod client;
mod deepseek;
mod exec;
mod gemini;
mod http;
mod openai;
mod openrouter;
mod relay;
pub mod sanitize;
mod simulated;

pub use client::{parse_retry_after, ProviderTelemetry, MAX_RETRY_AFTER};
pub use sanitize::sanitize;

use crate::config::{format_duration, ProviderConfig, ProviderKind};
use crate::model::{CheckStatus, UnixTime};
use async_trait::async_trait;
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

/// What a provider reports about a remaining balance or limit, or (see [`Credit::usage`])
/// its spend in the current period.
#[derive(Debug, Clone, PartialEq)]
pub struct Credit {
    /// `usd`, `cny`, `credits`, ... (lower case); `usd/daily` for a usage entry.
    pub unit: String,
    pub remaining: f64,
}

impl Credit {
    /// The spend in the current `period` (`daily`, `weekly`, `monthly`), in `unit`
    /// ([`crate::model::usage_unit`]).
    pub fn usage(unit: &str, period: &str, used: f64) -> Credit {
        Credit {
            unit: crate::model::usage_unit(unit, period),
            remaining: used,
        }
    }
}

/// The classified result of one validity check.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub status: CheckStatus,
    /// Short, sanitised reason ("HTTP 401 invalid_api_key", "timeout after 10s").
    pub detail: String,
    pub http_status: Option<u16>,
    /// The provider asked us to wait this long (429 Retry-After).
    pub retry_after: Option<Duration>,
    pub credit: Vec<Credit>,
    /// Expiry the provider reports for this key (OpenRouter `expires_at`).
    pub expires_at: Option<UnixTime>,
}

impl CheckReport {
    pub fn new(status: CheckStatus, detail: impl Into<String>) -> Self {
        CheckReport {
            status,
            detail: detail.into(),
            http_status: None,
            retry_after: None,
            credit: Vec::new(),
            expires_at: None,
        }
    }
}

/// A vendor account that can tell whether a key works.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Probes `key` once. Never panics, never returns the key in any field.
    async fn check(&self, key: &SecretString) -> CheckReport;
}

/// Why a provider operation other than a check failed. Messages are sanitised: status,
/// vendor error code and a cut vendor message at most, never a body, a URL or a key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The provider section cannot be turned into an adapter (missing field, bad secret ref).
    #[error("provider configuration: {0}")]
    Config(String),
    /// Connection failure, 5xx, an oversized body: try again later.
    #[error("provider unreachable: {0}")]
    Unreachable(String),
    #[error("provider did not answer within {}", format_duration(*.0))]
    Timeout(Duration),
    /// The provider answered with an error status.
    #[error("provider rejected the request: {detail}")]
    Rejected {
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// A success status with a body that is not the documented shape.
    #[error("malformed provider response: {0}")]
    Malformed(String),
    /// The key to act on could not be identified for certain at the provider (no key or
    /// several keys match it); nothing was changed.
    #[error("key not identified at the provider: {0}")]
    Unidentified(String),
    /// The vendor's organisation or project policy on key lifetimes refused the key: the
    /// expiry keyrotd asked for is missing or longer than the policy allows. Nothing was
    /// created; the message names the policy and what to change in the config.
    #[error("refused by the provider's key-expiry policy: {0}")]
    ExpiryPolicy(String),
    /// The provider kind has no API for this operation.
    #[error("{kind} providers do not support {operation}")]
    Unsupported {
        kind: &'static str,
        operation: &'static str,
    },
}

impl ProviderError {
    /// Worth retrying later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            ProviderError::Unreachable(_) | ProviderError::Timeout(_) => true,
            ProviderError::Rejected { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

impl From<client::TransportError> for ProviderError {
    fn from(err: client::TransportError) -> Self {
        match err {
            client::TransportError::Timeout(after) => ProviderError::Timeout(after),
            other => ProviderError::Unreachable(other.to_string()),
        }
    }
}

/// A key freshly created at the provider. No `Debug`: it holds the secret.
pub struct IssuedKey {
    pub secret: SecretString,
    /// The provider's id for the key (OpenRouter hash, OpenAI service-account id, ...).
    pub remote_id: String,
    pub expires_at: Option<UnixTime>,
}

/// A key as the provider lists it (no secret material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    pub remote_id: String,
    pub name: String,
}

/// The key consumers use right now, as the engine knows it: what a dual-slot provider
/// (Azure) needs to pick the slot *not* in use. No `Debug`: it holds the secret.
#[derive(Clone, Copy)]
pub struct CurrentKey<'a> {
    /// The provider's id for it (`key1`/`key2` for Azure), when keyrotd issued it.
    pub remote_id: Option<&'a str>,
    /// Its value, for providers that must look it up (an operator-imported key has no id).
    pub secret: Option<&'a SecretString>,
}

/// What the engine asks an issuer for: a key named `name` (`keyrotd/<installation>/<credential>/<rotation id>`)
/// that replaces `replaces` (the credential's current key, if any) and, where the vendor can
/// set one, dies on its own at `expires_at` (see [`crate::rotation::Policy::provider_expiry`]).
#[derive(Clone, Copy)]
pub struct IssueRequest<'a> {
    pub name: &'a str,
    /// The key consumers use now. Azure needs it to pick the other slot; OpenRouter copies its
    /// spending limit onto the new key, so a rotation never removes a cap.
    pub replaces: Option<CurrentKey<'a>>,
    /// The provider-side expiry to set, or `None` for a key that lives until revoked.
    pub expires_at: Option<UnixTime>,
    /// The engine's clock when `expires_at` was computed: vendors that take a lifetime
    /// rather than a date (OpenAI's `expires_in_seconds`) count from it.
    pub now: UnixTime,
}

impl<'a> IssueRequest<'a> {
    /// A key named `name`, replacing nothing, with no provider-side expiry.
    pub fn named(name: &'a str) -> Self {
        IssueRequest {
            name,
            replaces: None,
            expires_at: None,
            now: 0,
        }
    }
}

/// A provider account that can create, list and revoke keys (with a management key).
#[async_trait]
pub trait Issuer: Send + Sync {
    /// Creates the key `request` describes. An adapter whose vendor supports provider-side
    /// expiry sets `request.expires_at` on it and reports the expiry the vendor answered in
    /// [`IssuedKey::expires_at`]; one whose vendor does not ignores it.
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError>;
    /// Keys at the provider whose name starts with `prefix` (orphan recovery).
    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError>;
    /// Revokes/disables/deletes; already-gone (404) is success.
    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError>;
    /// Whether [`Issuer::revoke`] can ever succeed. A provider that issues keys but has no
    /// revocation API (the relay kind) answers `false`: its replaced keys are retired
    /// locally instead of being retried forever.
    fn can_revoke(&self) -> bool {
        true
    }
}

/// A provider account that can deactivate a key it did not issue — one an operator imported,
/// known only by its value (Anthropic Admin API: `status: inactive`; Azure: regenerate the
/// slot that still holds the value).
#[async_trait]
pub trait Revoker: Send + Sync {
    /// Deactivates `key` at the provider. `remote_id` is the provider's id when known.
    /// Already deactivated is success; a key that cannot be identified for certain is an
    /// error (nothing is touched).
    async fn deactivate(
        &self,
        key: &SecretString,
        remote_id: Option<&str>,
    ) -> Result<(), ProviderError>;
}

/// The base URL of a provider, or a configuration error naming what is missing.
pub fn base_url(config: &ProviderConfig) -> Result<String, ProviderError> {
    config.base_url().map(str::to_string).ok_or_else(|| {
        ProviderError::Config(format!(
            "provider {:?} of kind {} needs `base_url`",
            config.name(),
            config.kind.as_str()
        ))
    })
}

/// Reads the management key of a provider section, if it has one.
pub fn management_key(config: &ProviderConfig) -> Result<Option<SecretString>, ProviderError> {
    config
        .management_key
        .as_ref()
        .map(|reference| {
            reference.resolve().map_err(|err| {
                ProviderError::Config(format!(
                    "provider {:?}: management key: {err}",
                    config.name()
                ))
            })
        })
        .transpose()
}

/// The management key, required for this kind's issuer.
pub(crate) fn required_management_key(
    config: &ProviderConfig,
) -> Result<SecretString, ProviderError> {
    management_key(config)?.ok_or_else(|| {
        ProviderError::Config(format!(
            "provider {:?} of kind {} needs `management_key` to issue and revoke keys",
            config.name(),
            config.kind.as_str()
        ))
    })
}

/// Pure entry points into the parsers of provider answers, for the property tests and the
/// fuzz targets (`fuzz/`). Not part of the daemon's API.
#[doc(hidden)]
pub mod parsers {
    use super::client::Response;
    use super::{CheckReport, ProviderKind};
    use crate::model::CheckStatus;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    /// Classifies a check answer as the adapter of `kind` does, with its detail sanitised as
    /// the check flow does. `http` uses rules with every pointer set (`/valid`, `/credit`,
    /// `/expires_at`); `exec` reads `body` as the command's stdout.
    pub fn classify_check(
        kind: ProviderKind,
        status: u16,
        retry_after: Option<&str>,
        body: &[u8],
    ) -> CheckReport {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(RETRY_AFTER, value);
        }
        let response = Response {
            status,
            headers,
            body: body.to_vec(),
        };
        let mut report = match kind {
            ProviderKind::Openai => super::openai::classify(&response, false),
            ProviderKind::OpenaiCompatible => super::openai::classify(&response, true),
            ProviderKind::OpenaiAdmin | ProviderKind::Anthropic | ProviderKind::AzureOpenai => {
                super::classify::data_list_report(&response)
            }
            ProviderKind::Openrouter => super::openrouter::classify(&response),
            ProviderKind::Deepseek => super::deepseek::classify(&response),
            ProviderKind::Gemini => super::gemini::classify(&response),
            ProviderKind::Simulated => super::simulated::classify(&response),
            ProviderKind::Relay => super::relay::check_rules().classify(&response),
            ProviderKind::Http => {
                let mut rules = super::relay::check_rules();
                rules.valid_pointer = Some("/valid".into());
                rules.credit_pointer = Some("/credit".into());
                rules.classify(&response)
            }
            ProviderKind::Exec => super::exec::parse_check(body).unwrap_or_else(|| {
                CheckReport::new(
                    CheckStatus::Unreachable,
                    "command printed no valid check result",
                )
            }),
        };
        if report.retry_after.is_none() {
            report.retry_after = response.retry_after();
        }
        report.detail = super::sanitize(&report.detail, None);
        report
    }

    /// The detail of an error answer: status, vendor codes, a cut and masked vendor message.
    pub fn error_detail(status: u16, body: &[u8]) -> String {
        super::classify::error_detail(&Response {
            status,
            headers: HeaderMap::new(),
            body: body.to_vec(),
        })
    }
}

/// Builds the checking adapter for a provider section.
pub fn build(
    config: &ProviderConfig,
    telemetry: &ProviderTelemetry,
) -> Result<Arc<dyn Provider>, ProviderError> {
    Ok(match config.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            Arc::new(openai::OpenAi::new(config, telemetry)?)
        }
        ProviderKind::OpenaiAdmin => {
            Arc::new(openai::admin::AdminKeyCheck::new(config, telemetry)?)
        }
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(config, telemetry)?),
        ProviderKind::Openrouter => Arc::new(openrouter::OpenRouter::new(config, telemetry)?),
        ProviderKind::Deepseek => Arc::new(deepseek::DeepSeek::new(config, telemetry)?),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(config, telemetry)?),
        ProviderKind::AzureOpenai => Arc::new(azure::Azure::new(config, telemetry)?),
        ProviderKind::Relay => Arc::new(relay::checker(config, telemetry)?),
        ProviderKind::Http => Arc::new(http::Http::new(config, telemetry)?),
        ProviderKind::Exec => Arc::new(exec::Exec::new(config, telemetry)?),
        ProviderKind::Simulated => Arc::new(simulated::Simulated::new(config, telemetry)?),
    })
}

/// Builds the issuing adapter, or `None` where the vendor has no key-issuing API
/// (Anthropic, DeepSeek, OpenAI-compatible APIs) or the section does not configure
/// one (`http` without `[provider.http.issue]`, `exec` without `issuer`, `azure_openai`
/// without `subscription_id`/`resource_group`/`account_name`, `gemini` without
/// `[provider.google]`).
pub fn build_issuer(
    config: &ProviderConfig,
    telemetry: &ProviderTelemetry,
) -> Result<Option<Arc<dyn Issuer>>, ProviderError> {
    Ok(match config.kind {
        ProviderKind::Openrouter => Some(Arc::new(openrouter::OpenRouterIssuer::new(
            config, telemetry,
        )?)),
        ProviderKind::Openai => Some(Arc::new(openai::OpenAiIssuer::new(config, telemetry)?)),
        ProviderKind::OpenaiAdmin => {
            Some(Arc::new(openai::admin::AdminKeys::new(config, telemetry)?))
        }
        ProviderKind::Relay => Some(Arc::new(relay::RelayIssuer::new(config, telemetry)?)),
        ProviderKind::Http => match http::HttpIssuer::new(config, telemetry)? {
            Some(issuer) => Some(Arc::new(issuer)),
            None => None,
        },
        ProviderKind::Exec => match exec::ExecIssuer::new(config, telemetry)? {
            Some(issuer) => Some(Arc::new(issuer)),
            None => None,
        },
        ProviderKind::Simulated => Some(Arc::new(simulated::SimulatedIssuer::new(
            config, telemetry,
        )?)),
        ProviderKind::AzureOpenai => azure::AzureIssuer::new(config, telemetry)?
            .map(|issuer| Arc::new(issuer) as Arc<dyn Issuer>),
        ProviderKind::Gemini => gemini::ApiKeysIssuer::new(config, telemetry)?
            .map(|issuer| Arc::new(issuer) as Arc<dyn Issuer>),
        ProviderKind::OpenaiCompatible | ProviderKind::Anthropic | ProviderKind::Deepseek => None,
    })
}

/// Every adapter of one provider section, built once and shared by its credentials'
/// checks and rotations: each adapter holds an HTTP client (and its connection pool), so the
/// daemon builds one set per provider, not one for its checks and another for its rotations.
#[derive(Clone)]
pub struct ProviderAdapters {
    /// One allocation per provider, shared by its credentials.
    pub name: Arc<str>,
    pub checker: Arc<dyn Provider>,
    pub issuer: Option<Arc<dyn Issuer>>,
    pub revoker: Option<Arc<dyn Revoker>>,
}

impl ProviderAdapters {
    /// Only the checking adapter (`keyrotd check` needs no more).
    pub(crate) fn checker_only(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(ProviderAdapters {
            name: Arc::from(config.name()),
            checker: build(config, telemetry)?,
            issuer: None,
            revoker: None,
        })
    }

    /// Every adapter the section configures.
    pub(crate) fn all(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        // A kind that issues keys only with a management key is, without one, managed like a
        // provider with no issuing API: a check-only OpenRouter/OpenAI section is valid.
        let issues_with_management_key = matches!(
            config.kind,
            ProviderKind::Openrouter
                | ProviderKind::Openai
                | ProviderKind::OpenaiAdmin
                | ProviderKind::Relay
                | ProviderKind::Simulated
        );
        let issuer = if issues_with_management_key && config.management_key.is_none() {
            None
        } else {
            build_issuer(config, telemetry)?
        };
        Ok(ProviderAdapters {
            issuer,
            revoker: build_revoker(config, telemetry)?,
            ..Self::checker_only(config, telemetry)?
        })
    }
}

/// Every provider section's adapters, by provider name (see [`ProviderAdapters::all`]).
pub fn build_all(
    config: &crate::config::Config,
    telemetry: &ProviderTelemetry,
) -> Result<std::collections::HashMap<String, ProviderAdapters>, ProviderError> {
    by_provider(config, telemetry, ProviderAdapters::all)
}

/// Every provider section's checking adapter only, by provider name (`keyrotd check`).
pub(crate) fn build_checkers(
    config: &crate::config::Config,
    telemetry: &ProviderTelemetry,
) -> Result<std::collections::HashMap<String, ProviderAdapters>, ProviderError> {
    by_provider(config, telemetry, ProviderAdapters::checker_only)
}

fn by_provider(
    config: &crate::config::Config,
    telemetry: &ProviderTelemetry,
    build: fn(&ProviderConfig, &ProviderTelemetry) -> Result<ProviderAdapters, ProviderError>,
) -> Result<std::collections::HashMap<String, ProviderAdapters>, ProviderError> {
    config
        .providers
        .iter()
        .map(|provider| Ok((provider.name().to_string(), build(provider, telemetry)?)))
        .collect()
}

/// Whether keys replaced on this provider section can be revoked at the provider, judged
/// from the config alone (what [`ProviderAdapters::all`] would build): where not, replaced
/// keys are retired locally and stay live at the provider, which `check-config` warns about.
pub fn revokes_keys(config: &ProviderConfig) -> bool {
    match config.kind {
        ProviderKind::Openrouter
        | ProviderKind::Openai
        | ProviderKind::OpenaiAdmin
        | ProviderKind::Simulated => config.management_key.is_some(),
        // Deactivation by value through the Admin API needs the admin key.
        ProviderKind::Anthropic => config.management_key.is_some(),
        ProviderKind::AzureOpenai => {
            config.azure_account().is_some() && config.management_key.is_some()
        }
        ProviderKind::Http => config
            .http
            .as_ref()
            .is_some_and(|http| http.issue.is_some() && http.revoke.is_some()),
        ProviderKind::Exec => config.exec.as_ref().is_some_and(|e| e.issuer),
        ProviderKind::Gemini => config.google.is_some(),
        ProviderKind::Relay | ProviderKind::OpenaiCompatible | ProviderKind::Deepseek => false,
    }
}

/// Builds the deactivating adapter for keys known only by value: Anthropic with an admin key
/// (`sk-ant-admin01-…`) as `management_key`, Azure OpenAI with its management plane
/// configured, OpenAI admin keys (`openai_admin`). `None` elsewhere.
pub fn build_revoker(
    config: &ProviderConfig,
    telemetry: &ProviderTelemetry,
) -> Result<Option<Arc<dyn Revoker>>, ProviderError> {
    Ok(match config.kind {
        ProviderKind::Anthropic => anthropic::AnthropicRevoker::new(config, telemetry)?
            .map(|revoker| Arc::new(revoker) as Arc<dyn Revoker>),
        ProviderKind::AzureOpenai => azure::AzureIssuer::new(config, telemetry)?
            .map(|issuer| Arc::new(issuer) as Arc<dyn Revoker>),
        // The operator's imported admin key has no id: found by its redacted value.
        ProviderKind::OpenaiAdmin if config.management_key.is_some() => {
            Some(Arc::new(openai::admin::AdminKeys::new(config, telemetry)?))
        }
        _ => None,
    })
}
