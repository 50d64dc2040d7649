//! Leadership: which of several keyrotd replicas on one database acts (runs checks and
//! rotations). The others serve `/metrics` from the shared store and wait.
//!
//! Leadership is one lease row on the database's clock, after Vault's PostgreSQL HA
//! backend: a single upsert that succeeds only when the lease has expired or is already the
//! caller's. Every change of holder raises an epoch; a rotation write made on behalf of a
//! leader names the epoch it holds (`Claim::leader`), and the store refuses it once the
//! epoch moved on or the lease ran out, so a paused or cut-off leader that wakes up cannot
//! touch anything. There are no session-level advisory locks: they break behind PgBouncer
//! in transaction mode and vanish silently with a dropped connection.

use super::StoreResult;
use crate::model::UnixTime;
use async_trait::async_trait;

/// A leader's proof of office, carried by every rotation write it makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderToken {
    pub holder: String,
    pub epoch: i64,
}

/// The lease row as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub holder: String,
    /// Rises at every change of holder (and when a holder takes back its own expired lease).
    pub epoch: i64,
    /// Unix seconds on the database's clock.
    pub acquired_at: UnixTime,
    pub expires_at: UnixTime,
    /// Seconds left on the lease, measured on the database's clock when it was read.
    pub left: i64,
}

impl Leadership {
    pub fn token(&self) -> LeaderToken {
        LeaderToken {
            holder: self.holder.clone(),
            epoch: self.epoch,
        }
    }
}

/// What a claim of the lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderClaim {
    /// The caller leads: a fresh term (a new epoch) or its own lease renewed.
    Leading(Leadership),
    /// Another holder's lease is live (or, with `None`, nobody holds one and the claim lost a
    /// race; claim again).
    Following(Option<Leadership>),
}

#[async_trait]
pub trait LeaderStore: Send + Sync {
    /// One statement on the database's clock: renews the lease if `holder` holds it and it
    /// has not expired (same epoch), takes it if it is free or expired (epoch + 1), and
    /// otherwise leaves it alone and answers who holds it.
    async fn claim_leadership(&self, holder: &str, ttl_seconds: i64) -> StoreResult<LeaderClaim>;

    /// Gives the lease up at once (graceful stop), if `holder` still holds it at `epoch`, so
    /// a standby need not wait out the TTL.
    async fn release_leadership(&self, token: &LeaderToken) -> StoreResult<()>;

    /// The lease row, if any replica ever led.
    async fn leadership(&self) -> StoreResult<Option<Leadership>>;
}
