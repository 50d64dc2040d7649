//! Prometheus metrics. Per-key state is rendered from a snapshot of the store, so a removed
//! credential leaves no stale series and the CLI, which writes the same store, shows up on
//! the next scrape without the daemon being told.
//!
//! A scrape is an [`Exposition`]: three compressed chunks in order, laid out as one gzip
//! member ([`gzip`]):
//!
//! - the process-level series ([`registry`]), encoded on every scrape (a handful of
//!   series);
//! - the per-key families that move with the clock ([`per_key`]), rendered at most once
//!   per second;
//! - the per-key families that depend only on the store, rendered once per store
//!   generation (off the async threads).
//!
//! The per-key families are the bulk of a scrape, so they are neither re-encoded per scrape
//! nor kept as text: they are written straight to text ([`text`]) through a bounded buffer
//! into a deflate compressor, and only the compressed bytes are cached. A scrape of an
//! unchanged store is then: one `SELECT` of the generation, compressing the small registry,
//! and the cached chunks handed to the response as shared `Bytes`.
//!
//! [`server`] serves it over HTTP with `/healthz` and `/readyz`. [`management_keys`] is a
//! process-level collector the daemon registers: the age of each provider's management key.

mod gzip;
pub(crate) mod management_keys;
mod per_key;
mod registry;
pub mod server;
#[cfg(test)]
mod tests;
mod text;

pub(crate) use gzip::{Exposition, TextReader};

use crate::clock::Clock;
use crate::heartbeat::Heartbeat;
use crate::store::{Store, StoreResult};
use per_key::{KeyRow, KeyState};
use prometheus::Registry;
use std::sync::{Arc, Mutex};

/// The registry and the per-key state of one daemon.
pub struct Metrics {
    registry: Registry,
    keys: Mutex<KeyState>,
    /// Serialises re-reads of the store, so a burst of scrapes after a change reads it once.
    refreshing: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
}

impl Metrics {
    /// Metrics whose heartbeat gauge follows `heartbeat`.
    pub fn new(clock: Arc<dyn Clock>, heartbeat: Arc<Heartbeat>) -> Metrics {
        Metrics {
            registry: registry::new_registry(heartbeat),
            keys: Mutex::new(KeyState::default()),
            refreshing: tokio::sync::Mutex::new(()),
            clock,
        }
    }

    /// Where other modules register their process-level series.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyState> {
        // A panic while holding this lock cannot leave the cache half-written: it is
        // replaced whole.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the store when it changed since the last scrape.
    pub(crate) async fn refresh(&self, store: &dyn Store) -> StoreResult<()> {
        let generation = store.generation().await?;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        let _turn = self.refreshing.lock().await;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        // Each record is cut down to what the families need as it is read, so the full
        // records never exist all at once.
        let mut rows = Vec::new();
        let generation = store
            .visit_states(&mut |state| rows.push(KeyRow::from(&state)))
            .await?;
        // Rendering and compressing every credential is CPU work: not on the threads that
        // serve the other requests.
        let rendered =
            tokio::task::spawn_blocking(move || KeyState::render_rows(generation, &rows))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        *self.keys() = rendered;
        Ok(())
    }

    /// Every metric, as chunks to send in order.
    pub(crate) fn exposition(&self) -> Exposition {
        let process = registry::encode(&self.registry);
        let now = self.clock.now();
        let (timed, fixed) = {
            let mut keys = self.keys();
            (keys.timed(now), keys.fixed.clone())
        };
        Exposition::new(vec![process, timed, fixed])
    }

    /// The text exposition of every metric as one string.
    #[cfg(test)]
    pub(crate) fn render(&self) -> String {
        self.exposition().to_text()
    }
}
