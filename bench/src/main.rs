//! `keyrotd-bench`: the scale benchmarks behind `BENCHMARKS.md` (see `bench/run.sh`).
//!
//! A crate of its own in the workspace, so that building or installing the daemon never
//! builds the harness. It drives the `keyrotd` library through its public API (the store,
//! the rotation engine, the simulated provider) and measures the real `keyrotd` binary.
//!
//! One run at one scale (`--n` credentials):
//!
//! 1. **seed** ([`setup`]) a store with `n` credentials, each with a current key that was last
//!    checked 25 h ago, through the store's own API (on `/dev/shm` when it exists, so seeding
//!    does not wait for 2n fsyncs; the database is then copied to the on-disk work directory);
//! 2. **daemon** ([`daemon`]): start the real `keyrotd run` (checks every 24 h, so the overdue
//!    keys are checked once at start-up and then the daemon is idle) with a `NOTIFY_SOCKET`
//!    the harness listens on: time to `READY=1`, the start-up sweep, resident memory, then an
//!    idle window (CPU ticks and context switches of every thread = wake-ups), then sequential
//!    `GET /metrics` the way Prometheus scrapes ([`scrape`]; `Accept-Encoding: gzip`: p50/p99,
//!    bytes on the wire and decompressed, series), then more without `Accept-Encoding`
//!    (identity text, as curl or promtool read it);
//! 3. **python** ([`python`]): the same series served by `prometheus_client`
//!    (`bench/prom_exporter.py`), scraped the same way, when `--python` is given;
//! 4. **sweep** ([`sweep`]): `keyrotd check` (one check of every key) against the in-process
//!    simulator with `--latency-ms` added latency: wall time against
//!    `n × latency / concurrency`, and the CPU and peak memory of that process;
//! 5. **rotation** ([`rotation`]): the rotation engine in this process against the simulator,
//!    delivering to files, on the same (on-disk, `synchronous=FULL`) store: rotations per
//!    second, sequentially and with `--rotation-parallel` in flight, and where the time goes.
//!
//! With `--store-url postgres://…` (a server where the harness may create a database) every
//! phase runs on a PostgreSQL database instead of an SQLite file, and the daemon phase adds
//! a second replica: its scrape as a standby, and the failover when the leader is SIGKILLed.
//!
//! With `--relay`, none of these run: [`relay`] measures the relay instead (added latency,
//! throughput, SSE forwarding delay, memory with many open streams) against a local upstream,
//! over the `--n` credentials seeded the same way.
//!
//! Results are printed and written as JSON (`--json`).
//!
//! **Which `keyrotd` is measured.** `--keyrotd PATH`, or else the `keyrotd` next to this
//! executable: the workspace builds both packages into one target directory, so after
//! `cargo build --release -p keyrotd -p keyrotd-bench` (what `bench/run.sh` runs)
//! `target/release/keyrotd-bench` finds `target/release/keyrotd`. Cargo has no way to hand
//! one package's binary to another, so the smoke test (`bench/tests/smoke.rs`) looks for
//! `keyrotd` in its own target directory and passes it with `--keyrotd`.

mod daemon;
mod process;
mod python;
mod relay;
mod rotation;
mod scrape;
mod setup;
mod sweep;

use anyhow::{bail, Context};
use clap::Parser;
use keyrotd::simulator::Simulator;
use serde_json::{json, Value};
use std::path::PathBuf;

use crate::setup::Bench;

#[derive(Parser, Debug, Clone)]
#[command(about = "keyrotd benchmarks at scale (see BENCHMARKS.md)")]
struct Args {
    /// Credentials in the store.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// The keyrotd binary under test (default: `keyrotd` next to this binary).
    #[arg(long)]
    keyrotd: Option<PathBuf>,
    /// Sequential `GET /metrics` against the daemon with `Accept-Encoding: gzip`.
    #[arg(long, default_value_t = 100)]
    scrapes: usize,
    /// Sequential `GET /metrics` against the daemon without `Accept-Encoding` (identity).
    #[arg(long, default_value_t = 20)]
    identity_scrapes: usize,
    /// `bench/prom_exporter.py`: serve the same series with prometheus_client and scrape it.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Python interpreter for `--python`.
    #[arg(long, default_value = "python3")]
    python_bin: String,
    /// Sequential `GET /metrics` against the Python exporter with `Accept-Encoding: gzip`.
    #[arg(long, default_value_t = 20)]
    python_scrapes: usize,
    /// Sequential `GET /metrics` against the Python exporter without `Accept-Encoding`.
    #[arg(long, default_value_t = 3)]
    python_identity_scrapes: usize,
    /// Latency the simulated provider adds to every answer during the sweep.
    #[arg(long, default_value_t = 50)]
    latency_ms: u64,
    /// `[checks] max_concurrent`.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Rotations to run in each of the sequential and the parallel passes (0: skip).
    #[arg(long, default_value_t = 50)]
    rotations: usize,
    /// Rotations in flight at once in the parallel pass.
    #[arg(long, default_value_t = 8)]
    rotation_parallel: usize,
    /// Length of the idle window (CPU and wake-ups), seconds.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Also count `sched:sched_switch` with `perf stat` over the idle window.
    #[arg(long)]
    perf: bool,
    /// Seed every key as checked just now: the daemon starts idle and the start-up sweep is
    /// not measured (the smoke test; the start-up sweep spreads over up to 5 s).
    #[arg(long)]
    fresh_checks: bool,
    /// Pause after the start-up sweep for its last results to commit, ms.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// `NAME=VALUE` set for `keyrotd run` only (repeatable): the shipped unit's
    /// `Environment=` lines, so the daemon is measured as systemd runs it.
    #[arg(long, value_parser = parse_env_pair)]
    daemon_env: Vec<(String, String)>,
    /// Skip the `keyrotd check` sweep.
    #[arg(long)]
    skip_sweep: bool,
    /// Work directory (created; kept). Default: a temporary directory, removed at the end.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the relay benchmark instead of the scale phases: a `[relay]` route over the
    /// `--n` credentials to a local upstream, measured against that upstream called directly.
    #[arg(long)]
    relay: bool,
    /// Requests per second of the relay's added-latency measurement (open-loop).
    #[arg(long, default_value_t = 2000.0)]
    relay_rate: f64,
    /// Requests per target (direct, relay) of the added-latency measurement.
    #[arg(long, default_value_t = 20_000)]
    relay_requests: usize,
    /// Connections of the relay's throughput measurement.
    #[arg(long, default_value_t = 64)]
    relay_connections: usize,
    /// Length of each throughput measurement (direct, relay), seconds.
    #[arg(long, default_value_t = 10.0)]
    relay_throughput_secs: f64,
    /// SSE streams at once in the streaming measurement.
    #[arg(long, default_value_t = 20)]
    relay_sse_streams: usize,
    /// Events per SSE stream.
    #[arg(long, default_value_t = 100)]
    relay_sse_chunks: usize,
    /// Interval between a stream's events, ms.
    #[arg(long, default_value_t = 10)]
    relay_sse_interval_ms: u64,
    /// Streams held open through the relay for its resident memory.
    #[arg(long, default_value_t = 1000)]
    relay_streams: usize,
    /// Run on PostgreSQL: a server URL (e.g. `postgres://postgres@127.0.0.1:5432/postgres`)
    /// where the harness creates a scratch database, and drops it at the end.
    #[arg(long)]
    store_url: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keyrotd = keyrotd_under_test(&args)?;
    let temporary = match &args.dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("keyrotd-bench-")
                .tempdir_in(std::env::temp_dir())?,
        ),
    };
    let dir = match (&args.dir, &temporary) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        (None, Some(t)) => t.path().to_path_buf(),
        _ => unreachable!(),
    };
    let mut results = serde_json::Map::new();
    results.insert("n".into(), json!(args.n));
    results.insert("keyrotd".into(), json!(keyrotd.display().to_string()));

    let (simulator, _) = Simulator::start("127.0.0.1:0".parse()?).await?;
    let bench = Bench::set_up(&args, &dir, &keyrotd, &simulator).await?;
    results.insert("seed".into(), bench.seed.clone());
    eprintln!("seeded {} credentials: {}", args.n, bench.seed);
    results.insert(
        "store".into(),
        json!(if bench.postgres.is_some() {
            "postgres"
        } else {
            "sqlite"
        }),
    );
    let outcome = if args.relay {
        match bench.relay_phase(&args, &simulator).await {
            Ok(relay) => {
                results.insert("relay".into(), relay);
                Ok(())
            }
            Err(e) => Err(e),
        }
    } else {
        run_phases(&args, &bench, &simulator, &mut results).await
    };
    if let Some(pg) = &bench.postgres {
        pg.drop_database().await?;
    }
    outcome?;

    let results = Value::Object(results);
    println!("{}", serde_json::to_string_pretty(&results)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    simulator.shutdown().await;
    drop(temporary);
    Ok(())
}

/// `--keyrotd`, or the `keyrotd` built next to this executable.
fn keyrotd_under_test(args: &Args) -> anyhow::Result<PathBuf> {
    let keyrotd = match &args.keyrotd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("keyrotd"),
    };
    if !keyrotd.exists() {
        bail!(
            "keyrotd binary not found at {} (build the workspace, or pass --keyrotd)",
            keyrotd.display()
        );
    }
    Ok(keyrotd)
}

/// The daemon, then each phase that `args` asks for, each adding its figures to `results`.
async fn run_phases(
    args: &Args,
    bench: &Bench,
    simulator: &Simulator,
    results: &mut serde_json::Map<String, Value>,
) -> anyhow::Result<()> {
    let daemon = bench.daemon_phase(args, simulator).await?;
    eprintln!("daemon: {daemon:#}");
    results.insert("daemon".into(), daemon);

    if let Some(script) = &args.python {
        let python = bench.python_phase(args, script).await?;
        eprintln!("python: {python:#}");
        results.insert("python".into(), python);
    }
    if !args.skip_sweep {
        let sweep = bench.sweep_phase(args, simulator).await?;
        eprintln!("sweep: {sweep:#}");
        results.insert("sweep".into(), sweep);
    }
    if args.rotations > 0 {
        // A provider of its own: the orphan sweep lists every key the provider holds, and
        // listing every key seeded above would measure the simulator instead.
        let (issuer, _) = Simulator::start("127.0.0.1:0".parse()?).await?;
        std::fs::write(&bench.management_key, issuer.management_key())?;
        let rotation = bench.rotation_phase(args, &issuer).await?;
        issuer.shutdown().await;
        eprintln!("rotation: {rotation:#}");
        results.insert("rotation".into(), rotation);
    }
    Ok(())
}

/// `NAME=VALUE` of `--daemon-env`.
fn parse_env_pair(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{pair:?} is not NAME=VALUE")),
    }
}
