//! Prometheus metrics. Per-key state is rendered from a snapshot of the store, so a removed
//! credential leaves no stale series and the CLI, which writes the same store, shows up on
//! the next scrape without the daemon being told.
//!
//! Process-level series (build info, heartbeat, provider request counters) are ordinary
//! registered metrics, encoded on every scrape (a handful of series).
//!
//! The per-key families are the bulk of a scrape (15 series per credential: 11 MB of text
//! at 10,000 credentials), so they are not re-encoded per scrape. They are written straight
//! to text (no protobuf model, no per-label allocations) and cached:
//!
//! - the families that depend only on the store ([`KeyStateText::fixed`]) are rendered once
//!   per store generation;
//! - `keyrotd_key_age_seconds` and `keyrotd_key_expires_in_seconds`, which move with the
//!   clock, are rendered at most once per second from a compact per-key table kept with the
//!   generation.
//!
//! A scrape of an unchanged store is then: one `SELECT` of the generation, the small
//! registry, and the cached text handed to the response as shared `Bytes` (no copy).

use crate::clock::Clock;
use crate::model::{CheckStatus, UnixTime};
use crate::store::{Snapshot, Store, StoreResult};
use bytes::Bytes;
use prometheus::proto::MetricType;
use prometheus::{Encoder, Registry, TextEncoder};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

pub const NAMESPACE: &str = "keyrotd";

/// The registry and the per-key state of one daemon.
pub struct Metrics {
    registry: Registry,
    keys: Mutex<KeyStateText>,
    /// Serialises re-reads of the store, so a burst of scrapes after a change reads it once.
    refreshing: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
    heartbeat: prometheus::Gauge,
}

/// One rendered scrape: the pieces of the body, in order (shared, not copied).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub chunks: Vec<Bytes>,
}

impl Exposition {
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole body as one string (tests, tools).
    pub fn to_text(&self) -> String {
        let mut text = String::with_capacity(self.len());
        for chunk in &self.chunks {
            text.push_str(std::str::from_utf8(chunk).expect("the text format is UTF-8"));
        }
        text
    }
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
        Metrics {
            registry,
            keys: Mutex::new(KeyStateText::default()),
            refreshing: tokio::sync::Mutex::new(()),
            clock,
            heartbeat,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn set_heartbeat(&self, at: i64) {
        self.heartbeat.set(at as f64);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, KeyStateText> {
        // A panic while holding this lock cannot leave the cache half-written: it is
        // replaced whole.
        self.keys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the store when it changed since the last scrape.
    pub async fn refresh(&self, store: &dyn Store) -> StoreResult<()> {
        let generation = store.generation().await?;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        let _turn = self.refreshing.lock().await;
        if self.keys().generation == Some(generation) {
            return Ok(());
        }
        let snapshot = store.snapshot().await?;
        let rendered = KeyStateText::render(&snapshot);
        *self.keys() = rendered;
        Ok(())
    }

    /// The text exposition of every metric, as chunks to send in order.
    pub fn exposition(&self) -> Exposition {
        let families = self.registry.gather();
        let mut process = Vec::with_capacity(4 * 1024);
        TextEncoder::new()
            .encode(&families, &mut process)
            .expect("text encoding into a Vec cannot fail");
        let now = self.clock.now();
        let (timed, fixed) = {
            let mut keys = self.keys();
            (keys.timed(now), keys.fixed.clone())
        };
        Exposition {
            chunks: vec![Bytes::from(process), timed, fixed],
        }
    }

    /// The text exposition of every metric as one string.
    pub fn render(&self) -> String {
        self.exposition().to_text()
    }
}

/// The per-key families as text, for one store generation.
#[derive(Debug, Default)]
struct KeyStateText {
    generation: Option<i64>,
    /// Every per-key family that does not move with the clock.
    fixed: Bytes,
    /// What the clock-dependent families are computed from.
    clocked: Vec<ClockedKey>,
    /// The clock-dependent families, rendered for the second in `.0`.
    timed: Option<(UnixTime, Bytes)>,
}

/// A credential's current key, for `keyrotd_key_age_seconds` and
/// `keyrotd_key_expires_in_seconds`.
#[derive(Debug)]
struct ClockedKey {
    /// `{credential="..",provider=".."}`, escaped.
    labels: Box<str>,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
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

const AGE: usize = 0;
const CREATED: usize = 1;
const EXPIRY: usize = 2;
const EXPIRES_IN: usize = 3;
const VALID: usize = 4;
const CHECK_STATUS: usize = 5;
const LAST_CHECK: usize = 6;
const NEXT_ROTATION: usize = 7;
const LAST_ROTATION: usize = 8;
const FAILURES: usize = 9;
const CREDIT: usize = 10;
const ROTATIONS_TOTAL: (&str, &str) = (
    "keyrotd_rotations_total",
    "Finished rotations by result (success or failure).",
);

impl KeyStateText {
    /// Renders the store-only families of `snapshot` and keeps what the clocked ones need.
    fn render(snapshot: &Snapshot) -> KeyStateText {
        let credentials = &snapshot.credentials;
        // One buffer per family, filled in one pass over the credentials.
        let mut per_family: Vec<String> = vec![String::new(); FAMILIES.len()];
        let mut rotations = String::new();
        let mut clocked = Vec::with_capacity(credentials.len());
        for state in credentials {
            let c = &state.credential;
            let mut labels = String::with_capacity(c.name.len() + c.provider.len() + 28);
            labels.push_str("{credential=\"");
            escape_label(&mut labels, &c.name);
            labels.push_str("\",provider=\"");
            escape_label(&mut labels, &c.provider);
            labels.push('"');
            // `labels` lacks its closing brace so extra labels can follow.
            let mut line = |index: usize, value: Value| {
                let out = &mut per_family[index];
                sample(out, FAMILIES[index].0, &labels, None, value);
            };
            if let Some(key) = &state.current {
                line(CREATED, Value::Int(key.created_at));
                if let Some(expires) = key.expires_at {
                    line(EXPIRY, Value::Int(expires));
                }
                if let Some(valid) = c.valid {
                    line(VALID, Value::Int(valid as i64));
                }
                if let Some(at) = c.last_check_at {
                    line(LAST_CHECK, Value::Int(at));
                }
            }
            if let Some(at) = c.next_rotation_at {
                line(NEXT_ROTATION, Value::Int(at));
            }
            if let Some(at) = c.last_rotated_at {
                line(LAST_ROTATION, Value::Int(at));
            }
            line(FAILURES, Value::Int(c.consecutive_failures));
            for (unit, remaining) in &state.credits {
                let out = &mut per_family[CREDIT];
                sample(
                    out,
                    FAMILIES[CREDIT].0,
                    &labels,
                    Some(("unit", unit)),
                    Value::Float(*remaining),
                );
            }
            if let (Some(status), Some(_)) = (c.check_status, &state.current) {
                for candidate in CheckStatus::ALL {
                    sample(
                        &mut per_family[CHECK_STATUS],
                        FAMILIES[CHECK_STATUS].0,
                        &labels,
                        Some(("status", candidate.as_str())),
                        Value::Int((candidate == status) as i64),
                    );
                }
            }
            for (result, count) in [
                ("success", state.rotations_succeeded),
                ("failure", state.rotations_failed),
            ] {
                sample(
                    &mut rotations,
                    ROTATIONS_TOTAL.0,
                    &labels,
                    Some(("result", result)),
                    Value::Int(count as i64),
                );
            }
            if let Some(key) = &state.current {
                labels.push('}');
                clocked.push(ClockedKey {
                    labels: labels.into_boxed_str(),
                    created_at: key.created_at,
                    expires_at: key.expires_at,
                });
            }
        }
        let mut fixed = String::with_capacity(
            per_family.iter().map(String::len).sum::<usize>() + rotations.len() + 4096,
        );
        for (index, text) in per_family.iter().enumerate() {
            if index != AGE && index != EXPIRES_IN && !text.is_empty() {
                header(&mut fixed, FAMILIES[index].0, FAMILIES[index].1, "gauge");
                fixed.push_str(text);
            }
        }
        if !rotations.is_empty() {
            header(&mut fixed, ROTATIONS_TOTAL.0, ROTATIONS_TOTAL.1, "counter");
            fixed.push_str(&rotations);
        }
        KeyStateText {
            generation: Some(snapshot.generation),
            fixed: Bytes::from(fixed),
            clocked,
            timed: None,
        }
    }

    /// The clock-dependent families at `now`, rendered at most once per second.
    fn timed(&mut self, now: UnixTime) -> Bytes {
        if let Some((at, text)) = &self.timed {
            if *at == now {
                return text.clone();
            }
        }
        let mut age = String::with_capacity(self.clocked.len() * 72 + 256);
        let mut expires_in = String::new();
        for key in &self.clocked {
            let (name, _, _, _) = FAMILIES[AGE];
            line_closed(&mut age, name, &key.labels, (now - key.created_at).max(0));
            if let Some(expires) = key.expires_at {
                let (name, _, _, _) = FAMILIES[EXPIRES_IN];
                line_closed(&mut expires_in, name, &key.labels, expires - now);
            }
        }
        let mut text = String::with_capacity(age.len() + expires_in.len() + 512);
        if !age.is_empty() {
            header(&mut text, FAMILIES[AGE].0, FAMILIES[AGE].1, "gauge");
            text.push_str(&age);
        }
        if !expires_in.is_empty() {
            header(
                &mut text,
                FAMILIES[EXPIRES_IN].0,
                FAMILIES[EXPIRES_IN].1,
                "gauge",
            );
            text.push_str(&expires_in);
        }
        let text = Bytes::from(text);
        self.timed = Some((now, text.clone()));
        text
    }
}

/// A sample value: integers print without going through `f64`, floats as the prometheus
/// crate prints them.
enum Value {
    Int(i64),
    Float(f64),
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    // Help texts are constants without backslashes or newlines.
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// `name{labels[,extra="v"]} value\n`; `labels` is `{credential="..",provider=".."` (open).
fn sample(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, value: Value) {
    out.push_str(name);
    out.push_str(labels);
    if let Some((label, v)) = extra {
        out.push(',');
        out.push_str(label);
        out.push_str("=\"");
        escape_label(out, v);
        out.push('"');
    }
    out.push_str("} ");
    match value {
        Value::Int(v) => write!(out, "{v}").expect("writing to a String cannot fail"),
        Value::Float(v) => write!(out, "{v}").expect("writing to a String cannot fail"),
    }
    out.push('\n');
}

/// `name{labels} value\n` with closed `labels`.
fn line_closed(out: &mut String, name: &str, labels: &str, value: i64) {
    out.push_str(name);
    out.push_str(labels);
    out.push(' ');
    write!(out, "{value}").expect("writing to a String cannot fail");
    out.push('\n');
}

/// Escapes a label value as the text format requires: `\`, `"` and newline.
fn escape_label(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::model::Stage;
    use crate::store::{CredentialRecord, CredentialState, KeyVersion};
    use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily};

    fn state(name: &str, checked: bool, credits: bool) -> CredentialState {
        CredentialState {
            credential: CredentialRecord {
                id: 1,
                name: name.into(),
                provider: "or".into(),
                provider_kind: "openrouter".into(),
                created_at: 10,
                removed_at: None,
                next_rotation_at: Some(5_000),
                last_rotated_at: checked.then_some(900),
                consecutive_failures: 2,
                check_status: checked.then_some(CheckStatus::Exhausted),
                valid: checked.then_some(true),
                last_check_at: checked.then_some(950),
                check_detail: None,
            },
            current: Some(KeyVersion {
                id: 7,
                credential: name.into(),
                stage: Stage::Current,
                fingerprint: "abcd".into(),
                provider_key_id: None,
                rotation_id: None,
                created_at: 100,
                expires_at: checked.then_some(2_000),
                stage_changed_at: 100,
                last_check_at: None,
                last_check_status: None,
                has_secret: true,
            }),
            rotations_succeeded: 3,
            rotations_failed: 1,
            credits: if credits {
                vec![("usd".into(), 12.5)]
            } else {
                Vec::new()
            },
        }
    }

    /// What the prometheus crate's encoder makes of the same series (the collector this
    /// module used before the text cache), one sample per line.
    fn reference(snapshot: &Snapshot, now: UnixTime) -> Vec<String> {
        let label = |name: &str, value: &str| {
            let mut pair = LabelPair::default();
            pair.set_name(name.into());
            pair.set_value(value.into());
            pair
        };
        let mut families = Vec::new();
        let mut push = |name: &str, kind: MetricType, samples: Vec<(Vec<LabelPair>, f64)>| {
            let metrics = samples
                .into_iter()
                .map(|(labels, value)| {
                    let mut metric = if kind == MetricType::GAUGE {
                        let mut gauge = Gauge::default();
                        gauge.set_value(value);
                        Metric::from_gauge(gauge)
                    } else {
                        let mut counter = prometheus::proto::Counter::default();
                        counter.set_value(value);
                        let mut metric = Metric::default();
                        metric.set_counter(counter);
                        metric
                    };
                    metric.set_label(labels);
                    metric
                })
                .collect();
            let mut family = MetricFamily::default();
            family.set_name(name.into());
            family.set_help("h".into());
            family.set_field_type(kind);
            family.set_metric(metrics);
            families.push(family);
        };
        for s in &snapshot.credentials {
            let c = &s.credential;
            let base = || vec![label("credential", &c.name), label("provider", &c.provider)];
            let key = s.current.as_ref().unwrap();
            let g = MetricType::GAUGE;
            push(
                FAMILIES[AGE].0,
                g,
                vec![(base(), (now - key.created_at) as f64)],
            );
            push(
                FAMILIES[CREATED].0,
                g,
                vec![(base(), key.created_at as f64)],
            );
            if let Some(e) = key.expires_at {
                push(FAMILIES[EXPIRY].0, g, vec![(base(), e as f64)]);
                push(FAMILIES[EXPIRES_IN].0, g, vec![(base(), (e - now) as f64)]);
            }
            if let Some(v) = c.valid {
                push(FAMILIES[VALID].0, g, vec![(base(), v as i64 as f64)]);
            }
            if let Some(status) = c.check_status {
                let samples = CheckStatus::ALL
                    .iter()
                    .map(|s| {
                        let mut l = base();
                        l.push(label("status", s.as_str()));
                        (l, (*s == status) as i64 as f64)
                    })
                    .collect();
                push(FAMILIES[CHECK_STATUS].0, g, samples);
            }
            if let Some(at) = c.last_check_at {
                push(FAMILIES[LAST_CHECK].0, g, vec![(base(), at as f64)]);
            }
            if let Some(at) = c.next_rotation_at {
                push(FAMILIES[NEXT_ROTATION].0, g, vec![(base(), at as f64)]);
            }
            if let Some(at) = c.last_rotated_at {
                push(FAMILIES[LAST_ROTATION].0, g, vec![(base(), at as f64)]);
            }
            push(
                FAMILIES[FAILURES].0,
                g,
                vec![(base(), c.consecutive_failures as f64)],
            );
            for (unit, remaining) in &s.credits {
                let mut l = base();
                l.push(label("unit", unit));
                push(FAMILIES[CREDIT].0, g, vec![(l, *remaining)]);
            }
            let mut ok = base();
            ok.push(label("result", "success"));
            let mut failed = base();
            failed.push(label("result", "failure"));
            push(
                ROTATIONS_TOTAL.0,
                MetricType::COUNTER,
                vec![
                    (ok, s.rotations_succeeded as f64),
                    (failed, s.rotations_failed as f64),
                ],
            );
        }
        let text = TextEncoder::new().encode_to_string(&families).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn cached_text_matches_the_prometheus_encoder() {
        let snapshot = Snapshot {
            generation: 4,
            credentials: vec![
                state("plain", true, true),
                state("we\\ird \"name\"\nhere", false, false),
            ],
        };
        let clock = ManualClock::new(1_000);
        let metrics = Metrics::new(Arc::new(clock.clone()));
        *metrics.keys() = KeyStateText::render(&snapshot);
        for now in [1_000, 1_001, 2_500] {
            clock.set(now);
            let text = metrics.render();
            let mut ours: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("keyrotd_key_") || l.starts_with("keyrotd_rotation"))
                .map(str::to_string)
                .collect();
            ours.sort();
            assert_eq!(ours, reference(&snapshot, now), "at {now}");
            // Every family has exactly one HELP and one TYPE line.
            for (name, ..) in FAMILIES {
                assert!(
                    text.matches(&format!("# TYPE {name} ")).count() <= 1,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn the_clocked_families_are_rendered_once_per_second() {
        let snapshot = Snapshot {
            generation: 1,
            credentials: vec![state("a", true, false)],
        };
        let mut keys = KeyStateText::render(&snapshot);
        let first = keys.timed(50);
        let again = keys.timed(50);
        assert_eq!(
            first.as_ptr(),
            again.as_ptr(),
            "same second: the cached text"
        );
        let later = keys.timed(51);
        assert_ne!(first, later);
    }
}
