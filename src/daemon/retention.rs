//! Events retention: the audit trail would otherwise grow forever. The daemon prunes events
//! older than `[daemon] events_retention` at start-up and then daily, a small batch per write
//! transaction, so checks and rotations never wait long for the write lock. The running
//! totals the metrics count (`keyrotd_rotations_total`, `keyrotd_revocations_total`) are
//! kept apart from the events and never go down.

use crate::clock::Clock;
use crate::store::{AuditStore, StoreResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Events deleted per write transaction: a few milliseconds of write lock each.
pub(crate) const PRUNE_BATCH: u32 = 1_000;

/// How often the prune runs after the one at start-up.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Deletes every event older than `retention` before now, batch by batch, yielding between
/// batches; answers how many it deleted.
pub(crate) async fn prune_once(
    store: &dyn AuditStore,
    clock: &dyn Clock,
    retention: Duration,
) -> StoreResult<u64> {
    let cutoff = clock.now() - retention.as_secs() as i64;
    let mut total = 0;
    loop {
        let deleted = store.prune_events(cutoff, PRUNE_BATCH).await?;
        total += deleted;
        if deleted < u64::from(PRUNE_BATCH) {
            return Ok(total);
        }
        // Let the writers queued behind this batch go first.
        tokio::task::yield_now().await;
    }
}

/// Prunes now and then daily until aborted; `None` when `retention` is zero (keep forever).
pub(crate) fn spawn(
    store: Arc<dyn AuditStore>,
    clock: Arc<dyn Clock>,
    retention: Duration,
) -> Option<JoinHandle<()>> {
    if retention.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match prune_once(store.as_ref(), clock.as_ref(), retention).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "pruned audit events past retention"),
                // Retried at the next tick; the trail only grows a little meanwhile.
                Err(error) => tracing::warn!(%error, "cannot prune audit events"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{
        CredentialSpec, CredentialStore, EventKind, InstallationStore, SqliteStore, StateStore,
    };

    #[tokio::test]
    async fn prunes_only_events_past_retention_in_batches_and_keeps_the_totals() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("k.db"), None)
            .await
            .unwrap();
        let spec = CredentialSpec {
            name: "a".into(),
            provider: "p".into(),
            provider_kind: "openai".into(),
        };
        store.sync_credentials(&[spec], 0).await.unwrap();
        let day = 86_400;
        // 2,500 old events (more than two batches), each counted, and 3 recent ones.
        for i in 0..2_500 {
            store
                .append_event(Some("a"), None, EventKind::Promoted, "t", "", i % day)
                .await
                .unwrap();
        }
        for at in [400 * day, 401 * day, 402 * day] {
            store
                .append_event(Some("a"), None, EventKind::RotationFailed, "t", "", at)
                .await
                .unwrap();
        }
        let clock = ManualClock::new(402 * day);
        let deleted = prune_once(&store, &clock, Duration::from_secs(10 * day as u64))
            .await
            .unwrap();
        // The credential_added event (at 0) goes with the old ones.
        assert_eq!(deleted, 2_501);
        let left: Vec<i64> = store
            .events("a")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.at)
            .collect();
        assert_eq!(left, [400 * day, 401 * day, 402 * day]);
        let state = store.snapshot().await.unwrap().credentials.remove(0);
        assert_eq!(
            (state.rotations_succeeded, state.rotations_failed),
            (2_500, 3)
        );
        store.close().await;
    }
}
