//! Prometheus metrics. Per-key state is rendered by a custom collector from a snapshot of
//! the store, so a removed credential leaves no stale series and the CLI, which writes the
//! same store, shows up on the next scrape without the daemon being told.
//!
//! Process-level series (build info, heartbeat, provider request counters) are ordinary
//! registered metrics.

use crate::clock::Clock;
use crate::model::CheckStatus;
use crate::store::{Snapshot, Store, StoreResult};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};
use std::sync::{Arc, Mutex};

pub const NAMESPACE: &str = "keyrotd";

/// The registry and the state collector of one daemon.
pub struct Metrics {
    registry: Registry,
    collector: KeyStateCollector,
    heartbeat: prometheus::Gauge,
}

impl Metrics {
    pub fn new(clock: Arc<dyn Clock>) -> Metrics {
        let registry = Registry::new();
        let build_info = prometheus::GaugeVec::new(
            prometheus::Opts::new(
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
        let heartbeat = prometheus::Gauge::new(
            "keyrotd_scheduler_heartbeat_timestamp_seconds",
            "Unix time of the scheduler's last heartbeat; stale means the scheduler is stuck.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(heartbeat.clone()))
            .expect("registered once");
        let collector = KeyStateCollector::new(clock);
        registry
            .register(Box::new(collector.clone()))
            .expect("registered once");
        Metrics {
            registry,
            collector,
            heartbeat,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_heartbeat(&self, at: i64) {
        self.heartbeat.set(at as f64);
    }

    /// Re-reads the store when it changed since the last scrape.
    pub async fn refresh(&self, store: &dyn Store) -> StoreResult<()> {
        let generation = store.generation().await?;
        if self.collector.generation() != Some(generation) {
            let snapshot = store.snapshot().await?;
            self.collector.replace(snapshot);
        }
        Ok(())
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        let mut buffer = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&families, &mut buffer)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

/// Renders per-credential gauges from the last store snapshot.
#[derive(Clone)]
pub struct KeyStateCollector {
    snapshot: Arc<Mutex<Option<Snapshot>>>,
    clock: Arc<dyn Clock>,
    descs: Arc<Vec<Desc>>,
}

/// (name, help, type, extra label) of every per-credential family.
const FAMILIES: &[(&str, &str, MetricType, Option<&str>)] = &[
    ("keyrotd_key_age_seconds", "Age of the current key in seconds.", MetricType::GAUGE, None),
    ("keyrotd_key_created_timestamp_seconds", "Unix time the current key was created.", MetricType::GAUGE, None),
    ("keyrotd_key_expiry_timestamp_seconds", "Unix time the current key expires (provider-reported or policy).", MetricType::GAUGE, None),
    ("keyrotd_key_expires_in_seconds", "Seconds until the current key expires; negative once expired.", MetricType::GAUGE, None),
    ("keyrotd_key_valid", "1 if the last conclusive check found the current key valid, 0 if invalid; absent until the first conclusive check.", MetricType::GAUGE, None),
    ("keyrotd_key_check_status", "One-hot status of the last check of the current key.", MetricType::GAUGE, Some("status")),
    ("keyrotd_key_last_check_timestamp_seconds", "Unix time of the last check attempt of the current key.", MetricType::GAUGE, None),
    ("keyrotd_key_next_rotation_timestamp_seconds", "Unix time the next rotation is due.", MetricType::GAUGE, None),
    ("keyrotd_key_last_rotation_timestamp_seconds", "Unix time of the last successful rotation.", MetricType::GAUGE, None),
    ("keyrotd_rotation_consecutive_failures", "Failed rotation attempts since the last success.", MetricType::GAUGE, None),
    ("keyrotd_key_credit_remaining", "Balance or limit remaining as reported by the provider, in `unit`.", MetricType::GAUGE, Some("unit")),
];

impl KeyStateCollector {
    fn new(clock: Arc<dyn Clock>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, _, extra)| {
                let mut labels = vec!["credential".to_string(), "provider".to_string()];
                labels.extend(extra.map(str::to_string));
                Desc::new(
                    name.to_string(),
                    help.to_string(),
                    labels,
                    Default::default(),
                )
                .expect("valid metric description")
            })
            .collect();
        KeyStateCollector {
            snapshot: Arc::new(Mutex::new(None)),
            clock,
            descs: Arc::new(descs),
        }
    }

    fn generation(&self) -> Option<i64> {
        self.lock().as_ref().map(|s| s.generation)
    }

    fn replace(&self, snapshot: Snapshot) {
        *self.lock() = Some(snapshot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Snapshot>> {
        // A panic while holding this lock cannot leave the snapshot half-written.
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_gauge(gauge);
    metric.set_label(labels);
    metric
}

pub(crate) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

pub(crate) fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::default();
    metric.set_counter(counter);
    metric.set_label(labels);
    metric
}

impl Collector for KeyStateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.clock.now();
        let guard = self.lock();
        let Some(snapshot) = guard.as_ref() else {
            return Vec::new();
        };
        let mut per_family: Vec<Vec<Metric>> = vec![Vec::new(); FAMILIES.len()];
        for state in &snapshot.credentials {
            let c = &state.credential;
            let base = || vec![label("credential", &c.name), label("provider", &c.provider)];
            let mut push = |index: usize, value: f64| per_family[index].push(gauge(base(), value));
            if let Some(key) = &state.current {
                push(0, (now - key.created_at).max(0) as f64);
                push(1, key.created_at as f64);
                if let Some(expires) = key.expires_at {
                    push(2, expires as f64);
                    push(3, (expires - now) as f64);
                }
                if let Some(valid) = c.valid {
                    push(4, if valid { 1.0 } else { 0.0 });
                }
                if let Some(at) = c.last_check_at {
                    push(6, at as f64);
                }
            }
            if let Some(at) = c.next_rotation_at {
                push(7, at as f64);
            }
            if let Some(at) = c.last_rotated_at {
                push(8, at as f64);
            }
            push(9, c.consecutive_failures as f64);
            for (unit, remaining) in &state.credits {
                let mut labels = base();
                labels.push(label("unit", unit));
                per_family[10].push(gauge(labels, *remaining));
            }
            if let (Some(status), Some(_)) = (c.check_status, &state.current) {
                for candidate in CheckStatus::ALL {
                    let mut labels = base();
                    labels.push(label("status", candidate.as_str()));
                    per_family[5].push(gauge(labels, if candidate == status { 1.0 } else { 0.0 }));
                }
            }
        }
        let rotations: Vec<Metric> = snapshot
            .credentials
            .iter()
            .flat_map(|state| {
                let c = &state.credential;
                [
                    ("success", state.rotations_succeeded),
                    ("failure", state.rotations_failed),
                ]
                .into_iter()
                .map(move |(result, count)| {
                    counter(
                        vec![
                            label("credential", &c.name),
                            label("provider", &c.provider),
                            label("result", result),
                        ],
                        count as f64,
                    )
                })
            })
            .collect();
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .zip(per_family)
            .filter(|(_, metrics)| !metrics.is_empty())
            .map(|((name, help, kind, _), metrics)| family(name, help, *kind, metrics))
            .collect();
        if !rotations.is_empty() {
            families.push(family(
                "keyrotd_rotations_total",
                "Finished rotations by result (success or failure).",
                MetricType::COUNTER,
                rotations,
            ));
        }
        families
    }
}
