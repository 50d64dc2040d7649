//! The store: the single source of truth for credentials, key versions, rotations and the
//! audit trail.
//!
//! Callers speak to the [`Store`] trait; `sqlite` is the embedded backend. A second backend
//! (PostgreSQL) implements the same trait with its own SQL and migrations. Nothing outside
//! this folder writes SQL. Secrets cross this boundary only as `SecretString`; the backend
//! seals them before they touch disk.

mod sqlite;

pub use sqlite::SqliteStore;

use crate::crypto::CryptoError;
use crate::model::{CheckStatus, Stage, UnixTime};
use async_trait::async_trait;
use futures::stream::BoxStream;
use secrecy::SecretString;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path} is not a keyrotd database (not SQLite, another program's database, or corrupt); refusing to touch it")]
    Corrupt { path: PathBuf },
    #[error("{path} has schema version {found}, newer than this keyrotd knows ({known}); upgrade keyrotd or restore a backup — refusing to touch it")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot create or write the database at {path}: {reason}")]
    Unwritable { path: PathBuf, reason: String },
    #[error("database {path} is locked by another writer for too long")]
    Busy { path: PathBuf },
    #[error("unknown credential {0:?} (is it in the config?)")]
    UnknownCredential(String),
    #[error("unknown key version {0}")]
    UnknownVersion(i64),
    #[error("key version {0} has no secret material (revoked)")]
    NoSecret(i64),
    #[error("the store holds sealed keys but no master key was given")]
    MasterKeyRequired,
    #[error("a key with fingerprint {0} already exists for this credential")]
    DuplicateKey(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

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

/// One secret value of a credential, without the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyVersion {
    pub id: i64,
    pub credential: String,
    pub stage: Stage,
    pub fingerprint: String,
    pub provider_key_id: Option<String>,
    pub rotation_id: Option<String>,
    pub created_at: UnixTime,
    pub expires_at: Option<UnixTime>,
    pub stage_changed_at: UnixTime,
    pub last_check_at: Option<UnixTime>,
    pub last_check_status: Option<CheckStatus>,
    pub has_secret: bool,
}

/// An audit record. Never holds key material: keys are named by fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub at: UnixTime,
    pub credential: Option<String>,
    pub version_id: Option<i64>,
    pub kind: String,
    pub actor: String,
    pub detail: String,
}

/// A new key version to be stored.
pub struct NewKey {
    pub secret: SecretString,
    pub expires_at: Option<UnixTime>,
    pub provider_key_id: Option<String>,
    pub rotation_id: Option<String>,
}

/// A current key read ahead of its check: the version and its sealed (encrypted) secret.
#[derive(Debug, Clone)]
pub struct SealedKey {
    pub version: KeyVersion,
    sealed: Vec<u8>,
}

impl SealedKey {
    pub(crate) fn new(version: KeyVersion, sealed: Vec<u8>) -> SealedKey {
        SealedKey { version, sealed }
    }

    pub(crate) fn sealed(&self) -> &[u8] {
        &self.sealed
    }
}

/// One credential's rotation bookkeeping, reduced to what its next due time depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationOutlook {
    pub credential: String,
    pub next_rotation_at: Option<UnixTime>,
    pub last_rotated_at: Option<UnixTime>,
    pub consecutive_failures: i64,
    /// `created_at` and `expires_at` of the current key.
    pub current: Option<(UnixTime, Option<UnixTime>)>,
    /// A key imported by an operator waits to be taken into a rotation.
    pub imported_pending: bool,
    /// `updated_at` of the rotation in flight, if any.
    pub in_flight_since: Option<UnixTime>,
    /// Earliest `stage_changed_at` of previous keys that still hold their secret.
    pub oldest_previous: Option<UnixTime>,
    /// Earliest `stage_changed_at` of discarded (failed) keys that still hold their secret.
    pub oldest_discarded: Option<UnixTime>,
}

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
    /// (unit, remaining) as last reported by the provider.
    pub credits: Vec<(String, f64)>,
}

/// The outcome of a check, as recorded against a credential's current key.
#[derive(Debug, Clone)]
pub struct CheckRecord {
    pub status: CheckStatus,
    pub detail: String,
    pub at: UnixTime,
    /// Balances the provider reported; replaces the stored set when non-empty.
    pub credits: Vec<(String, f64)>,
    /// Expiry the provider reported for the key; replaces the stored one.
    pub expires_at: Option<UnixTime>,
}

/// A check result for [`Store::record_checks`].
#[derive(Debug, Clone)]
pub struct CheckToRecord {
    pub credential: String,
    pub version_id: i64,
    pub check: CheckRecord,
}

/// Where a rotation is. Each step is durable before the next external effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    /// Recorded before any call to the provider.
    Planned,
    /// The new key is stored as `pending`.
    Issued,
    /// The new key answered a check as valid.
    Verified,
    /// Every delivery target holds the new key.
    Delivered,
    /// Promoted: the new key is current. Finished.
    Done,
    /// Abandoned; the old key stayed current. Finished.
    Failed,
}

impl RotationStep {
    pub fn as_str(self) -> &'static str {
        match self {
            RotationStep::Planned => "planned",
            RotationStep::Issued => "issued",
            RotationStep::Verified => "verified",
            RotationStep::Delivered => "delivered",
            RotationStep::Done => "done",
            RotationStep::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<RotationStep> {
        [
            RotationStep::Planned,
            RotationStep::Issued,
            RotationStep::Verified,
            RotationStep::Delivered,
            RotationStep::Done,
            RotationStep::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// A rotation's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub id: String,
    pub credential: String,
    pub step: RotationStep,
    pub new_version_id: Option<i64>,
    pub started_at: UnixTime,
    /// Last time a step was committed: a rotation in flight that has not moved for long
    /// was abandoned by a process that died (see `rotation::STALE_ROTATION`).
    pub updated_at: UnixTime,
    pub error: Option<String>,
}

/// How a failed rotation is wound up.
#[derive(Debug, Clone)]
pub struct RotationFailure {
    pub error: String,
    /// Mark the pending version `failed` (an issued key that must not be retried).
    pub discard_pending: bool,
    /// When to try again.
    pub retry_at: Option<UnixTime>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Brings the credentials table in line with the config: adds new credentials, updates
    /// providers, marks removed ones (their history stays).
    async fn sync_credentials(&self, specs: &[CredentialSpec], now: UnixTime) -> StoreResult<()>;

    /// Stores an operator-supplied key. It becomes `current` when the credential has none,
    /// otherwise `pending` (to be verified, delivered and promoted by a rotation).
    async fn import_key(
        &self,
        credential: &str,
        key: NewKey,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

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

    /// When each active credential was last checked (credentials never checked are absent).
    /// Start-up reads this to resume every check schedule; the full [`Store::snapshot`]
    /// answers it too, at several times the cost.
    async fn last_checks(&self) -> StoreResult<std::collections::HashMap<String, UnixTime>> {
        Ok(self
            .snapshot()
            .await?
            .credentials
            .into_iter()
            .filter_map(|s| s.credential.last_check_at.map(|at| (s.credential.name, at)))
            .collect())
    }

    /// A number that changes whenever anything in the store changes.
    async fn generation(&self) -> StoreResult<i64>;

    async fn credential(&self, name: &str) -> StoreResult<Option<CredentialRecord>>;

    /// All versions of a credential, newest first.
    async fn versions(&self, credential: &str) -> StoreResult<Vec<KeyVersion>>;

    /// The audit trail of a credential, oldest first.
    async fn events(&self, credential: &str) -> StoreResult<Vec<Event>>;

    /// Decrypts a version's secret.
    async fn secret(&self, version_id: i64) -> StoreResult<SecretString>;

    /// The credential's current key and its decrypted secret (`None` without a current key),
    /// read together: a check needs both.
    async fn current_key(
        &self,
        credential: &str,
    ) -> StoreResult<Option<(KeyVersion, SecretString)>>;

    /// The current key of every active credential, still sealed: a sweep reads them all in
    /// one query and opens each with [`Store::open_sealed`] only when its check goes out.
    /// A stream, so the first checks go out while the rest are still being read.
    fn current_keys_sealed(&self) -> BoxStream<'_, StoreResult<SealedKey>>;

    /// Decrypts a key read by [`Store::current_keys_sealed`].
    fn open_sealed(&self, key: &SealedKey) -> StoreResult<SecretString>;

    /// What the rotation schedule of every active credential depends on, in one read (the
    /// daemon's start-up and its hourly re-read; see `rotation::pass_queue`).
    async fn rotation_outlooks(&self) -> StoreResult<Vec<RotationOutlook>>;

    /// Records a check of `version_id`; a change of status is also an event.
    async fn record_check(
        &self,
        credential: &str,
        version_id: i64,
        check: &CheckRecord,
    ) -> StoreResult<()>;

    /// Records many checks at once, as [`Store::record_check`] records one: a sweep's
    /// results, gathered by the caller. One result per record, in order; a record that
    /// cannot be written (its credential was removed meanwhile, say) fails alone.
    async fn record_checks(&self, checks: Vec<CheckToRecord>) -> Vec<StoreResult<()>>;

    /// Records a new rotation before anything is asked of the provider. Fails with
    /// `Conflict` while another rotation of the credential is in flight.
    async fn plan_rotation(
        &self,
        credential: &str,
        rotation_id: &str,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<Rotation>;

    /// Unfinished rotations (to resume at start-up).
    async fn rotations_in_flight(&self) -> StoreResult<Vec<Rotation>>;

    /// Stores the key the provider issued as `pending`, bound to the rotation (step → issued).
    async fn record_issued(
        &self,
        rotation_id: &str,
        key: NewKey,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// Binds an operator-imported pending version to the rotation (step → issued).
    async fn adopt_pending(
        &self,
        rotation_id: &str,
        version_id: i64,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Moves a rotation to `verified` or `delivered`, with an event.
    async fn advance_rotation(
        &self,
        rotation_id: &str,
        step: RotationStep,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// In one transaction: current → previous, pending → current, rotation done, failures
    /// reset, next rotation set.
    async fn promote(
        &self,
        rotation_id: &str,
        next_rotation_at: Option<UnixTime>,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Winds up a failed rotation; the current key is untouched.
    async fn fail_rotation(
        &self,
        rotation_id: &str,
        failure: &RotationFailure,
        now: UnixTime,
    ) -> StoreResult<()>;

    async fn set_next_rotation(&self, credential: &str, at: Option<UnixTime>) -> StoreResult<()> {
        self.set_next_rotations(&[(credential.to_string(), at)])
            .await
    }

    /// Records the next due time of many credentials in one transaction (start-up records
    /// every credential's at once, not with a commit each).
    async fn set_next_rotations(&self, due: &[(String, Option<UnixTime>)]) -> StoreResult<()>;

    /// Marks a version revoked and drops its secret material.
    async fn mark_revoked(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// previous → current and current → previous, if the previous key changed stage no
    /// earlier than `not_before` (inside its grace period).
    async fn rollback(
        &self,
        credential: &str,
        not_before: UnixTime,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// Re-seals every stored secret under `new` in one transaction (master-key rotation).
    /// Returns how many secrets were re-sealed.
    async fn reseal(
        &self,
        new: &crate::crypto::Sealer,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<usize>;

    /// Appends an audit event.
    async fn append_event(
        &self,
        credential: Option<&str>,
        version_id: Option<i64>,
        kind: &str,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;
}
