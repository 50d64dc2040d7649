//! The real daemon end to end: keys imported while it runs show up in /metrics and nowhere
//! else in clear; SIGHUP reloads (and survives a broken config); restarts keep state;
//! SIGTERM stops promptly; systemd notifications (READY, STOPPING, WATCHDOG) arrive.

mod common;

use common::*;
use keyrotd::simulator::{Op, Simulator};
use nix::sys::signal::Signal;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const AGE: &str = "keyrotd_key_age_seconds";
const CREATED: &str = "keyrotd_key_created_timestamp_seconds";
const EXPIRY: &str = "keyrotd_key_expiry_timestamp_seconds";
const EXPIRES_IN: &str = "keyrotd_key_expires_in_seconds";
const FAILURES: &str = "keyrotd_rotation_consecutive_failures";
/// 2030-01-01T00:00:00Z.
const EXPIRES_AT: i64 = 1_893_456_000;

#[test]
fn imported_key_shows_in_metrics_and_its_secret_nowhere() {
    let env = Env::with_credentials(&[CREDENTIAL, "or-file"]);
    let daemon = env.start();
    let secret = canary();
    let before = now();
    let import = env.import(
        CREDENTIAL,
        &secret,
        &["--expires-at", "2030-01-01T00:00:00Z"],
    );

    let metrics =
        daemon.wait_for_metrics("the imported key", |m| sample(m, AGE, CREDENTIAL).is_some());
    let after = now();
    for name in [AGE, CREATED, EXPIRY, EXPIRES_IN] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("credential=\"or-prod\""))
            .unwrap_or_else(|| panic!("no {name} for or-prod:\n{metrics}"));
        assert!(
            line.contains("credential=\"or-prod\",provider=\"or\""),
            "{line}"
        );
    }
    let created = sample(&metrics, CREATED, CREDENTIAL).unwrap() as i64;
    assert!((before..=after).contains(&created), "created {created}");
    let age = sample(&metrics, AGE, CREDENTIAL).unwrap();
    assert!(
        (0.0..=(after - before + 1) as f64).contains(&age),
        "age {age}"
    );
    assert_eq!(
        sample(&metrics, EXPIRY, CREDENTIAL),
        Some(EXPIRES_AT as f64)
    );
    let expires_in = sample(&metrics, EXPIRES_IN, CREDENTIAL).unwrap() as i64;
    assert!(
        (EXPIRES_AT - now() - 2..=EXPIRES_AT - before).contains(&expires_in),
        "expires_in {expires_in}"
    );

    // --from-file works too; the file is the operator's, outside the store.
    let key_file = env.path().join("incoming").join("key.txt");
    std::fs::create_dir(key_file.parent().unwrap()).unwrap();
    let file_secret = canary();
    std::fs::write(&key_file, format!("{file_secret}\n")).unwrap();
    let from_file = env.run(&[
        "key",
        "import",
        "or-file",
        "--from-file",
        key_file.to_str().unwrap(),
    ]);
    assert_success(&from_file, "key import --from-file");
    let metrics = daemon.wait_for_metrics("the key imported from a file", |m| {
        sample(m, AGE, "or-file").is_some()
    });
    assert_eq!(
        sample(&metrics, EXPIRY, "or-file"),
        None,
        "no expiry was given"
    );

    // A key on argv is not accepted (there is no such argument).
    let argv = env.run(&["key", "import", CREDENTIAL, "sk-or-v1-on-the-command-line"]);
    assert!(!argv.status.success(), "a key on argv was accepted");

    // Where the secrets must not appear.
    let mut outputs = vec![
        (
            "import output".to_string(),
            stdout(&import) + &stderr(&import),
        ),
        (
            "import --from-file output".into(),
            stdout(&from_file) + &stderr(&from_file),
        ),
        ("/metrics".into(), metrics),
    ];
    for args in [
        vec!["key", "list"],
        vec!["key", "list", "--json"],
        vec!["key", "show", CREDENTIAL],
        vec!["key", "show", CREDENTIAL, "--json"],
        vec!["key", "show", "or-file", "--json"],
        vec!["key", "history", CREDENTIAL],
        vec!["key", "history", CREDENTIAL, "--json"],
    ] {
        let out = env.run(&args);
        assert_success(&out, &args.join(" "));
        outputs.push((args.join(" "), stdout(&out) + &stderr(&out)));
    }
    outputs.push(("daemon log".into(), daemon.stop()));
    for (what, text) in &outputs {
        for secret in [&secret, &file_secret] {
            assert!(
                !text.contains(secret.as_str()),
                "the key leaked into {what}:\n{text}"
            );
            assert!(
                !text.contains("canary"),
                "part of the key leaked into {what}:\n{text}"
            );
        }
    }
    let files = env.database_files();
    assert!(files.iter().any(|f| f.ends_with("keyrotd.db")), "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [&secret, &file_secret] {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "the key is in clear in {}",
                file.display()
            );
        }
    }
}

#[test]
fn removed_credential_series_disappear_on_sighup() {
    let env = Env::with_credentials(&[CREDENTIAL, "or-old"]);
    env.import(CREDENTIAL, &canary(), &[]);
    env.import("or-old", &canary(), &[]);
    let daemon = env.start();
    let metrics = daemon.metrics();
    assert!(sample(&metrics, AGE, "or-old").is_some(), "{metrics}");

    env.write_config(&sections(&[CREDENTIAL]));
    daemon.signal(Signal::SIGHUP);
    let metrics = daemon.wait_for_metrics("or-old gone", |m| !has_credential(m, "or-old"));
    assert!(sample(&metrics, AGE, CREDENTIAL).is_some(), "{metrics}");
    daemon.wait_for_log("configuration reloaded", RELOAD_TIMEOUT);
    daemon.stop();
}

#[test]
fn state_survives_restart_and_a_broken_reload_keeps_the_running_config() {
    let env = Env::new();
    let secret = canary();
    env.import(CREDENTIAL, &secret, &["--expires-at", "2030-01-01"]);
    let daemon = env.start();
    assert_eq!(
        sample(&daemon.metrics(), EXPIRY, CREDENTIAL),
        Some(EXPIRES_AT as f64)
    );
    daemon.stop();

    // Restart: the store is the truth.
    let daemon = env.start();
    let metrics = daemon.metrics();
    assert_eq!(
        sample(&metrics, EXPIRY, CREDENTIAL),
        Some(EXPIRES_AT as f64)
    );
    assert!(sample(&metrics, AGE, CREDENTIAL).is_some());
    let list = env.run(&["key", "list", "--json"]);
    assert_success(&list, "key list");
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(list[0]["credential"], CREDENTIAL);
    assert_eq!(list[0]["stage"], "current");
    assert_eq!(list[0]["expires_at"], EXPIRES_AT);

    // A broken config: logged with its position, the running config stays.
    std::fs::write(
        &env.config,
        "[daemon]\nlisten_address = \"127.0.0.1:0\"\n[[credential]\nname = \"x\"\n",
    )
    .unwrap();
    daemon.signal(Signal::SIGHUP);
    let log = daemon.wait_for_log("reload failed", RELOAD_TIMEOUT);
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    let position = format!("{}:3:", env.config.display());
    assert!(line.contains(&position), "no {position} in: {line}");
    let metrics = daemon.metrics();
    assert_eq!(
        sample(&metrics, EXPIRY, CREDENTIAL),
        Some(EXPIRES_AT as f64)
    );
    assert_eq!(daemon.get("/healthz").0, 200);

    // A later valid config is applied.
    env.write_config(&sections(&[CREDENTIAL, "or-new"]));
    daemon.signal(Signal::SIGHUP);
    let metrics = daemon.wait_for_metrics("the added credential", |m| {
        sample(m, FAILURES, "or-new").is_some()
    });
    assert!(sample(&metrics, AGE, CREDENTIAL).is_some(), "{metrics}");
    assert!(
        sample(&metrics, AGE, "or-new").is_none(),
        "or-new has no key"
    );

    // The daemon exits by itself (a hang is bounded by `stop`), without waiting out the
    // endpoint's drain period for a connection left open.
    let log = daemon.stop();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("connections still open after the drain period"),
        "{log}"
    );
    assert!(!log.contains(&secret));
}

/// How long a reload may take to show its effect: bounds a hang only.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A config for the credential on the simulator `sim`: checked every second and rotated
/// every second, so both keep happening while the test watches. `extra` goes into the
/// provider section.
fn simulated(sim: &Simulator, management_key: &std::path::Path, extra: &str) -> String {
    format!(
        r#"[checks]
interval = "1s"
jitter = 0.0

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt:?} }}
timeout = "10s"
{extra}
[[credential]]
name = "{CREDENTIAL}"
provider = "sim"
[credential.rotation]
schedule = "* * * * * *"
retry_backoff = "1s"
"#,
        base = sim.base_url(),
        mgmt = management_key.display().to_string(),
    )
}

/// Waits until `count()` reaches `at_least`.
fn wait_for_count(what: &str, at_least: u64, count: impl Fn() -> u64, daemon: &Daemon) {
    wait_for(RELOAD_TIMEOUT, || (count() >= at_least).then_some(())).unwrap_or_else(|| {
        panic!(
            "{what}: {} < {at_least} within {RELOAD_TIMEOUT:?}:\n{}",
            count(),
            daemon.log()
        )
    });
}

/// A config that parses and validates (`check-config` accepts it) but whose provider cannot
/// be built (its management key file is missing) is refused at SIGHUP: the checks and the
/// rotations go on under the running config, at the provider it names, and nothing reaches
/// the provider the refused config names. A later good config is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_providers_cannot_be_built_keeps_checking_and_rotating() {
    let localhost = "127.0.0.1:0".parse().unwrap();
    let (old, _) = Simulator::start(localhost).await.unwrap();
    let (new, _) = Simulator::start(localhost).await.unwrap();
    let env = Env::new();
    let old_key = env.path().join("old-mgmt");
    std::fs::write(&old_key, old.management_key()).unwrap();
    let new_key = env.path().join("new-mgmt");
    std::fs::write(&new_key, new.management_key()).unwrap();
    env.write_config(&simulated(&old, &old_key, ""));
    let secret = canary();
    old.add_key(&secret);
    env.import(CREDENTIAL, &secret, &[]);
    let daemon = env.start();
    wait_for_count(
        "checks at the old provider",
        1,
        || old.request_count(Op::Check),
        &daemon,
    );
    wait_for_count(
        "rotations at the old provider",
        1,
        || old.request_count(Op::Issue),
        &daemon,
    );

    // Parses and validates, but the provider cannot be built.
    let missing = env.path().join("no-such-management-key");
    let refused = simulated(&new, &missing, "");
    env.write_config(&refused);
    let check_config = env.run(&["check-config"]);
    assert_success(&check_config, "check-config of the refused config");
    daemon.signal(Signal::SIGHUP);
    let log = daemon.wait_for_log("reload failed", RELOAD_TIMEOUT);
    let line = log.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("keeping the running configuration"), "{line}");
    assert!(
        line.contains("provider \"sim\""),
        "the provider is not named: {line}"
    );
    assert!(
        line.contains(&missing.display().to_string()),
        "the missing file is not named: {line}"
    );

    // Counted from the refusal on: checks and rotations go on at the old provider.
    let checks = old.request_count(Op::Check);
    let issued = old.request_count(Op::Issue);
    wait_for_count(
        "checks after the refusal",
        checks + 3,
        || old.request_count(Op::Check),
        &daemon,
    );
    wait_for_count(
        "rotations after the refusal",
        issued + 3,
        || old.request_count(Op::Issue),
        &daemon,
    );
    for op in [Op::Check, Op::Issue, Op::List, Op::Revoke] {
        assert_eq!(
            new.request_count(op),
            0,
            "{op:?} reached the refused config's provider"
        );
    }
    assert_eq!(daemon.get("/readyz").0, 200);

    // A good config: checks and rotations move to the provider it names.
    env.write_config(&simulated(&new, &new_key, ""));
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("configuration reloaded", RELOAD_TIMEOUT);
    wait_for_count(
        "checks at the new provider",
        1,
        || new.request_count(Op::Check),
        &daemon,
    );
    wait_for_count(
        "rotations at the new provider",
        1,
        || new.request_count(Op::Issue),
        &daemon,
    );

    let log = daemon.stop();
    assert!(!log.contains(&secret), "the key leaked into the log");
    old.shutdown().await;
    new.shutdown().await;
}

/// How long a notification may take to arrive: bounds a hang only.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads datagrams until one contains the line `needle`.
fn wait_for_datagram(socket: &UnixDatagram, needle: &str) {
    let deadline = Instant::now() + NOTIFY_TIMEOUT;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(len) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
            if message.lines().any(|l| l == needle) {
                return;
            }
            seen.push(message);
        }
    }
    panic!("no {needle:?} within {NOTIFY_TIMEOUT:?}; got {seen:?}");
}

/// The real binary talks to systemd: READY, then WATCHDOG pings (they keep coming), then
/// STOPPING. That pings stop while the heartbeat is stale, and resume with it, is shown in
/// process with a paused clock (`daemon::tests` in the library), where a stall takes no
/// real time.
#[test]
fn systemd_notifications_ready_watchdog_stopping() {
    let env = Env::new();
    let socket_path = env.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut command = env.command();
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000");
    let daemon = Daemon::start(command);
    wait_for_datagram(&socket, "READY=1");
    // A ping every second: several in a row arrive, each awaited as an event.
    for _ in 0..4 {
        wait_for_datagram(&socket, "WATCHDOG=1");
    }
    daemon.signal(Signal::SIGTERM);
    wait_for_datagram(&socket, "STOPPING=1");
    daemon.stop_after_signal();
}

/// The value of an unlabelled series in a scrape.
fn plain(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `keyrotd reload --pid` is what `systemctl reload` runs: a broken config fails the
/// command itself with its position and the daemon is not even signalled; a good one is
/// applied. A broken config that reaches the daemon anyway (SIGHUP) shows in
/// `keyrotd_config_last_reload_successful`, and the last success keeps its time.
#[test]
fn reload_checks_the_config_before_it_signals_and_failures_are_a_metric() {
    const OK: &str = "keyrotd_config_last_reload_successful";
    const AT: &str = "keyrotd_config_last_reload_success_timestamp_seconds";
    let env = Env::new();
    let daemon = env.start();
    let pid = daemon.pid().to_string();
    let metrics = daemon.metrics();
    assert_eq!(plain(&metrics, OK), Some(1.0), "{metrics}");
    let started_at = plain(&metrics, AT).expect("a start-up load time");
    assert!(started_at > 0.0);

    // Broken: exit 78 with the position, no signal (no reload attempt in the log).
    let good = std::fs::read_to_string(&env.config).unwrap();
    let broken = good.replace("[[credential]]", "[[credential]\n");
    std::fs::write(&env.config, &broken).unwrap();
    let out = env.run(&["reload", "--pid", &pid]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{}:", env.config.display())),
        "no position: {}",
        stderr(&out)
    );
    assert_eq!(plain(&daemon.metrics(), OK), Some(1.0));

    // The same file by SIGHUP: the daemon refuses it, and says so on /metrics. Its log
    // holds this one refusal only: the command above never signalled.
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("reload failed", RELOAD_TIMEOUT);
    let metrics = daemon.wait_for_metrics("the failed reload", |m| plain(m, OK) == Some(0.0));
    assert_eq!(plain(&metrics, AT), Some(started_at));
    assert_eq!(
        daemon.log().matches("reload failed").count(),
        1,
        "{}",
        daemon.log()
    );

    // Good again: `keyrotd reload` signals, the daemon applies it. The success time counts
    // whole seconds: let one pass so the new one is later than the start-up's.
    std::thread::sleep(Duration::from_millis(1100));
    env.write_config(&sections(&[CREDENTIAL, "or-new"]));
    let out = env.run(&["reload", "--pid", &pid]);
    assert_success(&out, "keyrotd reload");
    let metrics = daemon.wait_for_metrics("the successful reload", |m| {
        plain(m, OK) == Some(1.0) && sample(m, FAILURES, "or-new").is_some()
    });
    assert!(plain(&metrics, AT).unwrap() > started_at, "{metrics}");

    // A pid that would signal a process group or init is refused by the parser.
    for pid in ["0", "1"] {
        let out = env.run(&["reload", "--pid", pid]);
        assert_eq!(out.status.code(), Some(2), "--pid {pid}: {}", stderr(&out));
    }
    daemon.stop();
}
