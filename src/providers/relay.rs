//! The seed article's relay (HolySheep-style OpenAI-compatible relay at `…/v1`):
//! `GET /auth/verify` with Bearer (401 when expired) for checks — a preset of the generic
//! HTTP adapter — and `POST /keys/rotate` / `GET /keys/{name}/metadata` for issuing.
//!
//! These endpoints are the article's words, not a confirmed public API.

use super::http::{CheckRules, Http, RequestTemplate};
use super::{ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use reqwest::header::AUTHORIZATION;
use reqwest::Method;

/// The check preset: `GET {base}/auth/verify`, Bearer; 200 valid (an `expires_at` in the
/// body, epoch seconds, is reported), 401/403 invalid, 402 exhausted, 429 rate limited.
pub(crate) fn check_rules() -> CheckRules {
    CheckRules {
        request: RequestTemplate {
            method: Method::GET,
            path: "/auth/verify".into(),
            headers: vec![(AUTHORIZATION, "Bearer {key}".into())],
            body: None,
        },
        valid_status: vec![200],
        invalid_status: vec![401, 403],
        exhausted_status: vec![402],
        rate_limited_status: vec![429],
        valid_pointer: None,
        credit_pointer: None,
        credit_unit: "usd".into(),
        expires_at_pointer: Some("/expires_at".into()),
    }
}

pub(crate) fn checker(
    config: &ProviderConfig,
    telemetry: &ProviderTelemetry,
) -> Result<Http, ProviderError> {
    Http::with_rules(config, telemetry, check_rules())
}
