//! Shared helpers for the integration tests: a scratch directory with a config, a master key
//! and a database; a way to run `keyrotd` commands; and [`Daemon`], a running `keyrotd run`
//! with its log captured, its port parsed from the `keyrotd ready` line, and a clean stop;
//! and the one way a test skips, [`skip_or_fail`] (a failure under `KEYROTD_REQUIRE_TOOLS`).
//!
//! Every test file includes this module (`mod common;`) and uses only part of it.
#![allow(dead_code)]

pub mod backends;
pub mod pg;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: `$KEYROTD_TEST_BIN` if set (useful when several checkouts share
/// one `CARGO_TARGET_DIR` and so one `target/debug/keyrotd`), else the one cargo built.
pub fn bin() -> PathBuf {
    std::env::var_os("KEYROTD_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_keyrotd")))
}

/// How long a test waits for something that must happen before it calls it a hang. Only a
/// bound on a hang, never a judgement of speed: every wait on it ends at the event it waits
/// for (a log line, a metric, an exit), and a busy machine only makes that event later.
pub const HANG_TIMEOUT: Duration = Duration::from_secs(60);
/// The rotation lease of every test config: short, so a rotation whose process was killed
/// is taken over within seconds rather than the default minute.
pub const ROTATION_LEASE: &str = "rotation_lease = \"5s\"";
/// The leadership timing of every test config: short, so a daemon started after one was
/// killed (its lease never released) leads within seconds rather than the default 15.
pub const LEADERSHIP: &str =
    "[store]\nleader_lease = \"3s\"\nleader_renew_interval = \"1s\"\nleader_renew_deadline = \"2s\"\n";

/// How long a daemon may take to become ready or to stop before the test calls it a hang.
pub const START_TIMEOUT: Duration = HANG_TIMEOUT;
pub const STOP_TIMEOUT: Duration = HANG_TIMEOUT;

/// The default test config: one OpenRouter provider and one credential.
pub const PROVIDER: &str = "or";
pub const CREDENTIAL: &str = "or-prod";

/// Where the default test provider points: a loopback port nothing listens on, so a
/// daemon that checks a key gets "connection refused" at once and no test ever reaches the
/// real vendor.
pub const UNREACHABLE_PROVIDER: &str = "http://127.0.0.1:9/api/v1";

/// `[[provider]]` + `[[credential]]` sections for `credentials` (all on provider `or`).
pub fn sections(credentials: &[&str]) -> String {
    let mut text = format!(
        "[[provider]]\nname = \"or\"\nkind = \"openrouter\"\nbase_url = \"{UNREACHABLE_PROVIDER}\"\n"
    );
    for name in credentials {
        text.push_str(&format!(
            "\n[[credential]]\nname = \"{name}\"\nprovider = \"or\"\n"
        ));
    }
    text
}

/// A unique fake key that must never show up anywhere but the sealed store.
pub fn canary() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    format!("sk-or-v1-canary-{}", hex::encode(bytes))
}

/// A scratch directory with `config.toml`, `master.key` and (once used) `keyrotd.db`.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub database: PathBuf,
    pub master_key: PathBuf,
}

impl Env {
    /// A config with the default credential and a freshly generated master key.
    pub fn new() -> Env {
        Env::with_credentials(&[CREDENTIAL])
    }

    pub fn with_credentials(credentials: &[&str]) -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let env = Env {
            config: dir.path().join("config.toml"),
            database: dir.path().join("keyrotd.db"),
            master_key: dir.path().join("master.key"),
            dir,
        };
        env.write_config(&sections(credentials));
        let out = env.run(&["master-key", "generate", env.master_key.to_str().unwrap()]);
        assert_success(&out, "master-key generate");
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes the config: a `[daemon]` section (port 0, the database here) plus `body`.
    pub fn write_config(&self, body: &str) {
        let text = format!(
            "[daemon]\nlisten_address = \"127.0.0.1:0\"\ndatabase = \"{}\"\n{ROTATION_LEASE}\n\n{LEADERSHIP}\n{body}",
            self.database.display()
        );
        write_atomically(&self.config, &text);
    }

    /// The binary with this env's config and master key; no inherited keyrotd/systemd state.
    pub fn command(&self) -> Command {
        let mut command = bare_command();
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--master-key")
            .arg(&self.master_key);
        command
    }

    /// Runs a command to completion with empty stdin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run_command(self.command().args(args), stdin)
    }

    /// Imports `secret` for `credential` through stdin; panics on failure.
    pub fn import(&self, credential: &str, secret: &str, extra: &[&str]) -> Output {
        let mut args = vec!["key", "import", credential];
        args.extend_from_slice(extra);
        let out = self.run_with_stdin(&args, &format!("{secret}\n"));
        assert_success(&out, "key import");
        out
    }

    /// Starts `keyrotd run` and waits for it to be ready.
    pub fn start(&self) -> Daemon {
        Daemon::start(self.command())
    }

    /// Database files (`*.db`, `*-wal`, `*-shm`) in the scratch directory.
    pub fn database_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.ends_with(".db") || name.ends_with("-wal") || name.ends_with("-shm")
            })
            .collect();
        files.sort();
        files
    }
}

/// The binary with a clean environment for keyrotd and systemd variables.
pub fn bare_command() -> Command {
    let mut command = Command::new(bin());
    for var in [
        "KEYROTD_CONFIG",
        "KEYROTD_DATABASE",
        "KEYROTD_MASTER_KEY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "STATE_DIRECTORY",
        "CREDENTIALS_DIRECTORY",
        "KEYROTD_CREDSTORE_PATH",
        "SYSTEMD_CREDENTIAL_SECRET",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command.env("USER", "tester").env_remove("SUDO_USER");
    command
}

/// Runs to completion, feeding `stdin`, with a timeout so a hang fails instead of blocking.
pub fn run_command(command: &mut Command, stdin: &str) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyrotd");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(HANG_TIMEOUT).is_err() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    });
    let out = child.wait_with_output().expect("wait for keyrotd");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let _ = writer.join();
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// Writes through a temp file and rename, so a daemon re-reading it never sees half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// Polls `probe` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `keyrotd run`, killed on drop if a test did not stop it.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    pub port: u16,
}

impl Daemon {
    /// Spawns `command run`, captures stderr, waits for `keyrotd ready listen_address=…`.
    pub fn start(mut command: Command) -> Daemon {
        command.arg("run");
        Daemon::spawn(command)
    }

    /// Like [`Daemon::start`] for a command line that is complete already (`demo ...`).
    pub fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyrotd run");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            log,
            reader: Some(reader),
            port: 0,
        };
        let port = wait_for(START_TIMEOUT, || {
            if let Some(port) = ready_port(&daemon.log()) {
                return Some(Ok(port));
            }
            match daemon.child.as_mut().unwrap().try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => None,
            }
        });
        match port {
            Some(Ok(port)) => daemon.port = port,
            Some(Err(status)) => {
                daemon.join_reader();
                panic!("keyrotd exited before ready ({status}):\n{}", daemon.log())
            }
            None => panic!(
                "keyrotd not ready within {START_TIMEOUT:?}:\n{}",
                daemon.log()
            ),
        }
        daemon
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; returns the whole log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        wait_for(timeout, || {
            let log = self.log();
            log.contains(needle).then_some(log)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.log()
            )
        })
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("send signal");
    }

    /// GET `path` on the daemon's port: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }

    /// The body of a successful `/metrics` scrape.
    pub fn metrics(&self) -> String {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Polls `/metrics` until `predicate` holds (a hang after [`HANG_TIMEOUT`]); returns
    /// that scrape.
    pub fn wait_for_metrics(&self, what: &str, predicate: impl Fn(&str) -> bool) -> String {
        wait_for(HANG_TIMEOUT, || {
            let body = self.metrics();
            predicate(&body).then_some(body)
        })
        .unwrap_or_else(|| panic!("metrics never showed {what}:\n{}", self.metrics()))
    }

    /// SIGTERM, then asserts that the daemon exits by itself with status 0; returns the
    /// full log.
    pub fn stop(self) -> String {
        self.signal(Signal::SIGTERM);
        self.stop_after_signal()
    }

    /// Asserts that the daemon exits by itself, with status 0, after a SIGTERM already
    /// sent. Nothing kills it first: a daemon that ignored the signal would still be
    /// running at [`STOP_TIMEOUT`] (a hang), and one that died of a signal or an error
    /// would not exit 0.
    pub fn stop_after_signal(mut self) -> String {
        let status = self.wait_exit(STOP_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "keyrotd still running {STOP_TIMEOUT:?} after SIGTERM:\n{}",
                self.log()
            )
        });
        self.join_reader();
        assert!(
            status.success(),
            "keyrotd exited with {status} after SIGTERM:\n{}",
            self.log()
        );
        self.log()
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.child = None;
        }
        status
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The port of `listen_address=127.0.0.1:PORT` on the `keyrotd ready` line, if logged yet.
fn ready_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("keyrotd ready"))?;
    // Human format `listen_address=ADDR`, or JSON `"listen_address":"ADDR"`.
    let rest = match line.find("listen_address=") {
        Some(at) => &line[at + "listen_address=".len()..],
        None => {
            let key = "\"listen_address\":\"";
            &line[line.find(key)? + key.len()..]
        }
    };
    let address = rest
        .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
        .next()?;
    address.rsplit(':').next()?.parse().ok()
}

/// Whether a skip fails the test instead: `KEYROTD_REQUIRE_TOOLS` is set to anything but the
/// empty string or `0` (`.ci/run` sets it to `1`). The scripts under `tests/` apply the same
/// rule in bash, and [`run_script`] hands them this decision.
pub fn require_tools() -> bool {
    std::env::var_os("KEYROTD_REQUIRE_TOOLS").is_some_and(|value| !value.is_empty() && value != "0")
}

/// Every skip in the suite goes through here, so each one says the same thing: it prints
/// `SKIPPED (TEST): REASON`, or, under [`require_tools`], fails the test with the reason.
/// The caller returns from the test after it.
///
/// The line goes straight to the process's stderr, past the test harness's output capture,
/// so a plain `cargo test` shows it too (not only `--nocapture`).
pub fn skip_or_fail(reason: &str) {
    if require_tools() {
        panic!("{reason} (KEYROTD_REQUIRE_TOOLS is set, so this is a failure, not a skip)");
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let _ = writeln!(std::io::stderr(), "SKIPPED ({test}): {reason}");
}

/// Whether an external tool is on `PATH`; when it is not, [`skip_or_fail`] says so (the
/// caller then returns).
pub fn tool_available(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        skip_or_fail(&format!("{tool} is not installed"));
    }
    found
}

/// Runs `bash SCRIPT ARGS` from the repository root with `envs`, and asserts that it
/// succeeded. The script is told the [`require_tools`] decision (`KEYROTD_REQUIRE_TOOLS=1` or
/// `0`), and every line it prints that starts with `SKIP` goes through [`skip_or_fail`]: it
/// shows in the test output, and fails the test under `KEYROTD_REQUIRE_TOOLS` even if the
/// script itself exited 0. Returns the script's stdout.
pub fn run_script(script: &str, args: &[&str], envs: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join(script))
        .args(args)
        .env(
            "KEYROTD_REQUIRE_TOOLS",
            if require_tools() { "1" } else { "0" },
        )
        .envs(envs.iter().copied())
        .current_dir(root)
        .output()
        .expect("bash runs");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({})\n--- stdout\n{out}\n--- stderr\n{err}",
        output.status
    );
    println!("{out}");
    for line in out.lines().chain(err.lines()) {
        if line.trim_start().starts_with("SKIP") {
            skip_or_fail(&format!("{script}: {}", line.trim()));
        }
    }
    out
}

/// A minimal HTTP/1.1 GET against 127.0.0.1 (no keep-alive): (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to keyrotd");
    stream.set_read_timeout(Some(HANG_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed status line: {head:?}"));
    (status, body.to_string())
}

/// The value of the series `name{...credential="C"...}` in a scrape, if present.
pub fn sample(metrics: &str, name: &str, credential: &str) -> Option<f64> {
    let label = format!("credential=\"{credential}\"");
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Whether any series in the scrape carries `credential="C"`.
pub fn has_credential(metrics: &str, credential: &str) -> bool {
    metrics.contains(&format!("credential=\"{credential}\""))
}

/// Whether `needle` occurs anywhere in `haystack` (bytes).
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// SHA-256 of a file, hex.
pub fn file_hash(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The value of the series `name{...}` carrying every `labels` pair (in any order), if present.
pub fn series(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(&format!("{name}{{")) && wanted.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
