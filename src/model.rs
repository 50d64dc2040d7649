//! The shared vocabulary: credentials, key versions and their stages, check outcomes,
//! and the fingerprint that is the only way a key is ever named in output.
//!
//! Everything here is plain data; no I/O. Other modules speak in these words so the store,
//! the providers, the metrics and the CLI agree on what a "stage" or a "status" is.

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Unix time in whole seconds. The store, metrics and CLI all use this unit.
pub(crate) type UnixTime = i64;

/// Where a key version is in its life. One `Current` per credential at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Issued or imported, not yet verified, delivered and promoted.
    Pending,
    /// The key consumers use.
    Current,
    /// The key that was current before; still valid during the grace period.
    Previous,
    /// Revoked at the provider (or retired); its secret material is gone.
    Revoked,
    /// A pending version that never became current.
    Failed,
}

impl Stage {
    pub(crate) const ALL: [Stage; 5] = [
        Stage::Pending,
        Stage::Current,
        Stage::Previous,
        Stage::Revoked,
        Stage::Failed,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Current => "current",
            Stage::Previous => "previous",
            Stage::Revoked => "revoked",
            Stage::Failed => "failed",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Stage::ALL
            .into_iter()
            .find(|stage| stage.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_string()))
    }
}

/// The result of probing a key at its provider. Only `Invalid` marks a key invalid;
/// the transient ones (`RateLimited`, `Unreachable`) keep the last conclusive state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckStatus {
    Valid,
    Invalid,
    /// Out of credit or quota: the key authenticates but cannot be used.
    Exhausted,
    RateLimited,
    /// Timeouts, DNS, connection errors, 5xx, garbage responses.
    Unreachable,
}

impl CheckStatus {
    pub(crate) const ALL: [CheckStatus; 5] = [
        CheckStatus::Valid,
        CheckStatus::Invalid,
        CheckStatus::Exhausted,
        CheckStatus::RateLimited,
        CheckStatus::Unreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Valid => "valid",
            CheckStatus::Invalid => "invalid",
            CheckStatus::Exhausted => "exhausted",
            CheckStatus::RateLimited => "rate_limited",
            CheckStatus::Unreachable => "unreachable",
        }
    }

    /// Whether this outcome says something about the key itself (as opposed to the path to it).
    pub(crate) fn is_conclusive(self) -> bool {
        matches!(
            self,
            CheckStatus::Valid | CheckStatus::Invalid | CheckStatus::Exhausted
        )
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckStatus {
    type Err = UnknownVariant;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CheckStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownVariant(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownVariant(pub String);

/// A provider's spend in the current period (OpenRouter's `usage_daily/weekly/monthly`)
/// travels and is stored with the balances, one entry per check like them, under the unit
/// `<unit>/<period>` ("usd/daily"): a currency never contains `/`. The metrics export it as
/// `keyrotd_key_usage{unit,period}`, apart from the balances.
pub fn usage_unit(unit: &str, period: &str) -> String {
    format!("{unit}/{period}")
}

/// `(unit, period)` of a usage entry made by [`usage_unit`]; `None` for a balance.
pub fn split_usage_unit(unit: &str) -> Option<(&str, &str)> {
    unit.split_once('/')
}

/// Short SHA-256 prefix of a key: the only identifier of a key in logs, metrics and CLI output.
/// 12 hex digits (48 bits) tell keys apart without helping anyone guess one.
pub fn fingerprint(secret: &SecretString) -> String {
    let digest = Sha256::digest(secret.expose_secret().as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_short_and_does_not_contain_the_key() {
        let key = SecretString::from("sk-test-canary-0123456789");
        let fp = fingerprint(&key);
        assert_eq!(
            fp,
            fingerprint(&SecretString::from("sk-test-canary-0123456789"))
        );
        assert_ne!(
            fp,
            fingerprint(&SecretString::from("sk-test-canary-0123456780"))
        );
        assert_eq!(fp.len(), "sha256:".len() + 12);
        assert!(!fp.contains("canary"));
    }

    #[test]
    fn stage_and_status_round_trip_through_text() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>().unwrap(), stage);
        }
        for status in CheckStatus::ALL {
            assert_eq!(status.as_str().parse::<CheckStatus>().unwrap(), status);
        }
        assert!("bogus".parse::<Stage>().is_err());
    }
}
