//! Crash safety with real processes: the test hosts the simulated provider, the real binary
//! rotates against it (`keyrotd key rotate` or `keyrotd run`), and the process is killed
//! with SIGKILL while the next external effect hangs. A restarted daemon must resume and end
//! in a working state: one current key, live at the provider and delivered, no orphaned
//! keys at the provider, and no secret in any output. A poller checks all along that the
//! delivered file always holds a key the provider accepts.
//!
//! Run with a multi-threaded runtime: the simulator keeps answering while the test body
//! blocks on child processes.

mod common;

use common::*;
use keyrotd::model::fingerprint;
use keyrotd::simulator::{Fault, Op, Simulator};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use secrecy::SecretString;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CRED: &str = "app";
/// The provider timeout: long enough that a hanging request is still hanging when the test
/// kills the process, and that no answer of the simulator on a busy machine is mistaken for
/// a timeout; shorter than the simulator's minute-long hang.
const PROVIDER_TIMEOUT: &str = "30s";
/// How long a test waits for an event before it calls it a hang.
const WAIT: Duration = HANG_TIMEOUT;

struct Rig {
    env: Env,
    sim: Simulator,
    key_file: PathBuf,
    seed: String,
    poller: Poller,
    /// Every stdout/stderr of every process, for the leak check.
    outputs: Mutex<Vec<String>>,
}

struct Options<'a> {
    timeout: &'a str,
    rotation: &'a str,
    /// Extra `[[credential.deliver]]` sections.
    targets: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            timeout: PROVIDER_TIMEOUT,
            rotation: "",
            targets: "",
        }
    }
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Rig {
    async fn new(options: Options<'_>) -> Rig {
        let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let env = Env::with_credentials(&[]);
        let key_file = env.path().join("out").join("key");
        std::fs::create_dir(env.path().join("out")).unwrap();
        std::fs::write(env.path().join("mgmt"), sim.management_key()).unwrap();
        let rig_seed = format!("sim-seed-canary-{}", &canary()[16..]);
        sim.add_key(&rig_seed);
        let rig = Rig {
            poller: Poller::start(sim.clone(), key_file.clone()),
            env,
            sim,
            key_file,
            seed: rig_seed,
            outputs: Mutex::new(Vec::new()),
        };
        rig.configure(&options);
        let out = rig.run_with_stdin(&["key", "import", CRED], &format!("{}\n", rig.seed));
        assert_success(&out, "key import");
        // The consumer holds the seed before keyrotd ever delivers.
        std::fs::write(&rig.key_file, format!("{}\n", rig.seed)).unwrap();
        rig
    }

    fn configure(&self, options: &Options<'_>) {
        let body = format!(
            r#"[checks]
interval = "1h"

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt} }}
timeout = "{timeout}"

[[credential]]
name = "{CRED}"
provider = "sim"
[credential.rotation]
retry_backoff = "1s"
{rotation}
[[credential.deliver]]
kind = "file"
path = {key}
{targets}
"#,
            base = self.sim.base_url(),
            mgmt = quoted(&self.env.path().join("mgmt")),
            timeout = options.timeout,
            rotation = options.rotation,
            key = quoted(&self.key_file),
            targets = options.targets,
        );
        self.env.write_config(&body);
    }

    fn record(&self, out: &Output) {
        let mut outputs = self.outputs.lock().unwrap();
        outputs.push(stdout(out));
        outputs.push(stderr(out));
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let out = self.env.run_with_stdin(args, stdin);
        self.record(&out);
        out
    }

    /// Starts `keyrotd key rotate app` without waiting for it.
    fn spawn_rotate(&self) -> Child {
        self.env
            .command()
            .args(["key", "rotate", CRED])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn key rotate")
    }

    fn sigkill(&self, child: Child) {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "the child finished before it was killed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        self.record(&out);
    }

    fn show(&self) -> Value {
        let out = self.run(&["key", "show", CRED, "--json"]);
        assert_success(&out, "key show");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn versions(&self) -> Vec<Value> {
        self.show()["versions"].as_array().unwrap().clone()
    }

    /// Fingerprints of the `current` rows of `key list --json`.
    fn current_fingerprints(&self) -> Vec<String> {
        let out = self.run(&["key", "list", "--json"]);
        assert_success(&out, "key list");
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["credential"] == CRED && r["stage"] == "current")
            .map(|r| r["fingerprint"].as_str().unwrap().to_string())
            .collect()
    }

    fn delivered(&self) -> String {
        std::fs::read_to_string(&self.key_file)
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }

    fn in_flight(&self) -> bool {
        let history = self.run(&["key", "history", CRED, "--json"]);
        let events: Value = serde_json::from_slice(&history.stdout).unwrap();
        let events = events.as_array().unwrap();
        let planned = events
            .iter()
            .filter(|e| e["kind"] == "rotation_planned")
            .count();
        let finished = events
            .iter()
            .filter(|e| e["kind"] == "promoted" || e["kind"] == "rotation_failed")
            .count();
        planned > finished
    }

    /// The promises after recovery: one current key, delivered and live; every keyrotd key
    /// live at the provider is known to the store as pending, current or previous.
    fn assert_working(&self) {
        let current = self.current_fingerprints();
        assert_eq!(current.len(), 1, "exactly one current key: {current:?}");
        let delivered = self.delivered();
        assert_eq!(
            fingerprint(&SecretString::from(delivered.clone())),
            current[0],
            "the delivered file holds the current key"
        );
        assert!(self.sim.is_live(&delivered), "the current key is not live");
        let known: Vec<String> = self
            .versions()
            .iter()
            .filter(|v| {
                matches!(
                    v["stage"].as_str(),
                    Some("pending" | "current" | "previous")
                )
            })
            .filter_map(|v| v["provider_key_id"].as_str().map(String::from))
            .collect();
        for (id, name) in self.sim.live_keys() {
            if name == "seeded" {
                continue; // imported by hand: no provider id to revoke it by
            }
            assert!(
                known.contains(&id),
                "orphan at the provider: {id} ({name}); the store knows {known:?}"
            );
        }
        assert!(!self.in_flight(), "a rotation is still in flight");
    }

    /// Stops the poller, checks it never saw a dead key, and that no secret leaked.
    fn finish(self, logs: &[String]) {
        let seen = self.poller.stop();
        let mut outputs = self.outputs.lock().unwrap().clone();
        outputs.extend_from_slice(logs);
        let mut secrets = seen;
        secrets.push(self.seed.clone());
        secrets.push(self.sim.management_key());
        for secret in &secrets {
            for output in &outputs {
                assert!(
                    !output.contains(secret.as_str()),
                    "a secret ({}) leaked into output:\n{output}",
                    fingerprint(&SecretString::from(secret.clone()))
                );
            }
        }
    }
}

/// Reads the delivered file every few milliseconds; every key it ever holds must be live.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Poller {
    fn start(sim: Simulator, path: PathBuf) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen: Vec<String> = Vec::new();
            let mut dead = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let key = text.trim_end().to_string();
                    if !key.is_empty() {
                        if !sim.is_live(&key) {
                            dead.push(fingerprint(&SecretString::from(key.clone())));
                        }
                        if !seen.contains(&key) {
                            seen.push(key);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (seen, dead)
        });
        Poller { stop, thread }
    }

    /// The keys seen; panics if the file ever held a dead key.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        let (seen, dead) = self.thread.join().unwrap();
        assert!(
            dead.is_empty(),
            "the delivered file held a key the provider refused: {dead:?}"
        );
        seen
    }
}

/// The wall clock in Unix seconds, as the daemon's clock reads it.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn wait_until(what: &str, mut probe: impl FnMut() -> bool) {
    assert!(
        wait_for(WAIT, || probe().then_some(())).is_some(),
        "timed out waiting for {what}"
    );
}

/// Starts the daemon, waits until nothing is in flight and the state works, stops it.
fn recover_with_daemon(rig: &Rig, logs: &mut Vec<String>) {
    let daemon = rig.env.start();
    wait_until("the resumed rotation to finish", || !rig.in_flight());
    rig.assert_working();
    let log = daemon.stop();
    assert!(log.contains("resuming rotation"), "{log}");
    logs.push(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_issue_the_orphan_is_deleted_on_restart() {
    let rig = Rig::new(Options::default()).await;
    rig.sim.fail_next(Op::Issue, Fault::HangAfterCreate, 1);
    let child = rig.spawn_rotate();
    wait_until("the key to be created at the provider", || {
        rig.sim
            .live_keys()
            .iter()
            .any(|(_, name)| name.starts_with("keyrotd/") && name.contains("/app/"))
    });
    rig.sigkill(child);
    let orphan = rig
        .sim
        .live_keys()
        .into_iter()
        .find(|(_, name)| name.starts_with("keyrotd/") && name.contains("/app/"))
        .unwrap();
    assert!(rig.in_flight());

    // The CLI does not take over another process's rotation: it says so.
    let again = rig.run(&["key", "rotate", CRED]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("in flight"), "{}", stderr(&again));

    let mut logs = Vec::new();
    recover_with_daemon(&rig, &mut logs);
    assert!(
        !rig.sim.live_keys().contains(&orphan),
        "the orphan {orphan:?} is still live"
    );
    let history = rig.run(&["key", "history", CRED, "--json"]);
    assert!(stdout(&history).contains("orphan_deleted"));
    assert_ne!(rig.delivered(), rig.seed, "the resumed rotation completed");
    rig.finish(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_verify_the_rotation_resumes_and_completes() {
    let rig = Rig::new(Options::default()).await;
    rig.sim.fail_next(Op::Check, Fault::Timeout, 1);
    let child = rig.spawn_rotate();
    wait_until("the verify request", || {
        rig.sim.request_count(Op::Check) >= 1
    });
    rig.sigkill(child);
    let pending: Vec<Value> = rig
        .versions()
        .into_iter()
        .filter(|v| v["stage"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1, "the issued key is stored before verify");
    assert_eq!(rig.delivered(), rig.seed, "nothing delivered before verify");

    let mut logs = Vec::new();
    recover_with_daemon(&rig, &mut logs);
    let current: Vec<Value> = rig
        .versions()
        .into_iter()
        .filter(|v| v["stage"] == "current")
        .collect();
    assert_eq!(
        current[0]["version"], pending[0]["version"],
        "the resumed rotation promoted the key it had issued"
    );
    rig.finish(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_delivery_the_rotation_resumes_with_the_fixed_hook() {
    let rig = Rig::new(Options::default()).await;
    let pid_file = rig.env.path().join("hook.pid");
    let hanging = format!(
        r#"[[credential.deliver]]
kind = "exec"
command = ["sh", "-c", "echo $$ > {}; exec sleep 30"]
timeout = "60s"
"#,
        pid_file.display()
    );
    rig.configure(&Options {
        targets: &hanging,
        ..Options::default()
    });
    let child = rig.spawn_rotate();
    wait_until("the hook to run", || pid_file.exists());
    let new = rig.delivered();
    assert_ne!(new, rig.seed, "the file target comes first");
    assert!(rig.sim.is_live(&new));
    rig.sigkill(child);
    // The hook runs in its own process group and outlives keyrotd: end it.
    let hook: i32 = wait_for(WAIT, || {
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    })
    .unwrap();
    let _ = kill(Pid::from_raw(hook), Signal::SIGKILL);

    rig.configure(&Options {
        targets: "[[credential.deliver]]\nkind = \"exec\"\ncommand = [\"true\"]\n",
        ..Options::default()
    });
    let mut logs = Vec::new();
    recover_with_daemon(&rig, &mut logs);
    assert_eq!(rig.delivered(), new, "the verified key was delivered again");
    rig.finish(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_revocation_the_revocation_completes_on_restart() {
    const GRACE_SECONDS: i64 = 1;
    let rotation = format!("grace = \"{GRACE_SECONDS}s\"");
    let rig = Rig::new(Options {
        rotation: &rotation,
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        let out = rig.run(&["key", "rotate", CRED]);
        assert_success(&out, "key rotate");
    }
    // The previous key now has a provider id; the seed was retired by the second rotation's
    // grace or stays previous: either way the issued previous key is the one to revoke.
    let previous = rig
        .versions()
        .into_iter()
        .find(|v| v["stage"] == "previous" && v["provider_key_id"].is_string())
        .expect("an issued previous key");
    let previous_id = previous["provider_key_id"].as_str().unwrap().to_string();
    assert!(rig.sim.live_keys().iter().any(|(id, _)| *id == previous_id));
    // The daemon revokes at start-up what the store says is past its grace period: wait
    // until the clock has passed the end of every previous key's grace, as recorded.
    let grace_end = rig
        .versions()
        .iter()
        .filter(|v| v["stage"] == "previous")
        .map(|v| v["stage_changed_at"].as_i64().unwrap() + GRACE_SECONDS)
        .max()
        .unwrap();
    wait_until("the grace period to end", || unix_now() >= grace_end);
    rig.sim.fail_next(Op::Revoke, Fault::Timeout, 1);

    let daemon = rig.env.start();
    wait_until("the revocation request", || {
        rig.sim.request_count(Op::Revoke) >= 1
    });
    daemon.signal(Signal::SIGKILL);
    let mut logs = vec![daemon.log()];
    drop(daemon);
    assert!(
        rig.sim.live_keys().iter().any(|(id, _)| *id == previous_id),
        "revoked although the request hung"
    );

    let daemon = rig.env.start();
    wait_until("the previous key to be revoked", || {
        !rig.sim.live_keys().iter().any(|(id, _)| *id == previous_id)
    });
    wait_until("the store to record it", || {
        rig.versions()
            .iter()
            .any(|v| v["provider_key_id"] == previous_id.as_str() && v["stage"] == "revoked")
    });
    let revoked = rig
        .versions()
        .into_iter()
        .find(|v| v["provider_key_id"] == previous_id.as_str())
        .unwrap();
    assert_eq!(revoked["has_secret"], false);
    rig.assert_working();
    logs.push(daemon.stop());
    rig.finish(&logs);
}

/// Injects or clears a fault.
type Action<'a> = Box<dyn Fn() + 'a>;

/// `keyrotd_rotation_consecutive_failures` for the credential, if exported yet.
fn failures(daemon: &Daemon) -> Option<f64> {
    sample(
        &daemon.metrics(),
        "keyrotd_rotation_consecutive_failures",
        CRED,
    )
}

fn rotations(daemon: &Daemon, result: &str) -> f64 {
    let metrics = daemon.metrics();
    metrics
        .lines()
        .filter(|l| l.starts_with("keyrotd_rotations_total{"))
        .filter(|l| l.contains(&format!("credential=\"{CRED}\"")))
        .filter(|l| l.contains(&format!("result=\"{result}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_daemon_alive_failures_at_each_step_are_retried() {
    let rig = Rig::new(Options {
        timeout: PROVIDER_TIMEOUT,
        // Due a few seconds after each rotation, so the daemon keeps rotating by itself; a
        // key the provider refuses is given up on after seconds, not the default half minute.
        rotation: "schedule = \"*/3 * * * * *\"\ngrace = \"1h\"\nverify_timeout = \"2s\"",
        targets: "",
    })
    .await;
    let flag = rig.env.path().join("hook-fails");
    let hook = format!(
        "[[credential.deliver]]\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", \"test ! -e {}\"]\n",
        flag.display()
    );
    rig.configure(&Options {
        timeout: PROVIDER_TIMEOUT,
        rotation: "schedule = \"*/3 * * * * *\"\ngrace = \"1h\"\nverify_timeout = \"2s\"",
        targets: &hook,
    });
    let daemon = rig.env.start();
    let mut logs = Vec::new();
    let wait_failures = |what: &str, predicate: &dyn Fn(f64) -> bool| {
        assert!(
            wait_for(WAIT, || { failures(&daemon).filter(|f| predicate(*f)) }).is_some(),
            "consecutive failures never {what}:\n{}\n{}",
            daemon.metrics(),
            daemon.log()
        );
    };

    let faults: [(&str, Action, Action); 3] = [
        (
            "issue",
            Box::new(|| rig.sim.fail_next(Op::Issue, Fault::ServerError, 2)),
            Box::new(|| {}),
        ),
        (
            "verify",
            Box::new(|| rig.sim.fail_next(Op::Issue, Fault::RejectNewKey, 1)),
            Box::new(|| {}),
        ),
        (
            "deliver",
            Box::new(|| std::fs::write(&flag, "").unwrap()),
            Box::new(|| std::fs::remove_file(&flag).unwrap()),
        ),
    ];
    for (step, inject, clear) in faults {
        wait_failures("reached 0", &|f| f == 0.0);
        let failed_before = rotations(&daemon, "failure");
        inject();
        if step == "deliver" {
            // The hook refuses the old key back too: the rotation waits in attention, both
            // keys live, until the hook works; only then is it wound up as failed.
            let attention = |value: f64| {
                sample(&daemon.metrics(), "keyrotd_rotation_needs_attention", CRED) == Some(value)
            };
            assert!(
                wait_for(WAIT, || attention(1.0).then_some(())).is_some(),
                "the failed restore never needed attention:\n{}",
                daemon.log()
            );
            rig.assert_working_key();
            clear();
            assert!(
                wait_for(WAIT, || (attention(0.0)
                    && rotations(&daemon, "failure") > failed_before)
                    .then_some(()))
                .is_some(),
                "the rotation needing attention was never wound up:\n{}",
                daemon.log()
            );
        } else {
            wait_failures(&format!("rose at {step}"), &|f| f >= 1.0);
            assert!(rotations(&daemon, "failure") > failed_before);
            rig.assert_working_key();
            clear();
        }
        wait_failures(&format!("went back to 0 after {step}"), &|f| f == 0.0);
    }
    assert!(rotations(&daemon, "success") >= 3.0);
    let log = daemon.stop();
    rig.assert_working();
    logs.push(log);
    rig.finish(&logs);
}

impl Rig {
    /// Weaker than [`Rig::assert_working`] while a daemon may be mid-rotation: the
    /// delivered key is live.
    fn assert_working_key(&self) {
        let delivered = self.delivered();
        assert!(self.sim.is_live(&delivered), "the delivered key is dead");
    }
}
