//! Crash safety of the Gemini issuer's long-running create operation, with real processes:
//! `keyrotd key rotate` is killed with SIGKILL after Google accepted the create and while
//! the operation is not yet `done`. The key Google goes on to make is then an orphan with a
//! (shortened) display name; a restarted daemon must find it by its name, delete it, and
//! finish the rotation: one current key, delivered and working, no orphan live at Google.
//!
//! Run with a multi-threaded runtime: the fake keeps answering while the test body blocks
//! on child processes.

mod common;
mod google_fake;

use common::*;
use google_fake::Fake;
use keyrotd::model::fingerprint;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::process::Stdio;

/// Long enough that keyrotd's display name for it must be shortened (over 63 characters).
const CRED: &str = "gemini-production-frontend-europe";
const TOKEN: &str = "ya29.crash-canary-0c4d";
const SEED: &str = "AIzaSySeedCrashxxxxxxxxxxxxxxxxxxxxxxxx";

fn in_flight(env: &Env) -> bool {
    let history = env.run(&["key", "history", CRED, "--json"]);
    assert_success(&history, "key history");
    let events: Value = serde_json::from_slice(&history.stdout).unwrap();
    let count = |kind: &str| {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    };
    count("rotation_planned") > count("promoted") + count("rotation_failed")
}

fn versions(env: &Env) -> Vec<Value> {
    let out = env.run(&["key", "show", CRED, "--json"]);
    assert_success(&out, "key show");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    shown["versions"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_create_operation_runs_the_orphan_is_found_by_name_and_deleted() {
    let server = wiremock::MockServer::start().await;
    let fake = Fake::new(TOKEN);
    google_fake::mount(&fake, &server).await;
    fake.add_key("frontend (by hand)", SEED, json!({}));

    let env = Env::with_credentials(&[]);
    let token = env.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let key_file = env.path().join("key");
    std::fs::write(&key_file, format!("{SEED}\n")).unwrap();
    env.write_config(&format!(
        r#"[checks]
interval = "1h"

[[provider]]
name = "g"
kind = "gemini"
base_url = "{uri}/v1beta"
timeout = "30s"
[provider.google]
project = "my-project"
token = {{ file = {token:?} }}
api_keys_url = "{uri}"
operation_timeout = "5m"

[[credential]]
name = "{CRED}"
provider = "g"
[credential.rotation]
retry_backoff = "1s"
[[credential.deliver]]
kind = "file"
path = {key:?}
"#,
        uri = server.uri(),
        token = token.display().to_string(),
        key = key_file.display().to_string(),
    ));
    let out = env.run(&["check-config"]);
    assert_success(&out, "check-config");
    env.import(CRED, SEED, &[]);

    // Google accepts the create; the operation is never done while held.
    fake.hold(true);
    let child = env
        .command()
        .args(["key", "rotate", CRED])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn key rotate");
    let orphan = wait_for(HANG_TIMEOUT, || {
        fake.live_keys()
            .into_iter()
            .find(|k| k.display_name.starts_with("keyrotd/"))
    })
    .expect("the create was accepted");
    // The CLI is polling the operation when it dies.
    let deadline = std::time::Instant::now() + HANG_TIMEOUT;
    loop {
        let requests = server.received_requests().await.unwrap();
        if requests
            .iter()
            .any(|r| r.url.path().starts_with("/v2/operations/"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the operation was never polled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "key rotate finished before it was killed:\n{}",
        stderr(&out)
    );
    let mut outputs = vec![stdout(&out), stderr(&out)];
    assert!(in_flight(&env));
    assert!(
        orphan.display_name.chars().count() <= 63,
        "{}",
        orphan.display_name
    );
    assert!(
        orphan.display_name.contains('~'),
        "shortened: {}",
        orphan.display_name
    );
    assert_eq!(
        orphan.annotations["keyrotd-name"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(2),
        Some(CRED),
        "the whole name travels in the annotation"
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), SEED);

    // Google finishes the operation after all: the key is live, and nobody holds it.
    fake.hold(false);
    let daemon = env.start();
    assert!(
        wait_for(HANG_TIMEOUT, || (!in_flight(&env)).then_some(())).is_some(),
        "the resumed rotation never finished:\n{}",
        daemon.log()
    );
    let log = daemon.stop();
    assert!(log.contains("resuming rotation"), "{log}");
    outputs.push(log);

    let orphan_now = fake
        .keys()
        .into_iter()
        .find(|k| k.name == orphan.name)
        .unwrap();
    assert!(
        orphan_now.deleted,
        "the orphan {} is still live",
        orphan.name
    );
    let history = env.run(&["key", "history", CRED, "--json"]);
    assert!(
        stdout(&history).contains("orphan_deleted"),
        "{}",
        stdout(&history)
    );

    // One current key, delivered, live at Google; every live keyrotd key is known.
    let versions = versions(&env);
    let current: Vec<&Value> = versions
        .iter()
        .filter(|v| v["stage"] == "current")
        .collect();
    assert_eq!(current.len(), 1, "{versions:?}");
    let delivered = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(delivered, SEED, "the resumed rotation completed");
    assert_eq!(
        current[0]["fingerprint"].as_str().unwrap(),
        fingerprint(&SecretString::from(delivered.clone()))
    );
    assert!(fake.is_live(&delivered), "the current key works at Google");
    let known: Vec<&str> = versions
        .iter()
        .filter(|v| {
            matches!(
                v["stage"].as_str(),
                Some("pending" | "current" | "previous")
            )
        })
        .filter_map(|v| v["provider_key_id"].as_str())
        .collect();
    for key in fake.live_keys() {
        if key.key_string == SEED {
            continue; // imported by hand: keyrotd knows it by value only
        }
        assert!(
            known.contains(&key.name.as_str()),
            "orphan live at Google: {key:?}"
        );
    }
    // No secret in any output.
    for output in &outputs {
        for secret in [TOKEN, SEED, delivered.as_str(), orphan.key_string.as_str()] {
            assert!(!output.contains(secret), "a secret leaked:\n{output}");
        }
    }
}
