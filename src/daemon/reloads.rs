//! The outcome of the last configuration reload, as Prometheus reports its own
//! (`prometheus_config_last_reload_successful`): a reload that failed leaves the old
//! configuration running, which is right, and silent, which is not; these gauges and the
//! `KeyrotdConfigReloadFailed` alert make it visible. Loading the config at start-up counts
//! as a successful load.

use crate::model::UnixTime;
use prometheus::{Gauge, IntGauge, Registry};

pub(super) struct ReloadGauges {
    successful: IntGauge,
    success_timestamp: Gauge,
}

impl ReloadGauges {
    /// Registers the gauges, with the start-up load (at `now`) as the last success.
    pub(super) fn register(registry: &Registry, now: UnixTime) -> prometheus::Result<Self> {
        let gauges = ReloadGauges {
            successful: IntGauge::new(
                "keyrotd_config_last_reload_successful",
                "1 if the last configuration reload (or the start-up load) succeeded, 0 if it failed and the previous configuration is still running.",
            )?,
            success_timestamp: Gauge::new(
                "keyrotd_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful configuration load (start-up or reload).",
            )?,
        };
        registry.register(Box::new(gauges.successful.clone()))?;
        registry.register(Box::new(gauges.success_timestamp.clone()))?;
        gauges.succeeded(now);
        Ok(gauges)
    }

    pub(super) fn succeeded(&self, now: UnixTime) {
        self.successful.set(1);
        self.success_timestamp.set(now as f64);
    }

    pub(super) fn failed(&self) {
        self.successful.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_reload_keeps_the_time_of_the_last_success() {
        let registry = Registry::new();
        let gauges = ReloadGauges::register(&registry, 1_000).unwrap();
        gauges.failed();
        assert_eq!(gauges.successful.get(), 0);
        assert_eq!(gauges.success_timestamp.get(), 1_000.0);
        gauges.succeeded(2_000);
        assert_eq!(gauges.successful.get(), 1);
        assert_eq!(gauges.success_timestamp.get(), 2_000.0);
    }
}
