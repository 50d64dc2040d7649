//! The processes a run starts and what the kernel says they cost: resident memory and its
//! peak (`/proc/PID/status`), CPU time (`/proc/PID/stat`, `getrusage`), and context switches
//! thread by thread (wake-ups of an idle daemon).

use anyhow::{bail, Context};
use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)` on Linux).
const CLK_TCK: f64 = 100.0;

/// A child process that is stopped (SIGKILL) when dropped, so a failed phase leaves no
/// daemon or exporter running.
pub(crate) struct Running {
    pub(crate) child: Child,
}

impl Running {
    pub(crate) fn new(child: Child) -> Running {
        Running { child }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits up to 15 s for the process to exit (SIGKILL and an error after).
    pub(crate) fn terminate(&mut self) -> anyhow::Result<()> {
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

    /// SIGKILL, as a host that dies would stop it; reaps the process.
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
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

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon`…), or a plain count
/// (`Threads`).
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// utime + stime of the process (all threads, living and exited), seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = text.rsplit_once(')').context("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields[11].parse()?;
    let stime: f64 = fields[12].parse()?;
    Ok((utime + stime) / CLK_TCK)
}

/// Context switches (voluntary + involuntary) of each thread of `pid`, by thread id.
pub(crate) fn context_switches(pid: u32) -> anyhow::Result<HashMap<String, u64>> {
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
pub(crate) fn switches_since(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> u64 {
    after
        .iter()
        .map(|(thread, now)| now.saturating_sub(before.get(thread).copied().unwrap_or(0)))
        .sum()
}

/// (user s, system s, max RSS KiB) of waited-for children.
pub(crate) fn children_usage() -> (f64, f64, i64) {
    usage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
}

/// (user s, system s, max RSS KiB) of this process: the simulator, in the sweep.
pub(crate) fn own_usage() -> (f64, f64, i64) {
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
