//! Key versions: the secret values of a credential, sealed at rest, and the operator's
//! direct changes to them (import, revoke, roll back, re-seal under a new master key).

use super::StoreResult;
use crate::crypto::Sealer;
use crate::model::{CheckStatus, Stage, UnixTime};
use async_trait::async_trait;
use futures::stream::BoxStream;
use secrecy::SecretString;

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
    pub fn new(version: KeyVersion, sealed: Vec<u8>) -> SealedKey {
        SealedKey { version, sealed }
    }

    pub(crate) fn sealed(&self) -> &[u8] {
        &self.sealed
    }
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores an operator-supplied key. It becomes `current` when the credential has none,
    /// otherwise `pending` (to be verified, delivered and promoted by a rotation).
    async fn import_key(
        &self,
        credential: &str,
        key: NewKey,
        actor: &str,
        now: UnixTime,
    ) -> StoreResult<KeyVersion>;

    /// All versions of a credential, newest first.
    async fn versions(&self, credential: &str) -> StoreResult<Vec<KeyVersion>>;

    /// Decrypts a version's secret.
    async fn secret(&self, version_id: i64) -> StoreResult<SecretString>;

    /// The credential's current key and its decrypted secret (`None` without a current key),
    /// read together: a check needs both.
    async fn current_key(
        &self,
        credential: &str,
    ) -> StoreResult<Option<(KeyVersion, SecretString)>>;

    /// The current key of every active credential, still sealed: a sweep reads them all in
    /// one query and opens each with [`KeyStore::open_sealed`] only when its check goes out.
    /// A stream, so the first checks go out while the rest are still being read.
    fn current_keys_sealed(&self) -> BoxStream<'_, StoreResult<SealedKey>>;

    /// Decrypts a key read by [`KeyStore::current_keys_sealed`].
    fn open_sealed(&self, key: &SealedKey) -> StoreResult<SecretString>;

    /// Marks a version revoked and drops its secret material. Refused
    /// ([`StoreError::VersionInFlight`](super::StoreError::VersionInFlight)), in the same
    /// transaction, for a version bound to an unfinished rotation: its new key, or the
    /// previous key a rollback is putting back.
    async fn mark_revoked(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Marks a version retired: revoked here and its secret dropped, like
    /// [`KeyStore::mark_revoked`], but recorded as `retired_locally` because the provider
    /// has no revocation API and the key is still live there.
    async fn mark_retired(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<()>;

    /// Records a failed revocation attempt of a version that stays live (an event and the
    /// failure count, in one transaction); answers how many attempts have failed so far,
    /// which the retry backs off by.
    async fn record_revocation_failure(
        &self,
        version_id: i64,
        actor: &str,
        detail: &str,
        now: UnixTime,
    ) -> StoreResult<u32>;

    /// Re-seals every stored secret under `new` in one transaction (master-key rotation).
    /// Returns how many secrets were re-sealed.
    async fn reseal(&self, new: &Sealer, actor: &str, now: UnixTime) -> StoreResult<usize>;
}
