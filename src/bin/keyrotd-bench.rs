//! `keyrotd-bench`: the scale benchmarks behind `BENCHMARKS.md` (see `bench/run.sh`).
//!
//! One run at one scale (`--n` credentials):
//!
//! 1. **seed** a store with `n` credentials, each with a current key that was last checked
//!    25 h ago, through the store's own API (on `/dev/shm` when it exists, so seeding does not
//!    wait for 2n fsyncs; the database is then copied to the on-disk work directory);
//! 2. **daemon**: start the real `keyrotd run` (checks every 24 h, so the overdue keys are
//!    checked once at start-up and then the daemon is idle) with a `NOTIFY_SOCKET` the harness
//!    listens on: time to `READY=1`, the start-up sweep, resident memory, then an idle window
//!    (CPU ticks and context switches of every thread = wake-ups), then sequential
//!    `GET /metrics` the way Prometheus scrapes (`Accept-Encoding: gzip`: p50/p99, bytes on
//!    the wire and decompressed, series), then more without `Accept-Encoding` (identity text,
//!    as curl or promtool read it);
//! 3. **python**: the same series served by `prometheus_client` (`bench/prom_exporter.py`),
//!    scraped the same way, when `--python` is given;
//! 4. **sweep**: `keyrotd check` (one check of every key) against the in-process simulator
//!    with `--latency-ms` added latency: wall time against `n × latency / concurrency`, and
//!    the CPU and peak memory of that process (getrusage of the child);
//! 5. **rotation**: the rotation engine in this process against the simulator, delivering to
//!    files, on the same (on-disk, `synchronous=FULL`) store: rotations per second,
//!    sequentially and with `--rotation-parallel` in flight, and where the time goes.
//!
//! Results are printed and written as JSON (`--json`). Nothing here is part of `cargo test`
//! except `tests/bench_smoke.rs`, which runs it at a tiny scale so it cannot rot.

use anyhow::{bail, Context};
use async_trait::async_trait;
use clap::Parser;
use keyrotd::clock::{Clock, SystemClock};
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::delivery::{Delivery, DeliveryError, Target};
use keyrotd::model::CheckStatus;
use keyrotd::providers::{
    CheckReport, IssuedKey, Issuer, Provider, ProviderError, ProviderTelemetry, RemoteKey,
};
use keyrotd::rotation::{self, CredentialRuntime, Engine};
use keyrotd::simulator::{Op, Simulator};
use keyrotd::store::{
    CheckRecord, CheckStore, CredentialSpec, CredentialStore, KeyStore, NewKey, SqliteStore,
    StateStore, Store,
};
use secrecy::SecretString;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
}

const PROVIDER: &str = "sim";
const CLK_TCK: f64 = 100.0;

fn credential_name(i: usize) -> String {
    format!("bench-{i:06}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keyrotd = match &args.keyrotd {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("keyrotd"),
    };
    if !keyrotd.exists() {
        bail!("keyrotd binary not found at {}", keyrotd.display());
    }
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

    let daemon = bench.daemon_phase(&args, &simulator).await?;
    eprintln!("daemon: {daemon:#}");
    results.insert("daemon".into(), daemon.clone());

    if let Some(script) = &args.python {
        let python = bench.python_phase(&args, script).await?;
        eprintln!("python: {python:#}");
        results.insert("python".into(), python);
    }
    if !args.skip_sweep {
        let sweep = bench.sweep_phase(&args, &simulator).await?;
        eprintln!("sweep: {sweep:#}");
        results.insert("sweep".into(), sweep);
    }
    if args.rotations > 0 {
        // A provider of its own: the orphan sweep lists every key the provider holds, and
        // the 10,000s of keys seeded above would measure the simulator's listing.
        let (issuer, _) = Simulator::start("127.0.0.1:0".parse()?).await?;
        std::fs::write(&bench.management_key, issuer.management_key())?;
        let rotation = bench.rotation_phase(&args, &issuer).await?;
        issuer.shutdown().await;
        eprintln!("rotation: {rotation:#}");
        results.insert("rotation".into(), rotation);
    }
    let results = Value::Object(results);
    println!("{}", serde_json::to_string_pretty(&results)?);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
    }
    simulator.shutdown().await;
    drop(temporary);
    Ok(())
}

struct Bench {
    dir: PathBuf,
    keyrotd: PathBuf,
    config: PathBuf,
    database: PathBuf,
    master_key: PathBuf,
    management_key: PathBuf,
    seed: Value,
    /// The exposition of the last scrape of the daemon (for the Python comparison).
    exposition: std::sync::Mutex<String>,
}

impl Bench {
    async fn set_up(
        args: &Args,
        dir: &Path,
        keyrotd: &Path,
        simulator: &Simulator,
    ) -> anyhow::Result<Bench> {
        let master_key = dir.join("master.key");
        let _ = std::fs::remove_file(&master_key);
        MasterKey::generate().write_new(&master_key)?;
        let management_key = dir.join("sim.management-key");
        std::fs::write(&management_key, simulator.management_key())?;
        let database = dir.join("keyrotd.db");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
        }
        let config = dir.join("daemon.toml");
        std::fs::write(
            &config,
            config_text(&database, simulator, args.concurrency, args.n, None),
        )?;

        // Seed where fsync is free, then copy the database to the disk under test.
        let shm = Path::new("/dev/shm");
        let seed_dir = if shm.is_dir() {
            tempfile::Builder::new()
                .prefix("keyrotd-bench-seed-")
                .tempdir_in(shm)?
        } else {
            tempfile::Builder::new()
                .prefix("keyrotd-bench-seed-")
                .tempdir_in(dir)?
        };
        let seed_db = seed_dir.path().join("keyrotd.db");
        let started = Instant::now();
        let sealer = Arc::new(Sealer::new(&MasterKey::load(&master_key)?));
        let store = SqliteStore::open(&seed_db, Some(sealer)).await?;
        let now = SystemClock.now();
        let specs: Vec<CredentialSpec> = (0..args.n)
            .map(|i| CredentialSpec {
                name: credential_name(i),
                provider: PROVIDER.into(),
                provider_kind: "simulated".into(),
            })
            .collect();
        store.sync_credentials(&specs, now - 7200).await?;
        let sync_ms = started.elapsed().as_secs_f64() * 1e3;
        for (i, spec) in specs.iter().enumerate() {
            let secret = format!("sk-bench-{i}-{}", random_hex());
            simulator.add_key(&secret);
            let version = store
                .import_key(
                    &spec.name,
                    NewKey {
                        secret: SecretString::from(secret),
                        expires_at: Some(now + 90 * 86_400),
                        provider_key_id: None,
                        rotation_id: None,
                    },
                    "bench",
                    now - 3600,
                )
                .await?;
            store
                .record_check(
                    &spec.name,
                    version.id,
                    &CheckRecord {
                        status: CheckStatus::Valid,
                        detail: "seeded".into(),
                        // Overdue for a 24 h interval: the daemon checks it at start-up
                        // (unless --fresh-checks).
                        at: if args.fresh_checks {
                            now
                        } else {
                            now - 25 * 3600
                        },
                        credits: Vec::new(),
                        expires_at: None,
                    },
                )
                .await?;
        }
        store.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{suffix}", seed_db.display()));
            if from.exists() {
                std::fs::copy(&from, format!("{}{suffix}", database.display()))?;
            }
        }
        let seed = json!({
            "seconds": started.elapsed().as_secs_f64(),
            "first_sync_ms": sync_ms,
            "on": seed_dir.path().display().to_string(),
            "db_bytes": std::fs::metadata(&database)?.len(),
        });
        Ok(Bench {
            dir: dir.to_path_buf(),
            keyrotd: keyrotd.to_path_buf(),
            config,
            database,
            master_key,
            management_key,
            seed,
            exposition: std::sync::Mutex::new(String::new()),
        })
    }

    fn command(&self, config: &Path) -> Command {
        let mut command = Command::new(&self.keyrotd);
        command
            .arg("--config")
            .arg(config)
            .arg("--master-key")
            .arg(&self.master_key)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("LISTEN_FDS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    async fn daemon_phase(&self, args: &Args, simulator: &Simulator) -> anyhow::Result<Value> {
        let socket_path = self.dir.join("notify.sock");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let checks_before = simulator.request_count(Op::Check);
        let mut command = self.command(&self.config);
        command
            .arg("run")
            .envs(args.daemon_env.iter().map(|(name, value)| (name, value)))
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        let child = command.spawn().context("cannot start keyrotd run")?;
        let mut daemon = Running::new(child);
        let (ready, status) =
            tokio::task::spawn_blocking(move || wait_ready(&socket, started)).await??;
        let ready_ms = ready.as_secs_f64() * 1e3;
        let address = status
            .split("serving metrics on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .context("no address in the READY status")?
            .to_string();
        let pid = daemon.pid();
        let rss_at_ready = proc_status_kib(pid, "VmRSS")?;
        let rss_anon_at_ready = proc_status_kib(pid, "RssAnon")?;
        let peak_rss_to_ready = proc_status_kib(pid, "VmHWM")?;
        // Start the peak over (clear_refs "5", Linux ≥ 4.0), so the sweep's peak is not
        // the start-up's (parsing the config is the largest allocation of a start).
        let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let cpu_at_ready = cpu_seconds(pid)?;

        // The start-up sweep: every key is overdue, so all are checked within a few seconds.
        let sweep_started = Instant::now();
        let deadline = sweep_started + Duration::from_secs(60 + args.n as u64 / 50);
        let expected = if args.fresh_checks { 0 } else { args.n as u64 };
        while simulator.request_count(Op::Check) - checks_before < expected {
            if Instant::now() > deadline {
                bail!(
                    "start-up sweep incomplete: {} of {} checks",
                    simulator.request_count(Op::Check) - checks_before,
                    args.n
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sweep_seconds = sweep_started.elapsed().as_secs_f64();
        // The provider has answered every check; the results may still be queued for the
        // store. Settled = the daemon used (almost) no CPU for a second.
        let mut settled_seconds = sweep_seconds;
        if !args.fresh_checks {
            let deadline = Instant::now() + Duration::from_secs(600);
            tokio::time::sleep(Duration::from_millis(args.settle_ms.min(1000))).await;
            loop {
                let before = cpu_seconds(pid)?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                if cpu_seconds(pid)? - before <= 0.02 || Instant::now() > deadline {
                    break;
                }
            }
            settled_seconds = sweep_started.elapsed().as_secs_f64() - 1.0;
        }
        let cpu_after_sweep = cpu_seconds(pid)?;
        let peak_rss = proc_status_kib(pid, "VmHWM")?;

        // Idle: nothing is due for 24 h.
        let perf = args.perf.then(|| {
            Command::new("perf")
                .args(["stat", "-x", ",", "-e", "sched:sched_switch", "-p"])
                .arg(pid.to_string())
                .args(["--", "sleep"])
                .arg(args.idle_secs.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        });
        let switches_before = context_switches(pid)?;
        let cpu_before = cpu_seconds(pid)?;
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let switches = switches_since(&switches_before, &context_switches(pid)?);
        let idle_cpu = cpu_seconds(pid)? - cpu_before;
        let perf_switches = match perf {
            Some(Ok(child)) => {
                let output = child.wait_with_output()?;
                let text = String::from_utf8_lossy(&output.stderr).to_string();
                text.lines()
                    .find(|l| l.contains("sched_switch"))
                    .and_then(|l| l.split(',').next())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            }
            _ => None,
        };
        let per_minute = 60.0 / args.idle_secs as f64;
        let idle_rss = proc_status_kib(pid, "VmRSS")?;
        // File-backed: the binary's and libraries' pages; anonymous: the heap and stacks.
        let idle_rss_anon = proc_status_kib(pid, "RssAnon")?;
        let idle_rss_file = proc_status_kib(pid, "RssFile")?;
        let threads = proc_status_kib(pid, "Threads")?;

        // Scrapes as Prometheus makes them (gzip): the first one after the sweep renders a
        // changed store.
        let scrape_address = address.clone();
        let scrapes = args.scrapes;
        let gzip =
            tokio::task::spawn_blocking(move || scrape_series(&scrape_address, scrapes, true))
                .await??;
        let scrape_cpu = cpu_seconds(pid)? - cpu_before - idle_cpu;
        let rss_after_scrapes = proc_status_kib(pid, "VmRSS")?;
        // Then as curl or promtool read it: no Accept-Encoding.
        let cpu_before_identity = cpu_seconds(pid)?;
        let scrape_address = address.clone();
        let scrapes = args.identity_scrapes;
        let identity =
            tokio::task::spawn_blocking(move || scrape_series(&scrape_address, scrapes, false))
                .await??;
        let identity_cpu = cpu_seconds(pid)? - cpu_before_identity;
        let rss_after_identity = proc_status_kib(pid, "VmRSS")?;
        *self.exposition.lock().unwrap() = gzip.text.clone();

        let stop_started = Instant::now();
        daemon.terminate()?;
        let stop_ms = stop_started.elapsed().as_secs_f64() * 1e3;
        Ok(json!({
            "environment": args
                .daemon_env
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>(),
            "ready_ms": ready_ms,
            "rss_at_ready_kib": rss_at_ready,
            "rss_anon_at_ready_kib": rss_anon_at_ready,
            "peak_rss_to_ready_kib": peak_rss_to_ready,
            "cpu_to_ready_s": cpu_at_ready,
            "startup_sweep": {
                "seconds_after_ready": sweep_seconds,
                "settled_seconds_after_ready": settled_seconds,
                "cpu_s": cpu_after_sweep - cpu_at_ready,
                "peak_rss_kib": peak_rss,
                // false: the kernel refused the reset; peak_rss_kib then includes start-up.
                "peak_rss_since_ready": peak_reset,
            },
            "idle": {
                "seconds": args.idle_secs,
                "rss_kib": idle_rss,
                "rss_anon_kib": idle_rss_anon,
                "rss_file_kib": idle_rss_file,
                "threads": threads,
                "cpu_s": idle_cpu,
                "cpu_percent": idle_cpu / args.idle_secs as f64 * 100.0,
                "context_switches_per_minute": switches as f64 * per_minute,
                "perf_sched_switch_per_minute": perf_switches.map(|s| s * per_minute),
            },
            "scrape": gzip.summary(json!({
                "cpu_s_per_scrape": scrape_cpu / gzip.timings.len().max(1) as f64,
                "rss_after_kib": rss_after_scrapes,
                "identity": identity.summary(json!({
                    "cpu_s_per_scrape": identity_cpu / identity.timings.len().max(1) as f64,
                    "rss_after_kib": rss_after_identity,
                })),
            })),
            "stop_ms": stop_ms,
        }))
    }

    async fn python_phase(&self, args: &Args, script: &Path) -> anyhow::Result<Value> {
        let spec = self.dir.join("series.json");
        let exposition = self.exposition.lock().unwrap().clone();
        std::fs::write(&spec, serde_json::to_string(&families(&exposition))?)?;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            listener.local_addr()?.port()
        };
        let started = Instant::now();
        let child = Command::new(&args.python_bin)
            .arg(script)
            .arg(&spec)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the Python exporter")?;
        let mut python = Running::new(child);
        let stdout = python.child.stdout.take().context("no stdout")?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if !line.starts_with("READY") {
                bail!("the Python exporter did not start: {line:?}");
            }
            Ok(())
        })
        .await??;
        let load_seconds = started.elapsed().as_secs_f64();
        let address = format!("127.0.0.1:{port}");
        let scrapes = args.python_scrapes;
        let scrape_address = address.clone();
        let gzip =
            tokio::task::spawn_blocking(move || scrape_series(&scrape_address, scrapes, true))
                .await??;
        let scrapes = args.python_identity_scrapes;
        let identity =
            tokio::task::spawn_blocking(move || scrape_series(&address, scrapes, false)).await??;
        let rss = proc_status_kib(python.pid(), "VmRSS")?;
        python.terminate()?;
        Ok(json!({
            "load_seconds": load_seconds,
            "scrape": gzip.summary(json!({ "identity": identity.summary(json!({})) })),
            "rss_kib": rss,
        }))
    }

    async fn sweep_phase(&self, args: &Args, simulator: &Simulator) -> anyhow::Result<Value> {
        // The CLI's fixed start (config, store open, sync, provider set-up) without checking
        // anything: `keyrotd check` of an unknown name stops right after it.
        let started = Instant::now();
        let fixed = self
            .command(&self.config)
            .arg("check")
            .arg("keyrotd-bench-no-such-credential")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let fixed_start = started.elapsed().as_secs_f64();
        if fixed.success() {
            bail!("`keyrotd check` of an unknown credential succeeded");
        }
        simulator.set_latency(Duration::from_millis(args.latency_ms));
        let checks_before = simulator.request_count(Op::Check);
        let before = children_usage();
        let simulator_before = own_usage();
        let started = Instant::now();
        let mut child = tokio::process::Command::from({
            let mut command = self.command(&self.config);
            command
                .arg("check")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            command
        })
        .spawn()?;
        // getrusage's max RSS of children covers every child ever waited for (the Python
        // exporter included): poll this one's high-water mark instead.
        let pid = child.id().context("no pid")?;
        let mut peak_kib = 0;
        let status = loop {
            if let Ok(hwm) = proc_status_kib(pid, "VmHWM") {
                peak_kib = peak_kib.max(hwm);
            }
            tokio::select! {
                status = child.wait() => break status?,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        };
        let wall = started.elapsed().as_secs_f64();
        let after = children_usage();
        let simulator_after = own_usage();
        let held = simulator.held_answers();
        simulator.set_latency(Duration::ZERO);
        if !status.success() {
            bail!("keyrotd check failed: {status}");
        }
        let checks = simulator.request_count(Op::Check) - checks_before;
        let bound = args.n as f64 * args.latency_ms as f64 / 1e3 / args.concurrency as f64;
        let cpu = (after.0 - before.0) + (after.1 - before.1);
        Ok(json!({
            "checks": checks,
            "wall_s": wall,
            "bound_s": bound,
            "ratio_to_bound": wall / bound,
            "cli_fixed_start_s": fixed_start,
            "checks_wall_s": wall - fixed_start,
            "checks_ratio_to_bound": (wall - fixed_start) / bound,
            "cpu_user_s": after.0 - before.0,
            "cpu_sys_s": after.1 - before.1,
            "cores_used": cpu / wall,
            "max_rss_kib": peak_kib,
            // What the simulator really added to each check (the bound assumes `latency_ms`).
            "provider_latency_ms": {
                "mean": held.mean().as_secs_f64() * 1e3,
                "max": held.max.as_secs_f64() * 1e3,
                "answers": held.count,
            },
            // The simulator shares the host: on 2 cores, its CPU is CPU keyrotd waits for.
            "simulator_cores": ((simulator_after.0 - simulator_before.0)
                + (simulator_after.1 - simulator_before.1))
                / wall,
        }))
    }

    async fn rotation_phase(&self, args: &Args, simulator: &Simulator) -> anyhow::Result<Value> {
        let count = args.rotations.min(args.n);
        let deliver = self.dir.join("deliver");
        std::fs::create_dir_all(&deliver)?;
        let config_path = self.dir.join("rotation.toml");
        std::fs::write(
            &config_path,
            config_text(
                &self.database,
                simulator,
                args.concurrency,
                count,
                Some((&self.management_key, &deliver)),
            ),
        )?;
        let config = Config::load(&config_path)?;
        let telemetry = ProviderTelemetry::new();
        let times = Arc::new(StepTimes::default());
        let runtimes: Vec<Arc<CredentialRuntime>> = {
            let mut built: Vec<_> = rotation::build_runtimes(&config, &telemetry)?
                .into_values()
                .map(|rt| timed(&rt, &times))
                .collect();
            built.sort_by(|a, b| a.name.cmp(&b.name));
            built
        };
        let sealer = Arc::new(Sealer::new(&MasterKey::load(&self.master_key)?));
        let store = Arc::new(SqliteStore::open(&self.database, Some(sealer)).await?);
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Arc::new(Engine::new(store.clone() as Arc<dyn Store>, clock));

        let generation_before = store.generation().await?;
        let started = Instant::now();
        for rt in &runtimes {
            engine.rotate(rt, "bench").await?;
        }
        let sequential = started.elapsed().as_secs_f64();
        let commits = (store.generation().await? - generation_before) as f64 / count as f64;
        let sequential_times = times.take();

        let started = Instant::now();
        let queue = Arc::new(std::sync::Mutex::new(runtimes.clone()));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..args.rotation_parallel.max(1) {
            let queue = queue.clone();
            let engine = engine.clone();
            workers.spawn(async move {
                loop {
                    let next = queue.lock().unwrap().pop();
                    let Some(rt) = next else { break };
                    engine.rotate(&rt, "bench").await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = workers.join_next().await {
            done??;
        }
        let parallel = started.elapsed().as_secs_f64();
        let parallel_times = times.take();
        store.close().await;
        let per_rotation_ms = |seconds: f64| seconds * 1e3 / count as f64;
        let seq_ms = per_rotation_ms(sequential);
        let provider_ms = sequential_times.total_ms() / count as f64;
        Ok(json!({
            "rotations": count,
            "sequential": {
                "per_second": count as f64 / sequential,
                "ms_per_rotation": seq_ms,
                "steps_ms_per_rotation": sequential_times.per(count),
                "store_and_engine_ms_per_rotation": seq_ms - provider_ms,
                "write_transactions_per_rotation": commits,
            },
            "parallel": {
                "in_flight": args.rotation_parallel,
                "per_second": count as f64 / parallel,
                "steps_ms_per_rotation": parallel_times.per(count),
            },
        }))
    }
}

/// The daemon's config: one simulated provider, `n` credentials, checks every 24 h. With
/// `rotation`, the provider gets its management key and every credential a file target.
fn config_text(
    database: &Path,
    simulator: &Simulator,
    concurrency: usize,
    n: usize,
    rotation: Option<(&Path, &Path)>,
) -> String {
    let mut text = format!(
        "[daemon]\nlisten_address = \"127.0.0.1:0\"\ndatabase = \"{}\"\n\n[checks]\ninterval = \"24h\"\njitter = 0.1\nmax_concurrent = {concurrency}\n\n[[provider]]\nname = \"{PROVIDER}\"\nkind = \"simulated\"\nbase_url = \"{}\"\nrequests_per_second = 1000000\ntimeout = \"30s\"\n",
        database.display(),
        simulator.base_url()
    );
    if let Some((management_key, _)) = rotation {
        text.push_str(&format!(
            "management_key = {{ file = \"{}\" }}\n",
            management_key.display()
        ));
    }
    text.reserve(n * 64);
    for i in 0..n {
        let name = credential_name(i);
        text.push_str(&format!(
            "\n[[credential]]\nname = \"{name}\"\nprovider = \"{PROVIDER}\"\n"
        ));
        if let Some((_, deliver)) = rotation {
            text.push_str(&format!(
                "deliver = [{{ kind = \"file\", path = \"{}/{name}.key\" }}]\n",
                deliver.display()
            ));
        }
    }
    text
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    hex::encode(bytes)
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Running {
    child: Child,
}

impl Running {
    fn new(child: Child) -> Running {
        Running { child }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn terminate(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("the process did not stop within 15 s of SIGTERM")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `READY=1` on the notify socket; returns the time since `started` and the
/// `STATUS=` sent with it.
fn wait_ready(socket: &UnixDatagram, started: Instant) -> anyhow::Result<(Duration, String)> {
    let mut buffer = vec![0u8; 4096];
    let deadline = started + Duration::from_secs(300);
    while Instant::now() < deadline {
        match socket.recv(&mut buffer) {
            Ok(len) => {
                let elapsed = started.elapsed();
                let text = String::from_utf8_lossy(&buffer[..len]).to_string();
                if text.lines().any(|l| l == "READY=1") {
                    let status = text
                        .lines()
                        .find_map(|l| l.strip_prefix("STATUS="))
                        .unwrap_or_default()
                        .to_string();
                    return Ok((elapsed, status));
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no READY=1 within 300 s")
}

/// One `GET /metrics` on a fresh connection, with `Accept-Encoding: gzip` when `gzip` (as
/// Prometheus asks); returns the raw response and where its body starts. The buffer is sized
/// from the previous answer, so the client does not copy a 10 MB body while timing it.
fn get_metrics(address: &str, expected: usize, gzip: bool) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    let encoding = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    stream.write_all(
        format!(
            "GET /metrics HTTP/1.1\r\nHost: bench\r\nAccept: text/plain\r\n{encoding}Connection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut response = Vec::with_capacity(expected + 64 * 1024);
    stream.read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .take(8192)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "GET /metrics answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked responses are not supported by this client");
    }
    Ok((response, head_end + 4))
}

/// The body of a response from [`get_metrics`] as text (gunzipped when it came gzipped),
/// its `Content-Encoding` and the ms it took to decompress.
fn body_of(response: &[u8], body_start: usize) -> anyhow::Result<(String, String, f64)> {
    let head = String::from_utf8_lossy(&response[..body_start]).to_ascii_lowercase();
    let encoding = head
        .lines()
        .find_map(|l| l.strip_prefix("content-encoding:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "identity".into());
    let body = &response[body_start..];
    let started = Instant::now();
    let text = match encoding.as_str() {
        "identity" => String::from_utf8(body.to_vec())?,
        "gzip" => {
            let mut text = String::new();
            flate2::read::MultiGzDecoder::new(body).read_to_string(&mut text)?;
            text
        }
        other => bail!("unexpected Content-Encoding {other}"),
    };
    Ok((text, encoding, started.elapsed().as_secs_f64() * 1e3))
}

/// Sequential scrapes: the first, then `timings.len()` more.
struct Series {
    first_ms: f64,
    timings: Vec<f64>,
    /// Body bytes on the wire (compressed when `encoding` says so).
    wire_bytes: usize,
    encoding: String,
    /// The last body, decompressed.
    text: String,
    /// Client-side decompression of the last body (not in the timings).
    inflate_ms: f64,
}

impl Series {
    /// The figures as JSON, with the fields of `extra` added.
    fn summary(&self, extra: Value) -> Value {
        let series = self
            .text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count();
        let mut out = json!({
            "count": self.timings.len(),
            "first_ms": self.first_ms,
            "p50_ms": percentile(&self.timings, 0.50),
            "p99_ms": percentile(&self.timings, 0.99),
            "mean_ms": self.timings.iter().sum::<f64>() / self.timings.len().max(1) as f64,
            "content_encoding": self.encoding,
            "wire_bytes": self.wire_bytes,
            "bytes": self.text.len(),
            "series": series,
            "client_inflate_ms": self.inflate_ms,
        });
        if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
            out.extend(extra);
        }
        out
    }
}

/// The first scrape's latency, then `count` more sequential scrapes; all in ms (receiving
/// the whole body; decompressing it is measured apart).
fn scrape_series(address: &str, count: usize, gzip: bool) -> anyhow::Result<Series> {
    let started = Instant::now();
    let (mut response, mut body_start) = get_metrics(address, 1 << 20, gzip)?;
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut timings = Vec::with_capacity(count);
    for _ in 0..count {
        let expected = response.len();
        let started = Instant::now();
        (response, body_start) = get_metrics(address, expected, gzip)?;
        timings.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let (text, encoding, inflate_ms) = body_of(&response, body_start)?;
    Ok(Series {
        first_ms,
        timings,
        wire_bytes: response.len() - body_start,
        encoding,
        text,
        inflate_ms,
    })
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank]
}

/// The exposition as families: `[{name, help, type, samples: [[sample, {labels}, value]]}]`.
fn families(exposition: &str) -> Value {
    let mut out: Vec<Value> = Vec::new();
    let mut help = String::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').map(|x| x.1).unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            out.push(json!({"name": name, "help": help, "type": kind, "samples": []}));
        } else if !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap_or((line, "0"));
            let (sample, labels) = match series.split_once('{') {
                Some((sample, rest)) => (sample, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels: serde_json::Map<String, Value> = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_string(), json!(v.trim_matches('"'))))
                .collect();
            if let Some(Value::Array(samples)) = out.last_mut().and_then(|f| f.get_mut("samples")) {
                samples.push(json!([sample, labels, value.parse::<f64>().unwrap_or(0.0)]));
            }
        }
    }
    Value::Array(out)
}

fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of the process (all threads, living and exited), seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / CLK_TCK)
}

/// Context switches (voluntary + involuntary) of each thread of `pid`, by thread id.
fn context_switches(pid: u32) -> anyhow::Result<HashMap<String, u64>> {
    let mut by_thread = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Ok(text) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let mut total = 0;
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        by_thread.insert(task.file_name().to_string_lossy().into_owned(), total);
    }
    Ok(by_thread)
}

/// Switches between two samples, thread by thread: a thread that exited in between (an
/// idle store reader closing) takes its count with it, so whole-process sums could go
/// backwards. Its switches before it exited are not counted (`perf` counts them).
fn switches_since(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(thread, now)| now.saturating_sub(before.get(thread).copied().unwrap_or(0)))
        .sum()
}

/// (user s, system s, max RSS KiB) of waited-for children.
fn children_usage() -> (f64, f64, i64) {
    usage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
}

/// (user s, system s, max RSS KiB) of this process: the simulator, in the sweep.
fn own_usage() -> (f64, f64, i64) {
    usage(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

fn usage(who: nix::sys::resource::UsageWho) -> (f64, f64, i64) {
    match nix::sys::resource::getrusage(who) {
        Ok(usage) => {
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (
                secs(usage.user_time()),
                secs(usage.system_time()),
                usage.max_rss(),
            )
        }
        Err(_) => (0.0, 0.0, 0),
    }
}

/// Time spent in each external step of the rotations, in nanoseconds.
#[derive(Default)]
struct StepTimes {
    issue: AtomicU64,
    list: AtomicU64,
    revoke: AtomicU64,
    verify: AtomicU64,
    deliver: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct StepTotals([f64; 5]);

impl StepTotals {
    fn total_ms(&self) -> f64 {
        self.0.iter().sum()
    }
    fn per(&self, count: usize) -> Value {
        let c = count.max(1) as f64;
        json!({
            "issue": self.0[0] / c,
            "list_orphans": self.0[1] / c,
            "revoke": self.0[2] / c,
            "verify": self.0[3] / c,
            "deliver_file": self.0[4] / c,
        })
    }
}

impl StepTimes {
    /// Runs `step`, adding its duration to `counter`.
    async fn time<T>(counter: &AtomicU64, step: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step.await;
        counter.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
    /// Totals in ms since the last take.
    fn take(&self) -> StepTotals {
        let ms = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) as f64 / 1e6;
        StepTotals([
            ms(&self.issue),
            ms(&self.list),
            ms(&self.revoke),
            ms(&self.verify),
            ms(&self.deliver),
        ])
    }
}

struct TimedProvider(Arc<dyn Provider>, Arc<StepTimes>);

#[async_trait]
impl Provider for TimedProvider {
    async fn check(&self, key: &SecretString) -> CheckReport {
        StepTimes::time(&self.1.verify, self.0.check(key)).await
    }
}

struct TimedIssuer(Arc<dyn Issuer>, Arc<StepTimes>);

#[async_trait]
impl Issuer for TimedIssuer {
    async fn issue(&self, name: &str) -> Result<IssuedKey, ProviderError> {
        StepTimes::time(&self.1.issue, self.0.issue(name)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        StepTimes::time(&self.1.list, self.0.list(prefix)).await
    }
    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        StepTimes::time(&self.1.revoke, self.0.revoke(remote_id)).await
    }
}

struct TimedTarget(Arc<dyn Target>, Arc<StepTimes>);

#[async_trait]
impl Target for TimedTarget {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        StepTimes::time(&self.1.deliver, self.0.deliver(delivery)).await
    }
}

fn timed(rt: &CredentialRuntime, times: &Arc<StepTimes>) -> Arc<CredentialRuntime> {
    Arc::new(CredentialRuntime {
        name: rt.name.clone(),
        provider_name: rt.provider_name.clone(),
        provider: Arc::new(TimedProvider(rt.provider.clone(), times.clone())),
        issuer: rt
            .issuer
            .clone()
            .map(|i| Arc::new(TimedIssuer(i, times.clone())) as Arc<dyn Issuer>),
        targets: rt
            .targets
            .iter()
            .map(|t| Arc::new(TimedTarget(t.clone(), times.clone())) as Arc<dyn Target>)
            .collect(),
        revoker: rt.revoker.clone(),
        policy: rt.policy.clone(),
        retry: rt.retry,
    })
}

/// `NAME=VALUE` of `--daemon-env`.
fn parse_env_pair(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{pair:?} is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_are_counted_thread_by_thread_and_an_exited_thread_does_not_subtract() {
        let sample = |pairs: &[(&str, u64)]| -> HashMap<String, u64> {
            pairs.iter().map(|&(t, n)| (t.to_string(), n)).collect()
        };
        let before = sample(&[("1", 100), ("2", 40), ("3", 500)]);
        // Thread 3 exited, thread 4 started.
        let after = sample(&[("1", 103), ("2", 40), ("4", 7)]);
        assert_eq!(switches_since(&before, &after), 3 + 7);
        // The whole-process sums would have gone backwards: 640 -> 150.
        assert_eq!(switches_since(&before, &before), 0);
    }

    #[test]
    fn reads_a_count_for_the_main_thread_of_this_process() {
        let by_thread = context_switches(std::process::id()).unwrap();
        assert!(by_thread.contains_key(&std::process::id().to_string()));
    }
}
