//! Provider adapters: one module per vendor API, behind one trait.
//!
//! An adapter turns "is this key any good?" into one HTTP request (or one command) and
//! classifies the answer. It never fails: timeouts, garbage and vendor errors are all
//! classified outcomes, and nothing it reports carries key material.

use crate::model::{CheckStatus, UnixTime};
use async_trait::async_trait;
use secrecy::SecretString;
use std::time::Duration;

/// What a provider reports about a remaining balance or limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Credit {
    /// `usd`, `cny`, `credits`, ... (lower case).
    pub unit: String,
    pub remaining: f64,
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
