//! Check results: what a provider last said about a credential's current key. The checks
//! layer decides when results are written and gathers them into batches; a backend writes
//! each batch it is given in one transaction.

use super::{StoreError, StoreResult};
use crate::model::{CheckStatus, UnixTime};
use async_trait::async_trait;
use std::collections::HashMap;

/// The outcome of a check, as recorded against a credential's current key.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub status: CheckStatus,
    pub detail: String,
    /// When the check's probe went out: the earliest the provider can have judged the key.
    pub at: UnixTime,
    /// Balances the provider reported; replaces the stored set when non-empty.
    pub credits: Vec<(String, f64)>,
    /// Expiry the provider reported for the key; replaces the stored one.
    pub expires_at: Option<UnixTime>,
}

/// A check result for [`CheckStore::record_checks`].
#[derive(Debug, Clone)]
pub struct CheckToRecord {
    pub credential: String,
    pub version_id: i64,
    pub check: CheckRecord,
}

#[async_trait]
pub trait CheckStore: Send + Sync {
    /// Records a batch of checks in one transaction: each updates its credential's status
    /// and its key version's last check; a change of status is also an event. One result
    /// per record, in order; a record that cannot be written (its credential was removed
    /// meanwhile, say) fails alone and the others are written.
    async fn record_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>>;

    /// Records one check of `version_id`: a batch of one. Callers with many results gather
    /// them into a batch of their own (see `checks`); the store does not batch for them.
    async fn record_check(
        &self,
        credential: &str,
        version_id: i64,
        check: &CheckRecord,
    ) -> StoreResult<()> {
        let one = CheckToRecord {
            credential: credential.to_string(),
            version_id,
            check: check.clone(),
        };
        self.record_checks(vec![one])
            .await
            .pop()
            .unwrap_or_else(|| {
                Err(StoreError::ChecksNotWritten {
                    reason: "the store answered no result".into(),
                })
            })
    }

    /// When each active credential was last checked (credentials never checked are absent).
    /// Start-up reads this to resume every check schedule.
    async fn last_checks(&self) -> StoreResult<HashMap<String, UnixTime>>;

    /// The balances a credential's provider last reported, by unit (currency or `credits`),
    /// in unit order; empty when it never reported one.
    async fn credits(&self, credential: &str) -> StoreResult<Vec<(String, f64)>>;
}
