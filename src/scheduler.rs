//! The heartbeat that `/readyz`, the heartbeat metric and the systemd watchdog all follow:
//! if this loop stalls, the watchdog stops being fed.
//!
//! Due times live in the store and each credential's task sleeps until its own (see
//! `rotation` and `checks`); nothing here fires rotations.
//!
//! Why a plain tokio interval and not tokio-cron-scheduler (which drove this beat before):
//! its tick loop wakes every 500 ms whatever is scheduled (a hard-coded sleep in 0.15), so an
//! idle daemon woke 120 times a minute to fire one job every 10 s. The interval wakes the
//! process only when the beat is due: 6 times a minute.

use crate::clock::Clock;
use crate::http::Heartbeat;
use crate::metrics::Metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// How often the scheduler proves it is alive.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

pub struct Scheduler {
    beating: JoinHandle<()>,
}

impl Scheduler {
    /// Starts the heartbeat; beats once immediately, then every [`HEARTBEAT_INTERVAL`].
    pub fn start(
        clock: Arc<dyn Clock>,
        heartbeat: Arc<Heartbeat>,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        let beat = move || {
            let now = clock.now();
            heartbeat.beat(now);
            metrics.set_heartbeat(now);
        };
        beat();
        let beating = tokio::spawn(async move {
            let mut ticker =
                tokio::time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
            // After a stall (a suspended VM), beat once and go on; no burst of missed beats.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                beat();
            }
        });
        Scheduler { beating }
    }

    pub async fn shutdown(self) {
        self.beating.abort();
        let _ = self.beating.await;
    }
}
