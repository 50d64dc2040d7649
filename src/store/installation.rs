//! The installation: what makes this database itself rather than another one. Its identity
//! names the keys it issues at the provider (so an orphan sweep can tell its own keys from
//! another installation's, or from keys issued before a disaster recovery), and its current
//! master key id fences every sealing write against a master-key swap under a live process.

use super::StoreResult;
use async_trait::async_trait;

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
}
