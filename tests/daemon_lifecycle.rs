//! The real daemon end to end: keys imported while it runs show up in /metrics and nowhere
//! else in clear; SIGHUP reloads (and survives a broken config); restarts keep state;
//! SIGTERM stops promptly; systemd notifications (READY, STOPPING, WATCHDOG) arrive.

mod common;

use common::*;
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
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(5));
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
    let log = daemon.wait_for_log("reload failed", Duration::from_secs(5));
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

    let started = Instant::now();
    let log = daemon.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(log.contains("stopped"), "{log}");
    assert!(!log.contains(&secret));
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
