//! The fault harness: real `keyrotd` processes (a daemon and concurrent CLI commands) against
//! a fake OpenRouter that keeps the truth, consumers' files watched every few milliseconds,
//! and the product's promises checked as named invariants.
//!
//! - [`provider`]: the fake OpenRouter (issued, live and deleted keys with their times;
//!   injected 500s on issue, random delays, held checks);
//! - [`consumer`]: reading the key a consumer would load from a `file` or `env_file` target;
//! - [`Poller`]: reads every consumer file every few ms and records any key that was already
//!   deleted at the provider when the read began;
//! - [`Rig`]: one scratch installation (database, config, master key, targets) with its
//!   processes, and [`Rig::violations`], which checks invariants 1–5 at the end of a trial.
#![allow(dead_code)]

pub mod consumer;
pub mod provider;

use crate::common::*;
use consumer::Consumer;
use keyrotd::model::fingerprint;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use provider::FakeOpenRouter;
use secrecy::SecretString;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CRED: &str = "app";
/// The env_file target's variable.
pub const VARIABLE: &str = "OPENROUTER_API_KEY";
/// The grace period of previous keys: short, so revocations happen inside a trial.
pub const GRACE_SECONDS: i64 = 3;
/// The rotation lease of every trial (see [`lease_line`]).
pub const LEASE: &str = "3s";

/// A key's fingerprint as keyrotd prints it.
pub fn fp(secret: &str) -> String {
    fingerprint(&SecretString::from(secret.to_string()))
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The `[daemon]` line that sets the rotation lease: short, so a killed or paused owner's
/// rotation is taken over within a trial.
pub fn lease_line() -> String {
    format!("rotation_lease = \"{LEASE}\"\n")
}

/// Reads every consumer file every few milliseconds. A read that returns a key the provider
/// had already deleted when the read began is a violation of invariant 2 ("no consumer ever
/// held a dead key"); so is a key the provider never knew.
pub struct Poller {
    stop: Arc<AtomicBool>,
    /// Every change of what a consumer file holds: (ms since the start, consumer, fingerprint).
    changes: Arc<Mutex<Vec<(u128, String, String)>>>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Poller {
    pub fn start(fake: FakeOpenRouter, consumers: Vec<Consumer>, t0: Instant) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let record = changes.clone();
        let thread = std::thread::spawn(move || {
            let mut last: Vec<Option<String>> = vec![None; consumers.len()];
            let mut seen: Vec<String> = Vec::new();
            let mut violations = Vec::new();
            // One report per (consumer, key): the file may hold it for many reads.
            let mut reported: Vec<(String, String)> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                for (index, consumer) in consumers.iter().enumerate() {
                    let began = Instant::now();
                    let Some(key) = consumer.read_key() else {
                        continue;
                    };
                    if last[index].as_deref() != Some(key.as_str()) {
                        last[index] = Some(key.clone());
                        record.lock().unwrap().push((
                            (began - t0).as_millis(),
                            consumer.describe(),
                            fp(&key),
                        ));
                    }
                    let pair = (consumer.describe(), key.clone());
                    let judged = match fake.key(&key) {
                        None => Some(format!(
                            "invariant 2: {} held {}, a key the provider never issued",
                            consumer.describe(),
                            fp(&key)
                        )),
                        Some(k) => k.deleted.filter(|d| *d < began).map(|deleted| {
                            format!(
                                    "invariant 2: {} held {} ({}, hash {}) {:?} after the provider deleted it",
                                    consumer.describe(),
                                    fp(&key),
                                    k.name,
                                    &k.hash[..12],
                                began - deleted
                            )
                        }),
                    };
                    if let Some(violation) = judged {
                        if !reported.contains(&pair) {
                            reported.push(pair);
                            violations.push(violation);
                        }
                    }
                    if !seen.contains(&key) {
                        seen.push(key);
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            (seen, violations)
        });
        Poller {
            stop,
            changes,
            thread: Some(thread),
        }
    }

    /// Stops the poller: the keys it saw, and its violations.
    pub fn stop(&mut self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(thread) => thread.join().unwrap(),
            None => (Vec::new(), Vec::new()),
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A CLI process started in the background; killed and reaped on drop.
pub struct Cli {
    pub what: String,
    child: Option<Child>,
    pub started: Instant,
}

/// How a background CLI process ended.
pub struct Ended {
    pub what: String,
    /// `Some(code)`, or `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .map(|c| c.try_wait().ok().flatten().is_some())
            .unwrap_or(true)
    }

    pub fn sigkill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    /// Waits for the exit (a hang after [`HANG_TIMEOUT`] is killed) and collects output.
    pub fn wait(mut self) -> Ended {
        let mut child = self.child.take().expect("not waited yet");
        let pid = child.id() as i32;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(HANG_TIMEOUT).is_err() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        });
        let _ = child.stdin.take();
        let out = child.wait_with_output().expect("wait for keyrotd");
        let _ = done_tx.send(());
        let _ = watchdog.join();
        Ended {
            what: self.what.clone(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One scratch installation: config, master key, database, two consumer files, the fake
/// provider and a poller on the files; every process output is kept for the leak check.
pub struct Rig {
    pub env: Env,
    pub fake: FakeOpenRouter,
    pub consumers: Vec<Consumer>,
    pub poller: Poller,
    pub outputs: Mutex<Vec<String>>,
    /// What happened, in order, for the failure message.
    pub journal: Mutex<Vec<String>>,
    pub t0: Instant,
    /// The secret the installation starts with (made "in the dashboard", imported).
    pub seed: String,
    /// Extra `[[credential.deliver]]` sections after the file and env_file targets.
    pub extra_targets: String,
    /// Whether invariant 1 also requires every consumer to hold the current key at the end
    /// (not after a rotation that stopped for attention with both keys live).
    pub consumers_hold_current: bool,
    /// A `[store]` section (PostgreSQL) in place of the SQLite database, if any.
    pub store: Option<String>,
}

impl Rig {
    /// A fresh installation whose credential holds an imported key, delivered.
    pub fn new(fake_seed: u64) -> Rig {
        Rig::with_targets(fake_seed, |_| (String::new(), Vec::new()))
    }

    /// Like [`Rig::new`], with more targets: `extra(out_dir)` gives their config sections
    /// and the files their consumers read.
    pub fn with_targets(
        fake_seed: u64,
        extra: impl FnOnce(&Path) -> (String, Vec<Consumer>),
    ) -> Rig {
        Rig::build(fake_seed, None, extra)
    }

    /// Like [`Rig::new`], on the store a `[store]` section names (PostgreSQL).
    pub fn with_store(fake_seed: u64, store: String) -> Rig {
        Rig::build(fake_seed, Some(store), |_| (String::new(), Vec::new()))
    }

    fn build(
        fake_seed: u64,
        store: Option<String>,
        extra: impl FnOnce(&Path) -> (String, Vec<Consumer>),
    ) -> Rig {
        let fake = FakeOpenRouter::start(fake_seed);
        let env = Env::with_credentials(&[]);
        let out_dir = env.path().join("out");
        std::fs::create_dir(&out_dir).unwrap();
        std::fs::write(env.path().join("mgmt"), fake.management_key()).unwrap();
        let mut consumers = vec![
            Consumer::file(out_dir.join("key")),
            Consumer::env_file(out_dir.join("app.env"), VARIABLE),
        ];
        let (extra_targets, more) = extra(&out_dir);
        consumers.extend(more);
        fake.watch_consumers(consumers.clone());
        let seed = fake.add_key("dashboard-seed");
        let t0 = Instant::now();
        let rig = Rig {
            poller: Poller::start(fake.clone(), consumers.clone(), t0),
            env,
            fake,
            consumers,
            outputs: Mutex::new(Vec::new()),
            journal: Mutex::new(Vec::new()),
            t0,
            seed: seed.clone(),
            extra_targets,
            consumers_hold_current: true,
            store,
        };
        rig.configure("");
        // The env file also carries a line keyrotd must keep.
        std::fs::write(&rig.consumers[1].path, "LOG_LEVEL=info\n").unwrap();
        let out = rig.run(&["key", "import", CRED], &format!("{seed}\n"));
        assert_success(&out, "key import (first key)");
        rig
    }

    /// Writes the config; `rotation` adds lines to `[credential.rotation]` (a schedule).
    pub fn configure(&self, rotation: &str) {
        let text = format!(
            r#"[daemon]
listen_address = "127.0.0.1:0"
{database}
{lease}
{store}
[checks]
interval = "2s"

[[provider]]
name = "or"
kind = "openrouter"
base_url = "{base}"
management_key = {{ file = {mgmt} }}
timeout = "30s"

[[credential]]
name = "{CRED}"
provider = "or"
[credential.rotation]
grace = "{GRACE_SECONDS}s"
retry_backoff = "1s"
{rotation}
[[credential.deliver]]
kind = "file"
path = {file}

[[credential.deliver]]
kind = "env_file"
path = {env_file}
variable = "{VARIABLE}"
{extra}
"#,
            database = match self.store {
                Some(_) => String::new(),
                None => format!("database = {}", quoted(&self.env.database)),
            },
            // The PostgreSQL section sets its own leadership timing.
            store = self.store.as_deref().unwrap_or(LEADERSHIP),
            lease = lease_line(),
            base = self.fake.base_url(),
            mgmt = quoted(&self.env.path().join("mgmt")),
            file = quoted(&self.consumers[0].path),
            env_file = quoted(&self.consumers[1].path),
            extra = self.extra_targets,
        );
        write_atomically(&self.env.config, &text);
    }

    pub fn note(&self, line: String) {
        let at = self.t0.elapsed().as_millis();
        self.journal
            .lock()
            .unwrap()
            .push(format!("{at:>6} ms  {line}"));
    }

    pub fn keep(&self, text: String) {
        self.outputs.lock().unwrap().push(text);
    }

    /// Runs a command to completion (stdin given), keeping its output.
    pub fn run(&self, args: &[&str], stdin: &str) -> std::process::Output {
        let out = self.env.run_with_stdin(args, stdin);
        self.keep(stdout(&out));
        self.keep(stderr(&out));
        out
    }

    /// Starts a command in the background; `stdin` is written and closed at once.
    pub fn spawn(&self, args: &[&str], stdin: &str) -> Cli {
        let mut child = self
            .env
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyrotd");
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            let _ = input.write_all(stdin.as_bytes());
        }
        let what = args.join(" ");
        self.note(format!("spawn `{what}` pid {}", child.id()));
        Cli {
            what,
            child: Some(child),
            started: Instant::now(),
        }
    }

    /// Waits for a background command and records how it ended.
    pub fn reap(&self, cli: Cli) -> Ended {
        let pid = cli.pid();
        let ended = cli.wait();
        let how = match ended.code {
            Some(code) => format!("exit {code}"),
            None => "killed".to_string(),
        };
        let last = ended
            .stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .or_else(|| ended.stdout.lines().rfind(|l| !l.trim().is_empty()))
            .unwrap_or("")
            .to_string();
        self.note(format!(
            "`{}` pid {} ended: {how}: {}",
            ended.what,
            pid.unwrap_or(0),
            last
        ));
        self.keep(ended.stdout.clone());
        self.keep(ended.stderr.clone());
        ended
    }

    pub fn start_daemon(&self) -> Daemon {
        let daemon = self.env.start();
        self.note(format!("daemon started, pid {}", daemon.pid()));
        daemon
    }

    /// SIGKILLs a daemon and keeps its log.
    pub fn kill_daemon(&self, daemon: Daemon) {
        let pid = daemon.pid();
        let _ = kill(pid, Signal::SIGKILL);
        self.note(format!("daemon pid {pid} SIGKILLed"));
        self.keep(daemon.log());
        drop(daemon);
    }

    /// SIGTERMs a daemon and waits for its `stopped` line (a hang after [`STOP_TIMEOUT`]);
    /// keeps its log. Never judged here: a trial judges the promises, not the exit.
    pub fn stop_daemon(&self, daemon: Daemon) {
        let pid = daemon.pid();
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let stopped = wait_for(STOP_TIMEOUT, || {
            daemon
                .log()
                .lines()
                .any(|l| l.trim_end().ends_with("stopped"))
                .then_some(())
        });
        self.note(format!(
            "daemon pid {pid} SIGTERMed: {}",
            if stopped.is_some() {
                "stopped"
            } else {
                "hung, killed"
            }
        ));
        self.keep(daemon.log());
        drop(daemon);
    }

    pub fn show(&self) -> Value {
        let out = self.run(&["key", "show", CRED, "--json"], "");
        assert_success(&out, "key show");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn versions(&self) -> Vec<Value> {
        self.show()["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn history(&self) -> Vec<Value> {
        let out = self.run(&["key", "history", CRED, "--json"], "");
        assert_success(&out, "key history");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Whether a rotation is recorded as started and not yet finished, read from the audit
    /// trail (the one outside view of it): more `rotation_planned` than the events that end
    /// one (`promoted`, `rolled_back`, `rotation_failed`).
    pub fn in_flight(&self) -> bool {
        let events = self.history();
        let count = |kinds: &[&str]| {
            events
                .iter()
                .filter(|e| kinds.contains(&e["kind"].as_str().unwrap_or("")))
                .count()
        };
        // A rollback is a rotation of its own kind: planned, then `rolled_back` when done.
        count(&["rotation_planned"]) > count(&["promoted", "rolled_back", "rotation_failed"])
    }

    /// The `current` versions of `key list --json`.
    pub fn current_fingerprints(&self) -> Vec<String> {
        let out = self.run(&["key", "list", "--json"], "");
        assert_success(&out, "key list");
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["credential"] == CRED && r["stage"] == "current")
            .filter_map(|r| r["fingerprint"].as_str().map(String::from))
            .collect()
    }

    /// Waits (a hang after [`HANG_TIMEOUT`]) until no rotation is in flight; false on a hang.
    pub fn settle(&self) -> bool {
        wait_for(HANG_TIMEOUT, || (!self.in_flight()).then_some(())).is_some()
    }

    /// Waits until every previous key's recorded grace is over and the daemon had the chance
    /// to revoke it (it is revoked, or a bounded wait ran out: not an invariant of its own).
    pub fn wait_for_revocations(&self) {
        let due = |v: &Value| {
            v["stage"] == "previous"
                && v["provider_key_id"].is_string()
                && v["stage_changed_at"].as_i64().unwrap_or(0) + GRACE_SECONDS < now()
        };
        let end = self
            .versions()
            .iter()
            .filter(|v| v["stage"] == "previous")
            .filter_map(|v| v["stage_changed_at"].as_i64())
            .max();
        if let Some(end) = end {
            wait_for(HANG_TIMEOUT, || (now() > end + GRACE_SECONDS).then_some(()));
            let revoked = wait_for(Duration::from_secs(20), || {
                (!self.versions().iter().any(due)).then_some(())
            });
            if revoked.is_none() {
                self.note("previous keys past their grace are not revoked yet".into());
            }
        }
    }

    /// Invariants 1, 3 and 4 on the store and the provider now, and 2 and 5 over the whole
    /// run (stops the poller). Returns every violation, each naming its invariant.
    pub fn violations(&mut self) -> Vec<String> {
        let mut found = Vec::new();
        let versions = self.versions();
        let by_stage = |stage: &str| -> Vec<Value> {
            versions
                .iter()
                .filter(|v| v["stage"] == stage)
                .cloned()
                .collect()
        };
        let fake_keys = self.fake.keys();
        let fake_by_fp = |f: &str| fake_keys.iter().find(|k| fp(&k.secret) == f).cloned();

        // 1. Exactly one current key, live at the provider, and the one consumers hold.
        let current = self.current_fingerprints();
        if current.len() != 1 {
            found.push(format!(
                "invariant 1: {} current keys in the store: {current:?}",
                current.len()
            ));
        }
        for f in &current {
            match fake_by_fp(f) {
                None => found.push(format!(
                    "invariant 1: current key {f} unknown at the provider"
                )),
                Some(k) if k.deleted.is_some() => found.push(format!(
                    "invariant 1: current key {f} ({}, hash {}) was deleted at the provider",
                    k.name,
                    &k.hash[..12]
                )),
                Some(_) => {}
            }
        }
        if let [current] = current.as_slice() {
            let consumers = if self.consumers_hold_current {
                self.consumers.as_slice()
            } else {
                &[]
            };
            for consumer in consumers {
                let held = consumer.read_key().map(|k| fp(&k));
                if held.as_deref() != Some(current.as_str()) {
                    found.push(format!(
                        "invariant 1b: {} holds {held:?}, not the current key {current}",
                        consumer.describe()
                    ));
                }
            }
        }

        // 3. No orphan: every live keyrotd-named key is known to the store as pending,
        // current or previous (by provider id, or by fingerprint for a re-imported one).
        let known: Vec<&Value> = versions
            .iter()
            .filter(|v| {
                matches!(
                    v["stage"].as_str(),
                    Some("pending" | "current" | "previous")
                )
            })
            .collect();
        for key in self.fake.live_keys() {
            if !key.name.starts_with("keyrotd/") {
                continue;
            }
            let placed = known.iter().any(|v| {
                v["provider_key_id"].as_str() == Some(key.hash.as_str())
                    || v["fingerprint"].as_str() == Some(fp(&key.secret).as_str())
            });
            if !placed {
                found.push(format!(
                    "invariant 3: orphan at the provider: {} (hash {}, {}) is live but not pending/current/previous in the store",
                    key.name,
                    &key.hash[..12],
                    fp(&key.secret)
                ));
            }
        }

        // 4. No live key deleted that a consumer or the store still needed.
        for held in self.fake.deleted_while_held() {
            found.push(format!(
                "invariant 4: the provider deleted {} ({}, hash {}) while {} still held it",
                held.fingerprint,
                held.name,
                &held.hash[..12],
                held.consumer
            ));
        }
        for stage in ["current", "pending"] {
            for v in by_stage(stage) {
                let f = v["fingerprint"].as_str().unwrap_or("");
                if let Some(k) = fake_by_fp(f).filter(|k| k.deleted.is_some()) {
                    found.push(format!(
                        "invariant 4: the store's {stage} key {f} (version {}, {}) was deleted at the provider",
                        v["version"], k.name
                    ));
                }
            }
        }

        // 2. No consumer ever held a dead key (the poller's record).
        let (seen, poller) = self.poller.stop();
        found.extend(poller);

        // 5. Nothing leaked.
        let mut secrets = self.fake.secrets();
        secrets.extend(seen);
        let outputs = self.outputs.lock().unwrap().clone();
        for secret in &secrets {
            if outputs.iter().any(|o| o.contains(secret.as_str())) {
                found.push(format!(
                    "invariant 5: the secret {} leaked into a process's output",
                    fp(secret)
                ));
            }
        }
        found
    }

    /// The journal and the event log, for a failure message.
    pub fn diagnosis(&self) -> String {
        let journal = self.journal.lock().unwrap().join("\n");
        let events: Vec<String> = self
            .history()
            .iter()
            .map(|e| {
                format!(
                    "  {} {:<20} v{:<4} {:<14} {}",
                    e["at"],
                    e["kind"].as_str().unwrap_or(""),
                    e["version"],
                    e["actor"].as_str().unwrap_or(""),
                    e["detail"].as_str().unwrap_or("")
                )
            })
            .collect();
        let versions: Vec<String> = self
            .versions()
            .iter()
            .map(|v| {
                format!(
                    "  v{} {} {} provider id {}",
                    v["version"],
                    v["stage"],
                    v["fingerprint"].as_str().unwrap_or(""),
                    v["provider_key_id"]
                )
            })
            .collect();
        let keys: Vec<String> = self
            .fake
            .keys()
            .iter()
            .map(|k| {
                format!(
                    "  {} hash {} {} {}",
                    fp(&k.secret),
                    &k.hash[..12],
                    k.name,
                    match k.deleted {
                        Some(d) => format!("deleted at {} ms", (d - self.t0).as_millis()),
                        None => "live".into(),
                    }
                )
            })
            .collect();
        let changes: Vec<String> = self
            .poller
            .changes
            .lock()
            .unwrap()
            .iter()
            .map(|(at, consumer, f)| format!("{at:>6} ms  {consumer} now holds {f}"))
            .collect();
        format!(
            "journal:\n{journal}\nwhat the consumers held (poller):\n{}\nkey history --json:\n{}\nversions:\n{}\nprovider keys:\n{}",
            changes.join("\n"),
            events.join("\n"),
            versions.join("\n"),
            keys.join("\n")
        )
    }
}

/// The path of the consumer file (for tests that break one target).
pub fn target_dir(rig: &Rig) -> PathBuf {
    rig.consumers[0].path.parent().unwrap().to_path_buf()
}
