//! Moving an installation from one backend to another (`keyrotd store copy`): one host on
//! SQLite to several replicas on PostgreSQL, and back.
//!
//! A backend exports its rows as a [`Dump`], neutral plain data with one field per column of
//! the schema both backends share (the same tables, columns and meanings), and another
//! backend imports it. Sealed secrets travel as the bytes they are: the copy never opens or
//! reseals them, so it needs no master key; they stay valid because the sealing's
//! associated data is (credential name, version id) and both are copied unchanged, ids
//! included. The installation's identity comes along too: it names the keys this
//! installation issued at the providers, so the orphan sweep on the new backend still
//! recognises them. Leadership is not copied: it belongs to the processes running on a
//! database, not to its data.
//!
//! The dump is held in memory: an export is one consistent snapshot (one read transaction)
//! and an import is one transaction, and a store is small (at 10,000 credentials with their
//! history, tens of megabytes). Rows decode by column name (`sqlx::FromRow`) from either
//! backend's driver; the statements that read them, [`select`], are shared too.

use super::{InstallationStore, LeaderStore, StoreError, StoreResult};
use crate::model::UnixTime;
use async_trait::async_trait;

/// Every table of a store, row by row, in the shared schema's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Dump {
    pub installation: InstallationRow,
    pub credentials: Vec<CredentialRow>,
    pub key_versions: Vec<KeyVersionRow>,
    pub rotations: Vec<RotationRow>,
    pub credits: Vec<CreditRow>,
    pub events: Vec<EventRow>,
    pub counters: Vec<CounterRow>,
    /// The retention prune's cutoff (`events_prune`): events before it may be deleted.
    pub events_cutoff: UnixTime,
    /// The source's store generation; the target's is moved past it.
    pub generation: i64,
}

/// `installation`: the database's identity and the master key its secrets are sealed under.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InstallationRow {
    pub installation_id: String,
    pub master_key_id: Option<String>,
}

/// `credentials`, every column.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CredentialRow {
    pub id: i64,
    pub name: String,
    pub provider: String,
    pub provider_kind: String,
    pub created_at: UnixTime,
    pub removed_at: Option<UnixTime>,
    pub next_rotation_at: Option<UnixTime>,
    pub last_rotated_at: Option<UnixTime>,
    pub consecutive_failures: i64,
    pub check_status: Option<String>,
    /// 1 valid, 0 invalid (an integer on both backends).
    pub valid: Option<i64>,
    pub last_check_at: Option<UnixTime>,
    pub check_detail: Option<String>,
}

/// `key_versions`, every column. `sealed_secret` is the sealed blob as stored.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyVersionRow {
    pub id: i64,
    pub credential_id: i64,
    pub stage: String,
    pub fingerprint: String,
    pub provider_key_id: Option<String>,
    pub rotation_id: Option<String>,
    pub sealed_secret: Option<Vec<u8>>,
    pub sealing_key_id: Option<String>,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    pub stage_changed_at: UnixTime,
    pub last_check_at: Option<UnixTime>,
    pub last_check_status: Option<String>,
    pub revoke_failures: i64,
    pub revoke_failed_at: Option<UnixTime>,
}

impl std::fmt::Debug for KeyVersionRow {
    /// The sealed blob is shown by length only: it is ciphertext, but nothing about a
    /// secret belongs in a log or a test failure.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersionRow")
            .field("id", &self.id)
            .field("credential_id", &self.credential_id)
            .field("stage", &self.stage)
            .field("fingerprint", &self.fingerprint)
            .field("provider_key_id", &self.provider_key_id)
            .field("rotation_id", &self.rotation_id)
            .field(
                "sealed_secret",
                &self
                    .sealed_secret
                    .as_ref()
                    .map(|s| format!("{} bytes", s.len())),
            )
            .field("sealing_key_id", &self.sealing_key_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("stage_changed_at", &self.stage_changed_at)
            .field("last_check_at", &self.last_check_at)
            .field("last_check_status", &self.last_check_status)
            .field("revoke_failures", &self.revoke_failures)
            .field("revoke_failed_at", &self.revoke_failed_at)
            .finish()
    }
}

/// `rotations`, every column, ownership included: a rotation in flight resumes on the new
/// backend once its owner's lease has expired there.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RotationRow {
    pub id: String,
    pub credential_id: i64,
    pub kind: String,
    pub step: String,
    pub new_version_id: Option<i64>,
    pub started_at: UnixTime,
    pub updated_at: UnixTime,
    pub finished_at: Option<UnixTime>,
    pub attempts: i64,
    pub error: Option<String>,
    pub owner: String,
    pub owner_epoch: i64,
    pub lease_expires_at: UnixTime,
    pub owner_leader_epoch: Option<i64>,
}

/// `credits`: the balance a provider last reported, per unit.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct CreditRow {
    pub credential_id: i64,
    pub unit: String,
    pub remaining: f64,
    pub reported_at: UnixTime,
}

/// `events`: the audit trail, ids kept.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at: UnixTime,
    pub credential: Option<String>,
    pub version_id: Option<i64>,
    pub kind: String,
    pub actor: String,
    pub detail: String,
}

/// `credential_counters`: the running totals that outlive pruned events.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CounterRow {
    pub credential: String,
    pub counter: String,
    pub value: i64,
}

impl Dump {
    /// Rows per table, by table name, for the command's summary.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("credentials", self.credentials.len()),
            ("key_versions", self.key_versions.len()),
            ("rotations", self.rotations.len()),
            ("credits", self.credits.len()),
            ("events", self.events.len()),
            ("credential_counters", self.counters.len()),
        ]
    }
}

/// A backend that can hand over all its data and take over another's.
#[async_trait]
pub trait StoreCopy: InstallationStore + LeaderStore {
    /// Every table but leadership, read in one consistent snapshot.
    async fn export(&self) -> StoreResult<Dump>;

    /// Writes `dump` into this store, in one transaction, ids as they are. Refused with
    /// [`StoreError::TargetNotEmpty`], nothing written, unless the store holds no data yet
    /// (its installation row, made when it was opened, is replaced by the dump's).
    async fn import(&self, dump: &Dump) -> StoreResult<()>;
}

/// The statements that read each table of a [`Dump`], valid on both backends, in the order
/// an import writes them (parents before the rows that refer to them).
pub(super) mod select {
    pub const INSTALLATION: &str =
        "SELECT installation_id, master_key_id FROM installation WHERE id = 1";
    pub const CREDENTIALS: &str = "SELECT id, name, provider, provider_kind, created_at,
        removed_at, next_rotation_at, last_rotated_at, consecutive_failures, check_status,
        valid, last_check_at, check_detail FROM credentials ORDER BY id";
    pub const KEY_VERSIONS: &str = "SELECT id, credential_id, stage, fingerprint,
        provider_key_id, rotation_id, sealed_secret, sealing_key_id, created_at, expires_at,
        stage_changed_at, last_check_at, last_check_status, revoke_failures, revoke_failed_at
        FROM key_versions ORDER BY id";
    pub const ROTATIONS: &str = "SELECT id, credential_id, kind, step, new_version_id,
        started_at, updated_at, finished_at, attempts, error, owner, owner_epoch,
        lease_expires_at, owner_leader_epoch FROM rotations ORDER BY id";
    pub const CREDITS: &str = "SELECT credential_id, unit, remaining, reported_at FROM credits
        ORDER BY credential_id, unit";
    pub const EVENTS: &str =
        "SELECT id, at, credential, version_id, kind, actor, detail FROM events ORDER BY id";
    pub const COUNTERS: &str = "SELECT credential, counter, value FROM credential_counters
        ORDER BY credential, counter";
    pub const EVENTS_CUTOFF: &str = "SELECT cutoff FROM events_prune WHERE id = 1";
    pub const GENERATION: &str = "SELECT value FROM store_generation WHERE id = 1";
}

/// One statement, valid on both backends, counting the rows of every table whose rows make
/// a store not empty. A new database has none: its installation, generation and prune
/// cutoff rows are made by opening it.
pub(super) const OCCUPANCY: &str = "SELECT
    (SELECT COUNT(*) FROM credentials),
    (SELECT COUNT(*) FROM key_versions),
    (SELECT COUNT(*) FROM rotations),
    (SELECT COUNT(*) FROM credits),
    (SELECT COUNT(*) FROM events),
    (SELECT COUNT(*) FROM credential_counters)";

/// The row counts [`OCCUPANCY`] answers, in its order.
pub(super) type Occupancy = (i64, i64, i64, i64, i64, i64);

/// The refusal for a target whose [`OCCUPANCY`] is not all zeros, naming what it holds.
pub(super) fn refuse_unless_empty(occupancy: Occupancy) -> StoreResult<()> {
    let (credentials, versions, rotations, credits, events, counters) = occupancy;
    const TABLES: [&str; 6] = [
        "credentials",
        "key versions",
        "rotations",
        "credits",
        "events",
        "counters",
    ];
    let held: Vec<String> = TABLES
        .iter()
        .zip([credentials, versions, rotations, credits, events, counters])
        .filter(|(_, rows)| *rows > 0)
        .map(|(table, rows)| format!("{table}: {rows}"))
        .collect();
    if held.is_empty() {
        Ok(())
    } else {
        Err(StoreError::TargetNotEmpty {
            holds: held.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_occupancy_passes_and_any_row_refuses_naming_it() {
        assert!(refuse_unless_empty((0, 0, 0, 0, 0, 0)).is_ok());
        let error = refuse_unless_empty((0, 3, 0, 0, 12, 0)).unwrap_err();
        assert!(
            matches!(&error, StoreError::TargetNotEmpty { holds } if holds == "key versions: 3, events: 12"),
            "{error}"
        );
    }

    #[test]
    fn a_key_version_row_never_prints_its_sealed_bytes() {
        let row = KeyVersionRow {
            id: 1,
            credential_id: 1,
            stage: "current".into(),
            fingerprint: "abcd".into(),
            provider_key_id: None,
            rotation_id: None,
            sealed_secret: Some(vec![0x5a; 40]),
            sealing_key_id: None,
            created_at: 0,
            expires_at: None,
            stage_changed_at: 0,
            last_check_at: None,
            last_check_status: None,
            revoke_failures: 0,
            revoke_failed_at: None,
        };
        let text = format!("{row:?}");
        assert!(text.contains("40 bytes"), "{text}");
        assert!(!text.contains("90"), "{text}");
    }
}
