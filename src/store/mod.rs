//! The store: the single source of truth for credentials, key versions, rotations and the
//! audit trail.
//!
//! Callers speak to [`Store`], the sum of one small trait per concern (credentials, keys,
//! checks, rotations, the audit trail, and the state the metrics read); each concern's file
//! holds its trait and its records. `sqlite` is the embedded backend, one file per concern
//! as well; `postgres`, the backend several replicas share, implements the same traits with
//! its own SQL and migrations over the same tables and columns. Nothing outside this folder writes SQL. Secrets cross this boundary only as
//! `SecretString`; the backend seals them before they touch disk.

mod audit;
mod checks;
mod copy;
mod credentials;
mod installation;
mod keys;
mod leadership;
mod location;
mod open;
mod postgres;
mod rotations;
mod sqlite;
mod state;

pub use audit::{AuditStore, Counter, Event, EventKind};
pub use checks::{CheckRecord, CheckStore, CheckToRecord};
pub use copy::{
    CounterRow, CredentialRow, CreditRow, Dump, EventRow, InstallationRow, KeyVersionRow,
    RotationRow, StoreCopy,
};
pub use credentials::{CredentialRecord, CredentialSpec, CredentialStore};
pub use installation::InstallationStore;
pub use keys::{KeyStore, KeyVersion, NewKey, SealedKey};
pub use leadership::{LeaderClaim, LeaderStore, LeaderToken, Leadership};
pub use location::{PgSettings, PgSslMode, StoreLocation};
pub use open::credential_specs;
pub(crate) use open::{open_backend, open_store, MasterKeyNeed};
pub use postgres::PgStore;
pub use rotations::{
    Claim, Lease, Rotation, RotationFailure, RotationKind, RotationOutlook, RotationStep,
    RotationStore,
};
pub use sqlite::{lock_exclusive, lock_for_daemon, DatabaseLock, SqliteStore};
pub use state::{CredentialState, Revocations, Snapshot, StateStore};

/// Every concern trait, for code that calls store methods on a concrete backend rather than
/// through `dyn Store` (`use crate::store::prelude::*;`).
pub mod prelude {
    pub use super::{
        AuditStore, CheckStore, CredentialStore, InstallationStore, KeyStore, LeaderStore,
        RotationStore, StateStore, StoreCopy,
    };
}

use crate::crypto::CryptoError;
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
    #[error("the database {target} is unavailable: {reason}")]
    Unavailable { target: String, reason: String },
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
    #[error("no master key at {path} (the store's secrets are sealed with it); create one with `keyrotd master-key generate {path}` or pass --master-key")]
    NoMasterKey { path: PathBuf },
    #[error("master key {path} does not open this store")]
    WrongMasterKey {
        path: PathBuf,
        #[source]
        source: Box<StoreError>,
    },
    #[error("the master key of this database changed under this process (it seals with master key {ours}, the database's is now {current}): nothing was written; restart keyrotd with the new master key")]
    MasterKeyChanged { ours: String, current: String },
    #[error("master key {path} (id {given}) does not open this store: {rows} sealed secrets were sealed under master key {sealed_with}; start with the master key that sealed them, or, after `keyrotd master-key rotate`, install the new key file in place of the old one")]
    SealedUnderOtherKey {
        rows: i64,
        sealed_with: String,
        given: String,
        path: PathBuf,
    },
    #[error("a keyrotd daemon is running on {path}; stop it first (`systemctl stop keyrotd`), then run this again")]
    DaemonRunning { path: PathBuf },
    #[error("the target store is not empty (it holds {holds}); a copy only goes into a new, empty database: nothing was written")]
    TargetNotEmpty { holds: String },
    #[error("a key with fingerprint {0} already exists for this credential")]
    DuplicateKey(String),
    #[error("rotation {rotation} of {credential} is already in flight")]
    RotationInFlight {
        credential: String,
        rotation: String,
    },
    #[error("rotation {rotation} is not in flight")]
    RotationNotInFlight { rotation: String },
    #[error("rotation {rotation} is not in flight at step {expected}")]
    RotationNotInStep {
        rotation: String,
        expected: RotationStep,
    },
    #[error("rotation {rotation} was taken over by another process (our epoch {epoch} is stale); stopped without touching anything")]
    Fenced { rotation: String, epoch: i64 },
    #[error("rotation {rotation} is in flight (owned by {owner}, lease until {until})")]
    LeaseLive {
        rotation: String,
        owner: String,
        /// Unix seconds, on the database's clock.
        until: i64,
        /// Seconds left on the lease, measured on the database's clock.
        left: i64,
    },
    #[error("version {version} is bound to rotation {rotation}, still in flight; it cannot be revoked until that rotation finishes")]
    VersionInFlight { version: i64, rotation: String },
    #[error("rotation {rotation} has no new key")]
    RotationWithoutKey { rotation: String },
    #[error("version {version} cannot be adopted by rotation {rotation} (not a pending key of its credential)")]
    NotAdoptable { version: i64, rotation: String },
    #[error("version {version} is no longer pending")]
    NoLongerPending { version: i64 },
    #[error("{credential} has no previous key to roll back to")]
    NoPreviousKey { credential: String },
    #[error(
        "the previous key of {credential} is past its grace period; rolling back to it is refused"
    )]
    PastGracePeriod { credential: String },
    #[error("{unmatched} of {records} checked credentials are unknown, removed or repeated")]
    CheckBatchMismatch { unmatched: u64, records: usize },
    #[error("the check results were not written: {reason}")]
    ChecksNotWritten { reason: String },
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// Everything a backend answers: the sum of the per-concern traits. Callers hold a
/// `dyn Store` (or `Arc<dyn Store>`); any type that implements every concern is a `Store`.
pub trait Store:
    CredentialStore
    + KeyStore
    + CheckStore
    + RotationStore
    + AuditStore
    + StateStore
    + InstallationStore
    + LeaderStore
    + StoreCopy
{
}

impl<T> Store for T where
    T: CredentialStore
        + KeyStore
        + CheckStore
        + RotationStore
        + AuditStore
        + StateStore
        + InstallationStore
        + LeaderStore
        + StoreCopy
{
}
