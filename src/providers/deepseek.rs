//! DeepSeek: `GET {base}/user/balance` with `Authorization: Bearer`.
//!
//! `balance_infos[]` holds one balance per currency with amounts as *strings* ("110.00");
//! each becomes a credit entry (unit = currency, lower case). `is_available: false` means the
//! balance cannot pay for calls: exhausted. 402 is exhausted too.

use super::classify::bearer_get_check;
use super::classify::{amount, error_report, unexpected_body};
use super::client::{join_url, parse_url, HttpClient, Response};
use super::{base_url, CheckReport, Credit, Provider, ProviderError, ProviderTelemetry};
use crate::config::ProviderConfig;
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;

pub(crate) struct DeepSeek {
    client: HttpClient,
    balance_url: reqwest::Url,
}

impl DeepSeek {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(DeepSeek {
            client: HttpClient::new(config.name(), config.timeout(), telemetry)?,
            balance_url: parse_url(config.name(), join_url(&base_url(config)?, "user/balance"))?,
        })
    }
}

pub(super) fn classify(response: &Response) -> CheckReport {
    if !(200..=299).contains(&response.status) {
        return error_report(response);
    }
    let Some(body) = response.json() else {
        return unexpected_body(response);
    };
    let (Some(available), Some(infos)) = (
        body.get("is_available").and_then(Value::as_bool),
        body.get("balance_infos").and_then(Value::as_array),
    ) else {
        return unexpected_body(response);
    };
    let mut credit = Vec::new();
    for info in infos {
        let currency = info.get("currency").and_then(Value::as_str);
        let total = info.get("total_balance").and_then(amount);
        match (currency, total) {
            (Some(currency), Some(remaining)) if !currency.is_empty() => credit.push(Credit {
                unit: currency.to_ascii_lowercase(),
                remaining,
            }),
            _ => return unexpected_body(response),
        }
    }
    let mut report = if available {
        CheckReport::new(CheckStatus::Valid, format!("HTTP {}", response.status))
    } else {
        CheckReport::new(
            CheckStatus::Exhausted,
            "balance not available (is_available: false)",
        )
    };
    report.credit = credit;
    report
}

#[async_trait]
impl Provider for DeepSeek {
    async fn check(&self, key: &SecretString) -> CheckReport {
        bearer_get_check(&self.client, &self.balance_url, key, classify).await
    }
}
