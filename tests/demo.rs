//! `keyrotd demo`: starts with no config, reports its real port, shows both demo credentials
//! in `/metrics`, delivers their keys to 0600 files, rotates on `--schedule`, shows the flaky
//! provider's failures, stops cleanly on SIGTERM, and prints commands that run as printed.

mod common;

use common::{assert_success, bare_command, run_command, series, stdout, wait_for, Daemon};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CREDENTIALS: [&str; 2] = ["demo-app", "demo-batch"];

#[test]
fn demo_help_documents_the_schedule_and_its_default() {
    let out = run_command(bare_command().args(["demo", "--help"]), "");
    assert_success(&out, "demo --help");
    let help = stdout(&out);
    assert!(help.contains("--schedule <CRON>"), "{help}");
    assert!(help.contains("[default: \"* * * * *\"]"), "{help}");
}

#[test]
fn demo_runs_rotates_on_its_schedule_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = bare_command();
    command.args([
        "demo",
        "--dir",
        dir.path().to_str().unwrap(),
        "--listen-address",
        "127.0.0.1:0",
        "--schedule",
        "*/2 * * * * *",
    ]);
    // `keyrotd ready` names the real port, not :0 (Daemon::spawn parses it and fails if not).
    let daemon = Daemon::spawn(command);
    assert_ne!(daemon.port, 0);

    assert_expiry_gauges_of_both_credentials(&daemon);
    let app_key = dir.path().join("demo-app.key");
    let batch_key = dir.path().join("demo-batch.key");
    assert_keys_delivered_to_private_files(&daemon, &app_key, &batch_key);
    assert_the_schedule_rotates_again(&daemon, &app_key);
    assert_a_flaky_failure_keeps_the_key(&daemon, &batch_key);

    let log = daemon.stop();
    assert!(
        log.contains("rotation failed; the current key stays"),
        "the flaky provider's failure is not in the log"
    );
    // The delivered keys never reach the log.
    for file in [&app_key, &batch_key] {
        let key = std::fs::read_to_string(file).unwrap();
        assert!(!log.contains(key.trim()), "the log carries a demo key");
    }
}

fn assert_expiry_gauges_of_both_credentials(daemon: &Daemon) {
    let metrics = wait_for(common::HANG_TIMEOUT, || {
        let m = daemon.metrics();
        CREDENTIALS
            .iter()
            .all(|c| {
                [
                    "keyrotd_key_age_seconds",
                    "keyrotd_key_expiry_timestamp_seconds",
                    "keyrotd_key_expires_in_seconds",
                ]
                .iter()
                .all(|name| series(&m, name, &[("credential", c)]).is_some())
            })
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "no age/expiry gauges for both credentials:\n{}",
            daemon.metrics()
        )
    });
    for credential in CREDENTIALS {
        let expires_in = series(
            &metrics,
            "keyrotd_key_expires_in_seconds",
            &[("credential", credential)],
        )
        .unwrap();
        // Demo keys live three hours.
        assert!(
            expires_in > 0.0 && expires_in <= 3.0 * 3600.0,
            "{expires_in}"
        );
    }
}

/// Keys are delivered at the first rotation, to 0600 files.
fn assert_keys_delivered_to_private_files(daemon: &Daemon, app_key: &Path, batch_key: &Path) {
    wait_for(Duration::from_secs(30), || {
        (app_key.exists() && batch_key.exists()).then_some(())
    })
    .unwrap_or_else(|| panic!("delivered key files never appeared:\n{}", daemon.log()));
    for file in [app_key, batch_key] {
        let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        let text = std::fs::read_to_string(file).unwrap();
        assert!(text.trim().starts_with("sim-"), "not a demo key");
    }
}

/// The schedule fires again: a counted success and a new key in the file.
fn assert_the_schedule_rotates_again(daemon: &Daemon, app_key: &Path) {
    let first = common::file_hash(app_key);
    wait_for(common::HANG_TIMEOUT, || {
        (common::file_hash(app_key) != first).then_some(())
    })
    .unwrap_or_else(|| panic!("demo-app.key never changed:\n{}", daemon.log()));
    let m = daemon.wait_for_metrics("a successful rotation", |m| {
        series(
            m,
            "keyrotd_rotations_total",
            &[("credential", "demo-app"), ("result", "success")],
        )
        .is_some_and(|v| v >= 1.0)
    });
    assert!(
        series(
            &m,
            "keyrotd_key_last_rotation_timestamp_seconds",
            &[("credential", "demo-app")]
        )
        .is_some(),
        "{m}"
    );
}

/// The flaky provider fails its fourth key issue: the failure is counted and the key
/// delivered before it stays in place.
fn assert_a_flaky_failure_keeps_the_key(daemon: &Daemon, batch_key: &Path) {
    let batch_key_text = wait_for(Duration::from_secs(30), || {
        let m = daemon.metrics();
        series(
            &m,
            "keyrotd_rotations_total",
            &[("credential", "demo-batch"), ("result", "failure")],
        )
        .is_some_and(|v| v >= 1.0)
        .then(|| std::fs::read_to_string(batch_key).unwrap())
    })
    .unwrap_or_else(|| panic!("demo-batch never failed a rotation:\n{}", daemon.log()));
    assert!(batch_key_text.trim().starts_with("sim-"), "not a demo key");
}

#[test]
fn demo_rejects_a_bad_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_command(
        bare_command().args([
            "demo",
            "--dir",
            dir.path().to_str().unwrap(),
            "--listen-address",
            "127.0.0.1:0",
            "--schedule",
            "every tuesday",
        ]),
        "",
    );
    assert!(!out.status.success(), "a bad --schedule was accepted");
    let err = common::stderr(&out);
    assert!(err.contains("cron expression \"every tuesday\""), "{err}");
}

/// A PATH with the usual system directories and without the binary under test.
const PATH_WITHOUT_KEYROTD: &str = "/usr/bin:/bin";

/// A running demo, stopped (SIGTERM, then SIGKILL) when dropped, so a failing test leaves
/// no process behind.
struct RunningDemo(Child);

impl Drop for RunningDemo {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let stopped = wait_for(common::STOP_TIMEOUT, || self.0.try_wait().ok().flatten());
        if stopped.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts `keyrotd demo --dir DIR` with `path` as its PATH and returns it with the banner
/// it printed on stdout.
fn start_demo(dir: &Path, path: &str) -> (RunningDemo, String) {
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let mut child = bare_command()
        .args(["demo", "--listen-address", "127.0.0.1:0", "--dir"])
        .arg(dir)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn keyrotd demo");
    let stdout = child.stdout.take().unwrap();
    let demo = RunningDemo(child);
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = String::new();
    while !banner.contains("Press Ctrl-C to stop.") {
        match lines.recv_timeout(common::START_TIMEOUT) {
            Ok(line) => {
                banner.push_str(&line);
                banner.push('\n');
            }
            Err(_) => panic!(
                "no complete banner from the demo:\n{banner}\nlog:\n{}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            ),
        }
    }
    (demo, banner)
}

/// The banner's `key list` command, as a user would copy it.
fn key_list_command(banner: &str) -> &str {
    banner
        .lines()
        .map(str::trim)
        .find(|line| line.ends_with(" key list"))
        .unwrap_or_else(|| panic!("no `key list` command in the banner:\n{banner}"))
}

#[test]
fn demo_prints_commands_that_run_without_keyrotd_on_the_path() {
    let parent = tempfile::tempdir().unwrap();
    // A space in the state directory: the printed paths must be quoted to survive a shell.
    let dir = parent.path().join("demo state");
    let (_demo, banner) = start_demo(&dir, PATH_WITHOUT_KEYROTD);
    let command = key_list_command(&banner);

    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", PATH_WITHOUT_KEYROTD)
        .current_dir(parent.path())
        .output()
        .expect("run /bin/sh");
    assert_success(&out, &format!("the demo's {command:?}"));
    let listing = stdout(&out);
    for credential in CREDENTIALS {
        assert!(
            listing.contains(credential) && listing.contains("sha256:"),
            "no key of {credential} in the listing:\n{listing}"
        );
    }
}

#[test]
fn demo_prints_the_bare_name_when_keyrotd_on_the_path_is_this_binary() {
    let parent = tempfile::tempdir().unwrap();
    // Installed under another path: the comparison follows the link to the same file.
    let installed = parent.path().join("bin");
    std::fs::create_dir(&installed).unwrap();
    std::os::unix::fs::symlink(common::bin(), installed.join("keyrotd")).unwrap();
    let path = format!("{}:{PATH_WITHOUT_KEYROTD}", installed.display());
    let dir = parent.path().join("state");
    let (_demo, banner) = start_demo(&dir, &path);
    let command = key_list_command(&banner);
    assert_eq!(
        command,
        format!("keyrotd --config {}/keyrotd.toml key list", dir.display()),
        "{banner}"
    );
}

#[test]
fn demo_prints_metrics_commands_with_the_port_it_listens_on() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    // Started with `--listen-address 127.0.0.1:0`: the banner must not say `:0`.
    let (_demo, banner) = start_demo(&dir, PATH_WITHOUT_KEYROTD);
    let url = banner
        .lines()
        .map(str::trim)
        .find_map(|line| {
            let rest = line.strip_prefix("curl -s http://")?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .unwrap_or_else(|| panic!("no metrics curl in the banner:\n{banner}"));
    let (address, path) = url.split_once('/').expect("a host:port/path");
    assert_eq!(path, "metrics", "{banner}");
    let address: std::net::SocketAddr = address.parse().expect("host:port");
    assert_ne!(address.port(), 0, "{banner}");
    // The banner comes before the daemon listens: wait for the port, then for the series.
    let metrics = wait_for(common::HANG_TIMEOUT, || {
        std::net::TcpStream::connect(address).ok()?;
        let (status, body) = common::http_get(address.port(), "/metrics");
        (status == 200 && body.contains("keyrotd_key_age_seconds")).then_some(body)
    })
    .unwrap_or_else(|| panic!("the banner's {url} does not answer with metrics"));
    assert!(metrics.contains("demo-app"), "{metrics}");
}

#[test]
fn demo_prints_a_curl_that_reaches_the_simulator_through_the_relay() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("demo state");
    let (_demo, banner) = start_demo(&dir, PATH_WITHOUT_KEYROTD);
    let command = banner
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("curl ") && line.contains("/models"))
        .unwrap_or_else(|| panic!("no relay curl in the banner:\n{banner}"));
    // The token is in a 0600 header file, not on the command line.
    let header = std::fs::read_to_string(dir.join("relay.header")).unwrap();
    let token = header
        .trim()
        .strip_prefix("Authorization: Bearer ")
        .unwrap_or_else(|| panic!("not a header line: {header}"));
    assert!(!banner.contains(token), "the relay token is in the banner");
    let mode = std::fs::metadata(dir.join("relay.header"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // As a user would run it, comment included. The banner comes before the daemon is
    // ready: retried until the relay answers, bounded.
    let run = || {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .env("PATH", PATH_WITHOUT_KEYROTD)
            .current_dir(parent.path())
            .output()
            .expect("run /bin/sh");
        stdout(&out)
    };
    let answer = wait_for(common::START_TIMEOUT, || {
        let answer = run();
        (!answer.is_empty()).then_some(answer)
    })
    .unwrap_or_else(|| panic!("the relay never answered {command}"));
    assert!(
        answer.contains(r#""object":"list""#) && answer.contains("sim-small"),
        "{command}\n{answer}\n{}",
        std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
    );
    // Without the token the relay refuses, before any upstream call.
    let url = command
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap();
    let out = run_command(
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]),
        "",
    );
    assert_eq!(stdout(&out), "401");
}
