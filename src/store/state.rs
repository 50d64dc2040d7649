//! The state readers such as the metrics endpoint render: every active credential with its
//! current key, and a generation number that tells a cache whether anything changed.

use super::{CredentialRecord, KeyVersion, StoreResult};
use async_trait::async_trait;

/// Everything the metrics endpoint needs, read in one transaction.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub generation: i64,
    pub credentials: Vec<CredentialState>,
}

#[derive(Debug, Clone)]
pub struct CredentialState {
    pub credential: CredentialRecord,
    pub current: Option<KeyVersion>,
    /// Finished rotations by result, for `keyrotd_rotations_total{result}`.
    pub rotations_succeeded: u64,
    pub rotations_failed: u64,
    /// Revocation attempts by result, for `keyrotd_revocations_total{result}`.
    pub revocations: Revocations,
    /// (unit, remaining) as last reported by the provider.
    pub credits: Vec<(String, f64)>,
    /// Its rotation in flight waits in `attention`: a target did not take the current key
    /// back after a failed rotation (both keys live, nothing revoked).
    pub needs_attention: bool,
}

/// What became of a credential's revocations: running totals, and the keys still live at
/// the provider after a failed attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Revoked or deactivated at the provider.
    pub succeeded: u64,
    /// Attempts the provider refused or did not answer (each retry counts).
    pub failed: u64,
    /// Dropped locally by a provider without a revocation API: still live there.
    pub retired_locally: u64,
    /// Previous or discarded keys past their grace period whose revocation failed and that
    /// are still live (sealed, not revoked).
    pub past_grace: u64,
    /// When the oldest of those first failed to be revoked.
    pub failing_since: Option<crate::model::UnixTime>,
}

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Hands every active credential with its current key to `visit`, in name order, as it
    /// is read (one read transaction); answers the store's generation at that read.
    /// For readers that keep less than the whole record, such as the metrics renderer.
    async fn visit_states(
        &self,
        visit: &mut (dyn FnMut(CredentialState) + Send),
    ) -> StoreResult<i64>;

    /// Active credentials and their current keys, with the store's generation.
    async fn snapshot(&self) -> StoreResult<Snapshot> {
        let mut credentials = Vec::new();
        let generation = self
            .visit_states(&mut |state| credentials.push(state))
            .await?;
        Ok(Snapshot {
            generation,
            credentials,
        })
    }

    /// A number that changes whenever anything in the store changes.
    async fn generation(&self) -> StoreResult<i64>;
}
