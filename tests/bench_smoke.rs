//! The benchmark harness (`src/bin/keyrotd-bench.rs`, `bench/run.sh`) at a tiny scale, so it
//! cannot rot: 50 credentials, a few scrapes, one sweep, two rotations, and every figure
//! BENCHMARKS.md reports comes out as a number.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_benchmark_harness_produces_numbers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keyrotd-bench"))
        .args(["--n", "50", "--scrapes", "5", "--latency-ms", "5"])
        .args([
            "--concurrency",
            "16",
            "--rotations",
            "2",
            "--rotation-parallel",
            "2",
        ])
        .args(["--idle-secs", "1", "--fresh-checks"])
        .arg("--keyrotd")
        .arg(env!("CARGO_BIN_EXE_keyrotd"))
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json)
        .output()
        .expect("keyrotd-bench runs");
    assert!(
        out.status.success(),
        "keyrotd-bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("results written"))
            .expect("results are JSON");
    let number = |pointer: &str| {
        results
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("{pointer} missing in {results:#}"))
    };
    assert!(number("/daemon/ready_ms") > 0.0);
    assert!(number("/daemon/idle/rss_kib") > 0.0);
    // Resident memory split into heap and mapped files, and the two peaks reported apart.
    assert!(number("/daemon/idle/rss_anon_kib") > 0.0);
    assert!(number("/daemon/idle/rss_file_kib") > 0.0);
    assert!(number("/daemon/peak_rss_to_ready_kib") >= number("/daemon/rss_at_ready_kib"));
    assert!(number("/daemon/startup_sweep/peak_rss_kib") > 0.0);
    assert!(number("/daemon/idle/context_switches_per_minute") >= 0.0);
    assert!(number("/daemon/scrape/p50_ms") > 0.0);
    assert!(number("/daemon/scrape/p99_ms") >= number("/daemon/scrape/p50_ms"));
    // 14 series per credential (age, created, expiry, expires in, valid, 5 statuses, last
    // check, failures, 2 rotation results) plus the process's own.
    assert!(number("/daemon/scrape/series") >= 50.0 * 14.0);
    // Scraped as Prometheus does (gzip), and as text.
    assert_eq!(
        results.pointer("/daemon/scrape/content_encoding"),
        Some(&serde_json::json!("gzip"))
    );
    assert!(number("/daemon/scrape/wire_bytes") < number("/daemon/scrape/bytes"));
    assert_eq!(
        results.pointer("/daemon/scrape/identity/content_encoding"),
        Some(&serde_json::json!("identity"))
    );
    assert_eq!(
        number("/daemon/scrape/identity/wire_bytes"),
        number("/daemon/scrape/identity/bytes")
    );
    assert!(number("/daemon/scrape/identity/p50_ms") > 0.0);
    assert_eq!(
        number("/daemon/scrape/identity/series"),
        number("/daemon/scrape/series")
    );
    assert_eq!(number("/sweep/checks"), 50.0);
    assert!(number("/sweep/wall_s") > 0.0);
    assert!(number("/sweep/ratio_to_bound") > 0.0);
    assert!(number("/rotation/sequential/per_second") > 0.0);
    assert!(number("/rotation/parallel/per_second") > 0.0);
    assert!(number("/rotation/sequential/write_transactions_per_rotation") >= 1.0);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the smoke run took {:?}",
        started.elapsed()
    );
}
