//! The state readers such as the metrics endpoint render: every active credential with its
//! current key, and a generation number that tells a cache whether anything changed.

use super::{Counter, CredentialRecord, KeyVersion, StoreResult};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};

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

/// What the small side tables add to each credential's state (running totals, failing
/// revocations, credit balances, rotations waiting in attention), read by a backend in a
/// few fixed queries and handed out per credential as its row arrives. Shared so that
/// every backend reports the same state from the same rows.
#[derive(Default)]
pub(crate) struct SideTables {
    totals: HashMap<String, Totals>,
    credits: HashMap<String, Vec<(String, f64)>>,
    attention: HashSet<String>,
}

/// A credential's running totals as read for one snapshot.
#[derive(Default)]
struct Totals {
    /// (succeeded, failed) rotations.
    rotations: (u64, u64),
    revocations: Revocations,
}

impl SideTables {
    /// `counters`: (credential, counter, value); `failing`: (credential, keys, since);
    /// `credits`: (credential, unit, remaining); `attention`: credentials in attention.
    pub(crate) fn from_rows(
        counters: Vec<(String, String, i64)>,
        failing: Vec<(String, i64, i64)>,
        credits: Vec<(String, String, f64)>,
        attention: HashSet<String>,
    ) -> SideTables {
        let mut totals: HashMap<String, Totals> = HashMap::new();
        for (name, counter, value) in counters {
            let entry = totals.entry(name).or_default();
            let value = value.max(0) as u64;
            match Counter::parse(&counter) {
                Some(Counter::RotationSuccess) => entry.rotations.0 = value,
                Some(Counter::RotationFailure) => entry.rotations.1 = value,
                Some(Counter::RevocationSuccess) => entry.revocations.succeeded = value,
                Some(Counter::RevocationFailure) => entry.revocations.failed = value,
                Some(Counter::RevocationRetiredLocally) => {
                    entry.revocations.retired_locally = value
                }
                // Written by a newer keyrotd: not ours to show.
                None => {}
            }
        }
        for (name, count, since) in failing {
            let entry = totals.entry(name).or_default();
            entry.revocations.past_grace = count.max(0) as u64;
            entry.revocations.failing_since = Some(since);
        }
        let mut by_name: HashMap<String, Vec<(String, f64)>> = HashMap::new();
        for (name, unit, remaining) in credits {
            by_name.entry(name).or_default().push((unit, remaining));
        }
        SideTables {
            totals,
            credits: by_name,
            attention,
        }
    }

    /// The state of `credential`, taking its share of the side tables.
    pub(crate) fn state_of(
        &mut self,
        credential: CredentialRecord,
        current: Option<KeyVersion>,
    ) -> CredentialState {
        let totals = self.totals.remove(&credential.name).unwrap_or_default();
        CredentialState {
            rotations_succeeded: totals.rotations.0,
            rotations_failed: totals.rotations.1,
            revocations: totals.revocations,
            current,
            credits: self.credits.remove(&credential.name).unwrap_or_default(),
            needs_attention: self.attention.contains(&credential.name),
            credential,
        }
    }
}
