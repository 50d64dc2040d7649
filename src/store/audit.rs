//! The audit trail: an append-only record of everything that happened to a credential and
//! its keys. Never holds key material: keys are named by fingerprint.

use super::StoreResult;
use crate::model::UnixTime;
use async_trait::async_trait;

/// An audit record.
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

#[async_trait]
pub trait AuditStore: Send + Sync {
    /// The audit trail of a credential, oldest first.
    async fn events(&self, credential: &str) -> StoreResult<Vec<Event>>;

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
