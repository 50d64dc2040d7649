//! The sweep phase: `keyrotd check` (one check of every key, as many in flight as
//! `[checks] max_concurrent` allows) against a provider that answers after `--latency-ms`.
//!
//! Its wall time is compared with the bound `n × latency / concurrency`, what no checker
//! could beat; what the simulator really held each answer is reported beside it, since the
//! bound assumes exactly `--latency-ms`.

use crate::process::{children_usage, own_usage, proc_status_kib};
use crate::setup::Bench;
use crate::Args;
use anyhow::{bail, Context};
use keyrotd::simulator::{Op, Simulator};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};

impl Bench {
    pub(crate) async fn sweep_phase(
        &self,
        args: &Args,
        simulator: &Simulator,
    ) -> anyhow::Result<Value> {
        let fixed_start = self.cli_fixed_start()?;
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
            // The simulator shares the host: on a small host its CPU is CPU keyrotd waits for.
            "simulator_cores": ((simulator_after.0 - simulator_before.0)
                + (simulator_after.1 - simulator_before.1))
                / wall,
        }))
    }

    /// Seconds of the CLI's fixed start (config, store open, sync, provider set-up) without
    /// checking anything: `keyrotd check` of an unknown name stops right after it.
    fn cli_fixed_start(&self) -> anyhow::Result<f64> {
        let started = Instant::now();
        let fixed = self
            .command(&self.config)
            .arg("check")
            .arg("keyrotd-bench-no-such-credential")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let seconds = started.elapsed().as_secs_f64();
        if fixed.success() {
            bail!("`keyrotd check` of an unknown credential succeeded");
        }
        Ok(seconds)
    }
}
