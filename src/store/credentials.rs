//! Credentials: what the config says exists, and the state the daemon keeps about each.
//! A concern of its own because the config is synced into it at start-up and reload, and
//! everything else in the store hangs off a credential.

use super::StoreResult;
use crate::model::{CheckStatus, UnixTime};
use async_trait::async_trait;

/// What the config says a credential is; synced into the store at start-up and reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialSpec {
    pub name: String,
    pub provider: String,
    pub provider_kind: String,
}

/// A credential's row: its identity and the state the daemon keeps about it.
#[derive(Debug, Clone, PartialEq)]
pub struct CredentialRecord {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub provider_kind: String,
    pub created_at: UnixTime,
    pub removed_at: Option<UnixTime>,
    pub next_rotation_at: Option<UnixTime>,
    pub last_rotated_at: Option<UnixTime>,
    pub consecutive_failures: i64,
    pub check_status: Option<CheckStatus>,
    /// `Some(true)` valid, `Some(false)` invalid, `None` until the first conclusive check.
    pub valid: Option<bool>,
    pub last_check_at: Option<UnixTime>,
    pub check_detail: Option<String>,
}

#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// Brings the credentials table in line with the config: adds new credentials, updates
    /// providers, marks removed ones (their history stays).
    async fn sync_credentials(&self, specs: &[CredentialSpec], now: UnixTime) -> StoreResult<()>;

    /// A credential by name, removed or not.
    async fn credential(&self, name: &str) -> StoreResult<Option<CredentialRecord>>;
}
