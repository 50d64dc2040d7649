//! The audit trail: an append-only record of everything that happened to a credential and
//! its keys. Never holds key material: keys are named by fingerprint.

use super::{RotationStep, StoreResult};
use crate::model::UnixTime;
use async_trait::async_trait;

/// What an audit event records. Stored as its [`EventKind::as_str`] text, which existing
/// databases, the `key history` output and alerting read: the texts never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The config named a new credential.
    CredentialAdded,
    /// The config changed a credential's provider, or named a removed one again.
    CredentialUpdated,
    /// The config no longer names the credential; its history stays.
    CredentialRemoved,
    /// An operator stored a key.
    Imported,
    /// A rotation was recorded, before anything was asked of the provider.
    RotationPlanned,
    /// The provider issued a key; it is stored as pending.
    Issued,
    /// A rotation took an operator-imported pending key.
    Adopted,
    /// The new key answered a check as valid.
    Verified,
    /// A key reached every delivery target.
    Delivered,
    /// The new key became current.
    Promoted,
    /// A rotation was abandoned; the current key stayed.
    RotationFailed,
    /// A key was revoked and its secret dropped.
    Revoked,
    /// An operator restored the previous key as current.
    RolledBack,
    /// Every stored secret was re-sealed under a new master key.
    MasterKeyRotated,
    /// A check changed the credential's status.
    CheckStatusChanged,
    /// A key issued by an interrupted rotation, never stored, was deleted at the provider.
    OrphanDeleted,
    /// A key at the provider named like this credential's that the orphan sweep cannot
    /// prove its own (another installation's, or issued before a restore): left alone.
    OrphanUnplaced,
    /// Revoking a key at the provider failed; it stays live and sealed and is retried.
    RevocationFailed,
    /// A key was dropped locally (secret gone, stage revoked) by a provider without a
    /// revocation API: it is still live at the provider until someone deactivates it there.
    RetiredLocally,
    /// A rotation whose owner's lease expired got a new owner (and a higher epoch).
    RotationTakenOver,
    /// A failed rotation could not put the current key back on every target: it waits in
    /// [`RotationStep::Attention`], both keys live, nothing revoked.
    NeedsAttention,
}

impl EventKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [EventKind; 21] = [
        EventKind::CredentialAdded,
        EventKind::CredentialUpdated,
        EventKind::CredentialRemoved,
        EventKind::Imported,
        EventKind::RotationPlanned,
        EventKind::Issued,
        EventKind::Adopted,
        EventKind::Verified,
        EventKind::Delivered,
        EventKind::Promoted,
        EventKind::RotationFailed,
        EventKind::Revoked,
        EventKind::RolledBack,
        EventKind::MasterKeyRotated,
        EventKind::CheckStatusChanged,
        EventKind::OrphanDeleted,
        EventKind::OrphanUnplaced,
        EventKind::RevocationFailed,
        EventKind::RetiredLocally,
        EventKind::RotationTakenOver,
        EventKind::NeedsAttention,
    ];

    /// The kind as the audit trail stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::CredentialAdded => "credential_added",
            EventKind::CredentialUpdated => "credential_updated",
            EventKind::CredentialRemoved => "credential_removed",
            EventKind::Imported => "imported",
            EventKind::RotationPlanned => "rotation_planned",
            EventKind::Issued => "issued",
            EventKind::Adopted => "adopted",
            EventKind::Verified => "verified",
            EventKind::Delivered => "delivered",
            EventKind::Promoted => "promoted",
            EventKind::RotationFailed => "rotation_failed",
            EventKind::Revoked => "revoked",
            EventKind::RolledBack => "rolled_back",
            EventKind::MasterKeyRotated => "master_key_rotated",
            EventKind::CheckStatusChanged => "check_status_changed",
            EventKind::OrphanDeleted => "orphan_deleted",
            EventKind::OrphanUnplaced => "orphan_unplaced",
            EventKind::RevocationFailed => "revocation_failed",
            EventKind::RetiredLocally => "retired_locally",
            EventKind::RotationTakenOver => "rotation_taken_over",
            EventKind::NeedsAttention => "needs_attention",
        }
    }

    /// The running total ([`Counter`]) an event of this kind adds one to, in the same
    /// transaction: the totals survive the events' retention.
    pub(crate) fn counter(self) -> Option<Counter> {
        match self {
            EventKind::Promoted => Some(Counter::RotationSuccess),
            EventKind::RotationFailed => Some(Counter::RotationFailure),
            EventKind::Revoked => Some(Counter::RevocationSuccess),
            EventKind::RevocationFailed => Some(Counter::RevocationFailure),
            EventKind::RetiredLocally => Some(Counter::RevocationRetiredLocally),
            _ => None,
        }
    }

    /// The kind a stored text names, if this build knows it.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The event that records a rotation reaching `step`.
    pub(crate) fn reached(step: RotationStep) -> EventKind {
        match step {
            RotationStep::Planned => EventKind::RotationPlanned,
            RotationStep::Issued => EventKind::Issued,
            RotationStep::Verified => EventKind::Verified,
            RotationStep::Delivered => EventKind::Delivered,
            RotationStep::Attention => EventKind::NeedsAttention,
            RotationStep::Done => EventKind::Promoted,
            RotationStep::Failed => EventKind::RotationFailed,
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A per-credential running total, kept apart from the events it counts so that pruning
/// the audit trail never lowers a Prometheus counter. Stored as its [`Counter::as_str`] text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    RotationSuccess,
    RotationFailure,
    RevocationSuccess,
    RevocationFailure,
    RevocationRetiredLocally,
}

impl Counter {
    /// Every counter, in the order of the enum.
    pub const ALL: [Counter; 5] = [
        Counter::RotationSuccess,
        Counter::RotationFailure,
        Counter::RevocationSuccess,
        Counter::RevocationFailure,
        Counter::RevocationRetiredLocally,
    ];

    /// The counter as the store keeps it (migration 0004 seeds these texts).
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::RotationSuccess => "rotation_success",
            Counter::RotationFailure => "rotation_failure",
            Counter::RevocationSuccess => "revocation_success",
            Counter::RevocationFailure => "revocation_failure",
            Counter::RevocationRetiredLocally => "revocation_retired_locally",
        }
    }

    /// The counter a stored text names, if this build knows it.
    pub fn parse(text: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// An audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: UnixTime,
    pub credential: Option<String>,
    pub version_id: Option<i64>,
    /// The stored text of an [`EventKind`]; kept as text so a trail written by another
    /// keyrotd version reads whatever kinds it holds.
    pub kind: String,
    pub actor: String,
    pub detail: String,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The audit trail of a credential, oldest first.
    async fn events(&self, credential: &str) -> StoreResult<Vec<Event>>;

    /// Deletes events older than `cutoff` (Unix seconds), at most `batch` of them, in one
    /// short write transaction; answers how many it deleted (fewer than `batch`: done). The
    /// running totals ([`Counter`]) are not touched.
    async fn prune_events(&self, cutoff: UnixTime, batch: u32) -> StoreResult<u64>;

    /// Appends an audit event.
    async fn append_event(
        &self,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: EventKind,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_from_its_text() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("no_such_kind"), None);
    }

    #[test]
    fn a_rotation_step_s_event_keeps_the_text_it_always_had() {
        assert_eq!(
            EventKind::reached(RotationStep::Verified).as_str(),
            "verified"
        );
        assert_eq!(
            EventKind::reached(RotationStep::Delivered).as_str(),
            "delivered"
        );
    }
}
