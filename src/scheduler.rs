//! The trigger side of scheduling: tokio-cron-scheduler fires, the store decides.
//!
//! The cron library keeps nothing we need to survive a restart: due times live in the
//! store. Here it drives the heartbeat that `/readyz`, the heartbeat metric and the
//! systemd watchdog all follow — if this loop stalls, the watchdog stops being fed.

use crate::clock::Clock;
use crate::http::Heartbeat;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

/// How often the scheduler proves it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

pub struct Scheduler {
    inner: JobScheduler,
}

impl Scheduler {
    /// Starts the scheduler with its heartbeat job; beats once immediately.
    pub async fn start(
        clock: Arc<dyn Clock>,
        heartbeat: Arc<Heartbeat>,
        metrics: Arc<Metrics>,
    ) -> Result<Scheduler, JobSchedulerError> {
        let beat = move || {
            let now = clock.now();
            heartbeat.beat(now);
            metrics.set_heartbeat(now);
        };
        beat();
        let inner = JobScheduler::new().await?;
        let job = Job::new_repeated_async(HEARTBEAT_INTERVAL, move |_id, _scheduler| {
            beat();
            Box::pin(async {})
        })?;
        inner.add(job).await?;
        inner.start().await?;
        Ok(Scheduler { inner })
    }

    pub async fn shutdown(mut self) {
        if let Err(error) = self.inner.shutdown().await {
            tracing::warn!(%error, "scheduler did not shut down cleanly");
        }
    }
}
