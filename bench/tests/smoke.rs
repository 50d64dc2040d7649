//! The benchmark harness (`bench/src`, `bench/run.sh`) at a tiny scale, so it cannot rot:
//! 50 credentials, a few scrapes, one sweep, two rotations, and every figure BENCHMARKS.md
//! reports comes out as a number; and the relay benchmark (`--relay`) with a few hundred
//! requests and twenty held streams.
//!
//! The daemon under test is the `keyrotd` binary of this workspace. Cargo gives a test the
//! path of its own package's binaries only (`CARGO_BIN_EXE_keyrotd-bench`), so the daemon is
//! found in the target directory this test was built in: a plain `cargo test` at the root
//! builds it in the same run. When it is not there yet (`cargo test -p keyrotd-bench` in a
//! fresh target directory), the test builds it with `cargo build -p keyrotd`. After changing
//! the daemon, `cargo test -p keyrotd-bench` alone measures the `keyrotd` last built: build
//! it first, or run the root `cargo test`. `KEYROTD_BIN=PATH` overrides the choice.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// `KEYROTD_BIN`, or the `keyrotd` in this test's target directory, built if missing.
fn keyrotd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYROTD_BIN") {
        return PathBuf::from(path);
    }
    // This test runs as <target>/<profile>/deps/smoke-<hash>; the binaries are in <profile>.
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under <target>/<profile>/deps");
    let keyrotd = profile_dir.join(format!("keyrotd{}", std::env::consts::EXE_SUFFIX));
    if !keyrotd.exists() {
        let target_dir = profile_dir.parent().expect("a target directory");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--package", "keyrotd", "--bin", "keyrotd"])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p keyrotd failed");
    }
    assert!(keyrotd.exists(), "no keyrotd at {}", keyrotd.display());
    keyrotd
}

#[test]
fn the_benchmark_harness_produces_numbers() {
    let keyrotd = keyrotd_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("bench.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyrotd-bench"));
    command
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
        .arg(&keyrotd)
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json);
    let out = output_unless_hung(&mut command);
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
}

#[test]
fn the_relay_benchmark_produces_numbers() {
    let keyrotd = keyrotd_binary();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("relay.json");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyrotd-bench"));
    command
        .args(["--relay", "--n", "2", "--fresh-checks"])
        .args(["--relay-rate", "500", "--relay-requests", "100"])
        .args(["--relay-connections", "4", "--relay-throughput-secs", "0.3"])
        .args(["--relay-sse-streams", "2", "--relay-sse-chunks", "5"])
        .args(["--relay-sse-interval-ms", "2", "--relay-streams", "20"])
        .arg("--keyrotd")
        .arg(&keyrotd)
        .arg("--dir")
        .arg(dir.path().join("work"))
        .arg("--json")
        .arg(&json);
    let out = output_unless_hung(&mut command);
    assert!(
        out.status.success(),
        "keyrotd-bench --relay failed:\n{}",
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
    // Every request answered, through the relay and direct, and each timed.
    assert_eq!(number("/relay/latency/failed"), 0.0);
    assert_eq!(number("/relay/latency/relay/count"), 100.0);
    assert_eq!(number("/relay/latency/direct/count"), 100.0);
    assert!(number("/relay/latency/relay/p50_us") > 0.0);
    assert!(number("/relay/latency/relay/p99_us") >= number("/relay/latency/relay/p50_us"));
    assert!(number("/relay/latency/added_p50_us").is_finite());
    assert!(number("/relay/throughput/relay_per_second") > 0.0);
    assert!(number("/relay/throughput/direct_per_second") > 0.0);
    assert_eq!(number("/relay/throughput/relay_failed"), 0.0);
    assert!(number("/relay/throughput/daemon_cpu_us_per_request") >= 0.0);
    // Every event of every stream arrived, with its delay.
    assert_eq!(number("/relay/streaming/relay/count"), 10.0);
    assert_eq!(number("/relay/streaming/direct/count"), 10.0);
    assert!(number("/relay/streaming/relay/max_us") > 0.0);
    // The held streams all opened and ended cleanly, and the daemon's memory was read.
    assert_eq!(number("/relay/memory/failed"), 0.0);
    assert!(number("/relay/memory/rss_with_streams_kib") > 0.0);
    assert!(number("/relay/memory/rss_before_streams_kib") > 0.0);
}

/// How long the smoke run may take before the test calls it a hang. Not a judgement of its
/// speed: the benchmark measures speed, and a busy machine only makes the run longer.
const HANG_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `command` to completion, killing it (and so failing the test) if it hangs.
fn output_unless_hung(command: &mut Command) -> std::process::Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("keyrotd-bench runs");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = finished.recv_timeout(HANG_TIMEOUT).is_err();
        if hung {
            // Still our child: it is reaped only by wait_with_output below.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        hung
    });
    let out = child.wait_with_output().expect("wait for keyrotd-bench");
    let _ = done.send(());
    let hung = watchdog.join().expect("watchdog");
    assert!(
        !hung,
        "keyrotd-bench still running after {HANG_TIMEOUT:?}: killed"
    );
    out
}
