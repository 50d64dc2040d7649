//! The daemon phase: the real `keyrotd run`, started as systemd starts it (`Type=notify`),
//! measured from spawn to `READY=1`, through its start-up sweep of overdue keys, over an idle
//! window, and while it is scraped.
//!
//! The daemon is a separate process on purpose: resident memory, wake-ups and start-up time
//! are properties of the binary and its allocator, which an in-process daemon would hide.
//!
//! On PostgreSQL a second replica is started once the first (the leader) was measured: it
//! is scraped as a standby the same way, then the leader is SIGKILLed and the time until the
//! standby reports `keyrotd_leader 1` is the failover.

use crate::process::{context_switches, cpu_seconds, proc_status_kib, switches_since, Running};
use crate::scrape::scrapes;
use crate::setup::Bench;
use crate::Args;
use anyhow::{bail, Context};
use keyrotd::simulator::{Op, Simulator};
use serde_json::{json, Value};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon that has sent `READY=1`.
pub(crate) struct ReadyDaemon {
    pub(crate) process: Running,
    ready_ms: f64,
    /// The metrics listener, from the `STATUS=` sent with `READY=1`.
    address: String,
}

/// What the start-up sweep cost, read once the daemon has settled.
struct StartupSweep {
    seconds_after_ready: f64,
    settled_seconds_after_ready: f64,
    cpu_after: f64,
    peak_rss_kib: u64,
}

impl Bench {
    pub(crate) async fn daemon_phase(
        &self,
        args: &Args,
        simulator: &Simulator,
    ) -> anyhow::Result<Value> {
        let checks_before = simulator.request_count(Op::Check);
        let ReadyDaemon {
            process: mut daemon,
            ready_ms,
            address,
        } = self.start_daemon(args, "daemon", &self.config).await?;
        let pid = daemon.pid();
        let rss_at_ready = proc_status_kib(pid, "VmRSS")?;
        let rss_anon_at_ready = proc_status_kib(pid, "RssAnon")?;
        let peak_rss_to_ready = proc_status_kib(pid, "VmHWM")?;
        // Start the peak over (clear_refs "5", Linux ≥ 4.0), so the sweep's peak is not
        // the start-up's (parsing the config is the largest allocation of a start).
        let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let cpu_at_ready = cpu_seconds(pid)?;

        let sweep = startup_sweep(args, simulator, pid, checks_before).await?;
        let (idle, cpu_after_idle) = idle_window(args, pid).await?;
        let scrape = self
            .scrape_daemon(args, &address, pid, cpu_after_idle)
            .await?;

        let (standby, stop_ms) = if self.postgres.is_some() {
            let (standby, stop_ms) = self.standby_phase(args, &address, &mut daemon).await?;
            (Some(standby), stop_ms)
        } else {
            let stop_started = Instant::now();
            daemon.terminate()?;
            (None, stop_started.elapsed().as_secs_f64() * 1e3)
        };
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
                "seconds_after_ready": sweep.seconds_after_ready,
                "settled_seconds_after_ready": sweep.settled_seconds_after_ready,
                "cpu_s": sweep.cpu_after - cpu_at_ready,
                "peak_rss_kib": sweep.peak_rss_kib,
                // false: the kernel refused the reset; peak_rss_kib then includes start-up.
                "peak_rss_since_ready": peak_reset,
            },
            "idle": idle,
            "scrape": scrape,
            "standby": standby,
            "stop_ms": stop_ms,
        }))
    }

    /// A second replica on the same PostgreSQL database: its `/metrics` as a standby, then
    /// the failover once `leader` is SIGKILLed. Returns its figures and the standby's stop
    /// time (the leader is gone by then).
    async fn standby_phase(
        &self,
        args: &Args,
        leader_address: &str,
        leader: &mut Running,
    ) -> anyhow::Result<(Value, f64)> {
        let ReadyDaemon {
            process: mut standby,
            ready_ms,
            address,
        } = self.start_daemon(args, "standby", &self.config).await?;
        let pid = standby.pid();
        let leading = |address: &str| {
            let address = address.to_string();
            async move {
                let series = scrapes(&address, 1, false).await?;
                anyhow::Ok(leader_flag(&series.text))
            }
        };
        if leading(leader_address).await? != Some(true) || leading(&address).await? != Some(false) {
            bail!("expected the first replica to lead and the second to stand by");
        }
        let cpu_before = cpu_seconds(pid)?;
        let gzip = scrapes(&address, args.scrapes, true).await?;
        let scrape_cpu = cpu_seconds(pid)? - cpu_before;

        let killed = Instant::now();
        leader.kill()?;
        let deadline = killed + Duration::from_secs(120);
        while leading(&address).await? != Some(true) {
            if Instant::now() > deadline {
                bail!("the standby did not lead within 120 s of the leader's SIGKILL");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failover = killed.elapsed().as_secs_f64();
        let stop_started = Instant::now();
        standby.terminate()?;
        let stop_ms = stop_started.elapsed().as_secs_f64() * 1e3;
        Ok((
            json!({
                "ready_ms": ready_ms,
                "scrape": gzip.summary(json!({
                    "cpu_s_per_scrape": scrape_cpu / gzip.timings.len().max(1) as f64,
                })),
                "failover_seconds": failover,
            }),
            stop_ms,
        ))
    }

    /// `keyrotd run` on `config` with a notify socket of its own; returns once it sent
    /// `READY=1`. `name` names its socket and log file in the work directory.
    pub(crate) async fn start_daemon(
        &self,
        args: &Args,
        name: &str,
        config: &Path,
    ) -> anyhow::Result<ReadyDaemon> {
        let socket_path = self.dir.join(format!("{name}.notify.sock"));
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = self.command(config);
        command
            .arg("run")
            .envs(args.daemon_env.iter().map(|(name, value)| (name, value)))
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(log.try_clone()?)
            .stderr(log);
        let started = Instant::now();
        let child = command.spawn().context("cannot start keyrotd run")?;
        let process = Running::new(child);
        let (ready, status) =
            tokio::task::spawn_blocking(move || wait_ready(&socket, started)).await??;
        let address = status
            .split("serving metrics on ")
            .nth(1)
            .and_then(|rest| rest.split(';').next())
            .context("no address in the READY status")?
            .to_string();
        Ok(ReadyDaemon {
            process,
            ready_ms: ready.as_secs_f64() * 1e3,
            address,
        })
    }

    /// Scrapes as Prometheus makes them (gzip), then as curl or promtool read them (no
    /// `Accept-Encoding`); keeps the last exposition for the Python comparison.
    async fn scrape_daemon(
        &self,
        args: &Args,
        address: &str,
        pid: u32,
        cpu_before: f64,
    ) -> anyhow::Result<Value> {
        // The first one after the sweep renders a changed store.
        let gzip = scrapes(address, args.scrapes, true).await?;
        let scrape_cpu = cpu_seconds(pid)? - cpu_before;
        let rss_after_scrapes = proc_status_kib(pid, "VmRSS")?;
        let cpu_before_identity = cpu_seconds(pid)?;
        let identity = scrapes(address, args.identity_scrapes, false).await?;
        let identity_cpu = cpu_seconds(pid)? - cpu_before_identity;
        let rss_after_identity = proc_status_kib(pid, "VmRSS")?;
        *self.exposition.lock().unwrap() = gzip.text.clone();
        Ok(gzip.summary(json!({
            "cpu_s_per_scrape": scrape_cpu / gzip.timings.len().max(1) as f64,
            "rss_after_kib": rss_after_scrapes,
            "identity": identity.summary(json!({
                "cpu_s_per_scrape": identity_cpu / identity.timings.len().max(1) as f64,
                "rss_after_kib": rss_after_identity,
            })),
        })))
    }
}

/// Waits for the start-up sweep: every key is overdue, so all are checked within a few
/// seconds of READY; then for its results to be committed.
async fn startup_sweep(
    args: &Args,
    simulator: &Simulator,
    pid: u32,
    checks_before: u64,
) -> anyhow::Result<StartupSweep> {
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
    let seconds_after_ready = sweep_started.elapsed().as_secs_f64();
    // The provider has answered every check; the results may still be queued for the
    // store. Settled = the daemon used (almost) no CPU for a second.
    let mut settled_seconds_after_ready = seconds_after_ready;
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
        settled_seconds_after_ready = sweep_started.elapsed().as_secs_f64() - 1.0;
    }
    Ok(StartupSweep {
        seconds_after_ready,
        settled_seconds_after_ready,
        cpu_after: cpu_seconds(pid)?,
        peak_rss_kib: proc_status_kib(pid, "VmHWM")?,
    })
}

/// The idle window (nothing is due for 24 h): CPU, wake-ups and resident memory. Returns
/// its figures and the daemon's CPU seconds at its end.
async fn idle_window(args: &Args, pid: u32) -> anyhow::Result<(Value, f64)> {
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
    let idle = json!({
        "seconds": args.idle_secs,
        "rss_kib": proc_status_kib(pid, "VmRSS")?,
        // File-backed: the binary's and libraries' pages; anonymous: the heap and stacks.
        "rss_anon_kib": proc_status_kib(pid, "RssAnon")?,
        "rss_file_kib": proc_status_kib(pid, "RssFile")?,
        "threads": proc_status_kib(pid, "Threads")?,
        "cpu_s": idle_cpu,
        "cpu_percent": idle_cpu / args.idle_secs as f64 * 100.0,
        "context_switches_per_minute": switches as f64 * per_minute,
        "perf_sched_switch_per_minute": perf_switches.map(|s| s * per_minute),
    });
    Ok((idle, cpu_before + idle_cpu))
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

/// `keyrotd_leader` in an exposition: whether the replica leads.
fn leader_flag(text: &str) -> Option<bool> {
    text.lines()
        .find_map(|l| l.strip_prefix("keyrotd_leader "))
        .map(|v| v.trim() == "1")
}
