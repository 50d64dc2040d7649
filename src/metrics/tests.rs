//! The per-key text against the prometheus crate's own encoder, the caches, and the gzip
//! stream a scrape is served as.

use super::gzip::{Chunk, RENDER_BUFFER};
use super::per_key::{ClockedFamily, KeyFamily, KeyState};
use super::*;
use crate::clock::ManualClock;
use crate::model::{CheckStatus, Stage, UnixTime};
use crate::store::{CredentialRecord, CredentialState, KeyVersion, Snapshot};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;
use std::io::Read;

/// The reference's own reading of a usage entry's unit, so a change to the encoding shows.
fn keyrotd_usage(unit: &str) -> Option<(&str, &str)> {
    unit.split_once('/')
}

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
        revocations: crate::store::Revocations {
            succeeded: 2,
            failed: 5,
            retired_locally: 1,
            past_grace: 1,
            failing_since: Some(150),
        },
        credits: if credits {
            vec![
                ("usd".into(), 12.5),
                (crate::model::usage_unit("usd", "daily"), 0.75),
                (crate::model::usage_unit("usd", "monthly"), 30.0),
            ]
        } else {
            Vec::new()
        },
        needs_attention: checked,
    }
}

/// What the prometheus crate's encoder makes of the same series, one sample per line.
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
            ClockedFamily::Age.name(),
            g,
            vec![(base(), (now - key.created_at) as f64)],
        );
        push(
            KeyFamily::Created.name(),
            g,
            vec![(base(), key.created_at as f64)],
        );
        if let Some(e) = key.expires_at {
            push(KeyFamily::Expiry.name(), g, vec![(base(), e as f64)]);
            push(
                ClockedFamily::ExpiresIn.name(),
                g,
                vec![(base(), (e - now) as f64)],
            );
        }
        if let Some(v) = c.valid {
            push(KeyFamily::Valid.name(), g, vec![(base(), v as i64 as f64)]);
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
            push(KeyFamily::CheckStatus.name(), g, samples);
        }
        if let Some(at) = c.last_check_at {
            push(KeyFamily::LastCheck.name(), g, vec![(base(), at as f64)]);
        }
        if let Some(at) = c.next_rotation_at {
            push(KeyFamily::NextRotation.name(), g, vec![(base(), at as f64)]);
        }
        if let Some(at) = c.last_rotated_at {
            push(KeyFamily::LastRotation.name(), g, vec![(base(), at as f64)]);
        }
        push(
            KeyFamily::ConsecutiveFailures.name(),
            g,
            vec![(base(), c.consecutive_failures as f64)],
        );
        for (unit, value) in &s.credits {
            let mut l = base();
            match keyrotd_usage(unit) {
                Some((unit, period)) => {
                    l.push(label("period", period));
                    l.push(label("unit", unit));
                    push(KeyFamily::Usage.name(), g, vec![(l, *value)]);
                }
                None => {
                    l.push(label("unit", unit));
                    push(KeyFamily::CreditRemaining.name(), g, vec![(l, *value)]);
                }
            }
        }
        let mut ok = base();
        ok.push(label("result", "success"));
        let mut failed = base();
        failed.push(label("result", "failure"));
        push(
            KeyFamily::RotationsTotal.name(),
            MetricType::COUNTER,
            vec![
                (ok, s.rotations_succeeded as f64),
                (failed, s.rotations_failed as f64),
            ],
        );
        let r = &s.revocations;
        let samples = [
            ("success", r.succeeded),
            ("failure", r.failed),
            ("retired_locally", r.retired_locally),
        ]
        .into_iter()
        .map(|(result, count)| {
            let mut l = base();
            l.push(label("result", result));
            (l, count as f64)
        })
        .collect();
        push(
            KeyFamily::RevocationsTotal.name(),
            MetricType::COUNTER,
            samples,
        );
        push(
            KeyFamily::PreviousKeysPastGrace.name(),
            g,
            vec![(base(), r.past_grace as f64)],
        );
        push(
            KeyFamily::NeedsAttention.name(),
            g,
            vec![(base(), f64::from(u8::from(s.needs_attention)))],
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

fn metrics(clock: &ManualClock) -> Metrics {
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(clock.clone());
    Metrics::new(clock.clone(), Arc::new(Heartbeat::new(clock)))
}

/// The gzip stream of a scrape in one buffer: what a gzip response carries.
fn gzip_body(exposition: &Exposition) -> Vec<u8> {
    exposition.gzip_parts().concat()
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
    let metrics = metrics(&clock);
    *metrics.keys() = KeyState::render(&snapshot);
    for now in [1_000, 1_001, 2_500] {
        clock.set(now);
        let text = metrics.render();
        let mut ours: Vec<String> = text
            .lines()
            .filter(|l| {
                [
                    "keyrotd_key_",
                    "keyrotd_rotation",
                    "keyrotd_revocation",
                    "keyrotd_previous_keys",
                ]
                .iter()
                .any(|prefix| l.starts_with(prefix))
            })
            .map(str::to_string)
            .collect();
        ours.sort();
        assert_eq!(ours, reference(&snapshot, now), "at {now}");
        // Every family has exactly one HELP and one TYPE line.
        let names = KeyFamily::ALL
            .iter()
            .map(|f| f.name())
            .chain(ClockedFamily::ALL.iter().map(|f| f.name()));
        for name in names {
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
    let mut keys = KeyState::render(&snapshot);
    let first = keys.timed(50);
    let again = keys.timed(50);
    assert_eq!(
        first.deflate().as_ptr(),
        again.deflate().as_ptr(),
        "same second: the cached chunk"
    );
    let later = keys.timed(51);
    assert_ne!(first.deflate(), later.deflate());
}

#[test]
fn a_scrape_is_one_gzip_member_of_the_text_exposition() {
    // Enough credentials that every chunk spans several render buffers.
    let credentials: Vec<CredentialState> = (0..3_000)
        .map(|i| state(&format!("cred-{i:05}"), i % 3 != 0, i % 7 == 0))
        .collect();
    let snapshot = Snapshot {
        generation: 9,
        credentials,
    };
    let clock = ManualClock::new(1_500);
    let metrics = metrics(&clock);
    *metrics.keys() = KeyState::render(&snapshot);
    let exposition = metrics.exposition();
    assert_eq!(exposition.chunks().len(), 3, "registry, clocked, fixed");
    assert!(exposition.chunks().iter().all(|c| !c.is_empty()));
    assert!(
        exposition.chunks()[2].text_len() > 4 * RENDER_BUFFER as u64,
        "the fixed chunk spans several buffers"
    );
    let gzip = gzip_body(&exposition);
    assert_eq!(gzip.len() as u64, exposition.gzip_len());

    // A single-member reader (as curl and Go's gzip reader are) reads all of it.
    let mut single = String::new();
    flate2::read::GzDecoder::new(&gzip[..])
        .read_to_string(&mut single)
        .unwrap();
    assert_eq!(single.len() as u64, exposition.text_len());
    // It is one member: nothing follows it.
    let mut decoder = flate2::bufread::GzDecoder::new(&gzip[..]);
    std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
    assert!(
        decoder.into_inner().is_empty(),
        "bytes after the first member"
    );
    // Each chunk's text, in order, is the whole text.
    let mut offset = 0;
    for chunk in exposition.chunks() {
        let part = Exposition::new(vec![chunk.clone()]).to_text();
        assert_eq!(part.len() as u64, chunk.text_len());
        assert_eq!(&single[offset..offset + part.len()], part);
        offset += part.len();
    }
    // What the identity path streams.
    assert_eq!(exposition.to_text(), single);
    // And it is compressed: far smaller than the text.
    assert!(exposition.gzip_len() * 8 < exposition.text_len());

    // Every sample line against the prometheus crate's encoder.
    let mut ours: Vec<String> = single
        .lines()
        .filter(|l| {
            [
                "keyrotd_key_",
                "keyrotd_rotation",
                "keyrotd_revocation",
                "keyrotd_previous_keys",
            ]
            .iter()
            .any(|prefix| l.starts_with(prefix))
        })
        .map(str::to_string)
        .collect();
    ours.sort();
    let expected = reference(&snapshot, 1_500);
    assert_eq!(ours.len(), expected.len());
    assert!(ours == expected, "sample lines differ from the encoder's");
}

#[test]
fn the_heartbeat_gauge_reads_the_heartbeat() {
    let clock = ManualClock::new(1_234);
    let heartbeat = Arc::new(Heartbeat::new(Arc::new(clock.clone())));
    let metrics = Metrics::new(Arc::new(clock.clone()), heartbeat.clone());
    let gauge = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("keyrotd_scheduler_heartbeat_timestamp_seconds "))
            .map(str::to_string)
    };
    assert_eq!(gauge(&metrics.render()).as_deref(), Some("0"));
    heartbeat.beat();
    assert_eq!(gauge(&metrics.render()).as_deref(), Some("1234"));
}

#[test]
fn an_empty_store_still_serves_the_registry() {
    let metrics = metrics(&ManualClock::new(5));
    *metrics.keys() = KeyState::render(&Snapshot {
        generation: 1,
        credentials: Vec::new(),
    });
    let exposition = metrics.exposition();
    let text = exposition.to_text();
    assert!(text.contains("keyrotd_build_info{"), "{text}");
    assert!(!text.contains("keyrotd_key_"), "{text}");
    assert_eq!(
        exposition.gzip_parts().len(),
        3,
        "header, the registry, trailer: empty chunks are not sent"
    );
    let mut single = String::new();
    flate2::read::GzDecoder::new(&gzip_body(&exposition)[..])
        .read_to_string(&mut single)
        .unwrap();
    assert_eq!(single, text);
}

/// The text, order included, is byte for byte the reference exposition in
/// `tests/data/exposition-3-credentials.txt`.
#[test]
fn the_text_is_unchanged_byte_for_byte() {
    let snapshot = Snapshot {
        generation: 4,
        credentials: vec![
            state("plain", true, true),
            state("we\\ird \"name\"\nhere", false, false),
            state("third", true, false),
        ],
    };
    let metrics = metrics(&ManualClock::new(1_000));
    *metrics.keys() = KeyState::render(&snapshot);
    let expected = include_str!("../../tests/data/exposition-3-credentials.txt").replace(
        "{version=\"VERSION\"}",
        &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
    );
    assert_eq!(metrics.render(), expected);
}

/// What a re-render after a change costs at 10,000 credentials (the render and the
/// compression, not the store's snapshot queries), and what each gzip level would cost:
/// `cargo test --release --lib -- --ignored render_cost --nocapture`.
#[test]
#[ignore = "a measurement, not a test"]
fn render_cost_at_10k() {
    let credentials: Vec<CredentialState> = (0..10_000)
        .map(|i| state(&format!("bench-{i:06}"), true, false))
        .collect();
    let snapshot = Snapshot {
        generation: 1,
        credentials,
    };
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let mut keys = KeyState::render(&snapshot);
        let fixed_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = std::time::Instant::now();
        let timed = keys.timed(1_000);
        let timed_ms = started.elapsed().as_secs_f64() * 1e3;
        let text = Exposition::new(vec![keys.fixed.clone()]).to_text();
        let started = std::time::Instant::now();
        let _ = Chunk::compress(text.as_bytes());
        let compress_ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "fixed: {} -> {} bytes in {fixed_ms:.1} ms (compressing alone {compress_ms:.1} ms); \
             clocked: {} -> {} bytes in {timed_ms:.1} ms",
            keys.fixed.text_len(),
            keys.fixed.deflate_len(),
            timed.text_len(),
            timed.deflate_len()
        );
        for level in 1..=4 {
            let started = std::time::Instant::now();
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
            for piece in text.as_bytes().chunks(RENDER_BUFFER) {
                std::io::Write::write_all(&mut encoder, piece).unwrap();
            }
            let gzip = encoder.finish().unwrap();
            let ms = started.elapsed().as_secs_f64() * 1e3;
            let started = std::time::Instant::now();
            let mut back = Vec::with_capacity(text.len());
            flate2::read::GzDecoder::new(&gzip[..])
                .read_to_end(&mut back)
                .unwrap();
            let inflate_ms = started.elapsed().as_secs_f64() * 1e3;
            println!(
                "  level {level}: {} bytes, compress {ms:.1} ms, decompress {inflate_ms:.1} ms",
                gzip.len()
            );
        }
    }
}
