//! The installation: what makes this database itself rather than another one. Its identity
//! names the keys it issues at the provider (so an orphan sweep can tell its own keys from
//! another installation's, or from keys issued before a disaster recovery), and its current
//! master key id fences every sealing write against a master-key swap under a live process.

use super::StoreResult;
use async_trait::async_trait;
use std::path::Path;

#[async_trait]
pub trait InstallationStore: Send + Sync {
    /// This database's identity: 12 lowercase hex digits, made at its first open and kept
    /// for its lifetime (a restored backup keeps the identity it was made with).
    async fn installation_id(&self) -> StoreResult<String>;

    /// Whether this database planned rotation `rotation_id` of `credential` (whatever
    /// became of it).
    async fn rotation_planned(&self, credential: &str, rotation_id: &str) -> StoreResult<bool>;

    /// Whether the database's current master key is no longer the one this process seals
    /// with (`master-key rotate` ran under it): every sealing write would be refused with
    /// [`StoreError::MasterKeyChanged`](super::StoreError::MasterKeyChanged).
    async fn master_key_replaced(&self) -> StoreResult<bool>;

    /// Whether any key version still holds sealed secret material.
    async fn holds_secrets(&self) -> StoreResult<bool>;

    /// Fails unless the master key opens a stored secret (when there is one). Run at
    /// start-up so a wrong key is a clear error, not a failed check hours later.
    async fn verify_master_key(&self) -> StoreResult<()>;

    /// Checks, when a process opens the store with a master key, that every sealed row is
    /// sealed under it (by key id), and records it as the database's master key when the
    /// database has none yet. `key_path` only names the key in errors.
    async fn claim_master_key(&self, key_path: &Path) -> StoreResult<()>;

    /// Closes the backend's connections; the store is not used afterwards.
    async fn close(&self);
}
