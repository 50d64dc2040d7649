//! The process-level series: build info, the heartbeat, and whatever other modules register
//! (the provider request counters). They are a handful of series, so they live in an
//! ordinary prometheus `Registry` and are encoded and compressed on every scrape.

use super::gzip::Chunk;
use crate::heartbeat::Heartbeat;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};
use std::sync::Arc;

/// A registry with the series every daemon exports.
pub(crate) fn new_registry(heartbeat: Arc<Heartbeat>) -> Registry {
    let registry = Registry::new();
    let build_info = GaugeVec::new(
        Opts::new(
            "keyrotd_build_info",
            "A metric with a constant '1' value labeled by the version of keyrotd.",
        ),
        &["version"],
    )
    .expect("valid metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    registry
        .register(Box::new(build_info))
        .expect("registered once");
    registry
        .register(Box::new(HeartbeatGauge::new(heartbeat)))
        .expect("registered once");
    registry
}

/// The registry's series as one chunk.
pub(crate) fn encode(registry: &Registry) -> Chunk {
    let families = registry.gather();
    let mut text = Vec::with_capacity(4 * 1024);
    TextEncoder::new()
        .encode(&families, &mut text)
        .expect("text encoding into a Vec cannot fail");
    Chunk::compress(&text)
}

/// `keyrotd_scheduler_heartbeat_timestamp_seconds`, read from the heartbeat at each
/// scrape (0 before the first beat).
struct HeartbeatGauge {
    heartbeat: Arc<Heartbeat>,
    gauge: Gauge,
}

impl HeartbeatGauge {
    fn new(heartbeat: Arc<Heartbeat>) -> HeartbeatGauge {
        let gauge = Gauge::new(
            "keyrotd_scheduler_heartbeat_timestamp_seconds",
            "Unix time of the scheduler's last heartbeat; stale means the scheduler is stuck.",
        )
        .expect("valid metric");
        HeartbeatGauge { heartbeat, gauge }
    }
}

impl Collector for HeartbeatGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge.set(self.heartbeat.last() as f64);
        self.gauge.collect()
    }
}
