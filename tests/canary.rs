//! The canary suite: one unique key planted in an in-process simulated provider, then every
//! command and the daemon driven by the real binary (import, check, list/show/history, the
//! daemon's checks, rotate, a failed rotation, file and env_file delivery, rollback, SIGHUP,
//! JSON logs). Afterwards every byte the product wrote — each command's stdout and stderr,
//! the daemon logs, `/metrics`, every file under the state directory — is scanned for the
//! canary, the management key and every key issued later. Only the delivery targets may
//! hold them.

mod common;

use common::{assert_success, files_under, series, stdout, Env};
use keyrotd::simulator::{Fault, Op, Simulator};
use nix::sys::signal::Signal;
use rand::RngCore;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const CREDENTIAL: &str = "sim-prod";

/// Everything the product printed or served, labelled for the failure message.
#[derive(Default)]
struct Transcript {
    items: Vec<(String, Vec<u8>)>,
}

impl Transcript {
    fn output(&mut self, what: &str, out: &Output) {
        self.items
            .push((format!("{what}: stdout"), out.stdout.clone()));
        self.items
            .push((format!("{what}: stderr"), out.stderr.clone()));
    }

    fn text(&mut self, what: &str, text: &str) {
        self.items
            .push((what.to_string(), text.as_bytes().to_vec()));
    }

    /// Fails naming every place a secret showed up.
    fn assert_clean(&self, secrets: &[(&str, String)]) {
        let mut leaks = Vec::new();
        for (what, bytes) in &self.items {
            for (name, secret) in secrets {
                if common::contains_bytes(bytes, secret.as_bytes()) {
                    leaks.push(format!("{name} in {what}"));
                }
            }
        }
        assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    }
}

fn sim_canary() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("sim-canary-{}", hex::encode(bytes))
}

fn read_key(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

fn env_value(path: &Path, variable: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{variable}=")))
        .unwrap_or_else(|| panic!("no {variable} in the env file:\n{text}"))
        .trim_matches('"')
        .to_string()
}

fn show(env: &Env, transcript: &mut Transcript, what: &str) -> Value {
    let out = env.run(&["key", "show", CREDENTIAL, "--json"]);
    assert_success(&out, "key show --json");
    transcript.output(what, &out);
    serde_json::from_slice(&out.stdout).expect("key show --json is JSON")
}

/// The stage of the version whose fingerprint is `fingerprint`.
fn stage_of(shown: &Value, fingerprint: &str) -> String {
    shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["fingerprint"] == fingerprint)
        .unwrap_or_else(|| panic!("no version {fingerprint}: {shown:#}"))["stage"]
        .as_str()
        .unwrap()
        .to_string()
}

fn current_fingerprint(shown: &Value) -> String {
    shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["stage"] == "current")
        .unwrap_or_else(|| panic!("no current version: {shown:#}"))["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_ever_leaves_the_sealed_store_or_the_delivery_targets() {
    let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let canary = sim_canary();
    sim.add_key(&canary);

    let env = Env::with_credentials(&[]);
    // Delivery targets live outside the state directory: they are the one allowed place.
    let targets = tempfile::tempdir().unwrap();
    let key_file = targets.path().join("sim.key");
    let env_file = targets.path().join("app.env");
    std::fs::write(&env_file, "OTHER=1\n").unwrap();
    let management = env.path().join("sim.management-key");
    std::fs::write(&management, sim.management_key()).unwrap();
    env.write_config(&format!(
        r#"[checks]
interval = "1s"

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = "{management}" }}
timeout = "30s"

[[credential]]
name = "{CREDENTIAL}"
provider = "sim"
check_interval = "1s"
rotation = {{ grace = "1h", retry_backoff = "1h" }}
deliver = [
  {{ kind = "file", path = "{key_file}" }},
  {{ kind = "env_file", path = "{env_file}", variable = "SIM_API_KEY" }},
]
"#,
        base = sim.base_url(),
        management = management.display(),
        key_file = key_file.display(),
        env_file = env_file.display(),
    ));

    let mut t = Transcript::default();
    let mut issued: Vec<String> = Vec::new();

    // Import through stdin, then the read-only commands, in both forms.
    let out = env.import(CREDENTIAL, &canary, &[]);
    t.output("key import", &out);
    let out = env.run(&["check"]);
    assert_success(&out, "check");
    assert!(stdout(&out).contains("valid"), "{}", stdout(&out));
    t.output("check", &out);
    let out = env.run(&["check", "--json"]);
    assert_success(&out, "check --json");
    t.output("check --json", &out);
    for args in [
        &["key", "list"][..],
        &["key", "list", "--json"],
        &["key", "show", CREDENTIAL],
        &["key", "show", CREDENTIAL, "--json"],
        &["key", "history", CREDENTIAL],
        &["key", "history", CREDENTIAL, "--json"],
    ] {
        let out = env.run(args);
        assert_success(&out, &args.join(" "));
        t.output(&args.join(" "), &out);
    }
    let canary_fingerprint = current_fingerprint(&show(&env, &mut t, "key show (imported)"));

    // The daemon checks it.
    let daemon = env.start();
    let m = daemon.wait_for_metrics("a valid check", |m| {
        series(m, "keyrotd_key_valid", &[("credential", CREDENTIAL)]) == Some(1.0)
    });
    t.text("/metrics (first check)", &m);

    // A rotation issues a new key, delivers it to both targets; the canary becomes previous.
    let out = env.run(&["key", "rotate", CREDENTIAL]);
    assert_success(&out, "key rotate");
    t.output("key rotate", &out);
    let first = read_key(&key_file);
    assert_ne!(first, canary);
    assert_eq!(env_value(&env_file, "SIM_API_KEY"), first);
    assert!(std::fs::read_to_string(&env_file)
        .unwrap()
        .contains("OTHER=1"));
    assert!(sim.is_live(&first));
    issued.push(first.clone());
    let shown = show(&env, &mut t, "key show (rotated)");
    assert_eq!(stage_of(&shown, &canary_fingerprint), "previous");

    // A rotation the provider fails: an error, the rotated key stays current and delivered.
    sim.fail_next(Op::Issue, Fault::ServerError, 1);
    let out = env.run(&["key", "rotate", CREDENTIAL]);
    assert!(!out.status.success(), "a failed issue reported success");
    t.output("key rotate (failing)", &out);
    assert_eq!(read_key(&key_file), first);
    let shown = show(&env, &mut t, "key show (failed rotation)");
    assert_ne!(current_fingerprint(&shown), canary_fingerprint);

    // Rollback puts the canary back, delivered again.
    let out = env.run(&["key", "rollback", CREDENTIAL]);
    assert_success(&out, "key rollback");
    t.output("key rollback", &out);
    let shown = show(&env, &mut t, "key show (rolled back)");
    assert_eq!(current_fingerprint(&shown), canary_fingerprint);
    assert_eq!(read_key(&key_file), canary);
    assert_eq!(env_value(&env_file, "SIM_API_KEY"), canary);

    // Another rotation: a second issued key.
    let out = env.run(&["key", "rotate", CREDENTIAL]);
    assert_success(&out, "key rotate (after rollback)");
    t.output("key rotate (after rollback)", &out);
    let second = read_key(&key_file);
    assert!(second != canary && second != first);
    issued.push(second.clone());

    // SIGHUP re-reads the config; checks go on with the new current key.
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("configuration reloaded", common::HANG_TIMEOUT);
    let m = daemon.wait_for_metrics("a check after reload", |m| {
        series(
            m,
            "keyrotd_key_check_status",
            &[("credential", CREDENTIAL), ("status", "valid")],
        ) == Some(1.0)
    });
    t.text("/metrics (after reload)", &m);
    for args in [
        &["key", "list", "--json"][..],
        &["key", "history", CREDENTIAL, "--json"],
        &["key", "history", CREDENTIAL],
    ] {
        let out = env.run(args);
        assert_success(&out, &args.join(" "));
        t.output(&format!("{} (end)", args.join(" ")), &out);
    }
    let (_, health) = daemon.get("/healthz");
    t.text("/healthz", &health);
    let log = daemon.stop();
    t.text("daemon log (human)", &log);

    // Once more with JSON logs: a check and a reload.
    let mut command = env.command();
    command.args(["--log-format", "json"]);
    let daemon = common::Daemon::start(command);
    let before = common::now();
    let m = daemon.wait_for_metrics("a check under JSON logs", |m| {
        series(
            m,
            "keyrotd_key_last_check_timestamp_seconds",
            &[("credential", CREDENTIAL)],
        )
        .is_some_and(|at| at >= before as f64)
    });
    t.text("/metrics (json run)", &m);
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("configuration reloaded", common::HANG_TIMEOUT);
    let log = daemon.stop();
    assert!(
        log.lines().any(|l| l.starts_with('{')),
        "no JSON log lines:\n{log}"
    );
    t.text("daemon log (json)", &log);

    // Every file under the state directory, byte for byte (database, WAL, SHM, config...).
    let state_files = files_under(env.path());
    assert!(state_files
        .iter()
        .any(|p| p.extension().is_some_and(|e| e == "db")));
    for file in &state_files {
        t.items.push((
            format!("file {}", file.display()),
            std::fs::read(file).unwrap(),
        ));
    }

    let mut secrets = vec![("canary", canary.clone())];
    for (i, key) in issued.iter().enumerate() {
        secrets.push(if i == 0 {
            ("first issued key", key.clone())
        } else {
            ("second issued key", key.clone())
        });
    }
    // The management key is allowed only in its own file.
    t.items
        .retain(|(what, _)| what != &format!("file {}", management.display()));
    secrets.push(("management key", sim.management_key()));
    t.assert_clean(&secrets);

    // Sanity: the scan looks where the keys are — the targets hold the last delivered key.
    assert!(common::contains_bytes(
        &std::fs::read(&key_file).unwrap(),
        second.as_bytes()
    ));
    sim.shutdown().await;
}
