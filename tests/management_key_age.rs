//! `keyrotd_management_key_created_timestamp_seconds` from the real daemon: each provider's
//! management key dated by its secret file (a `file` reference, a systemd credential), read
//! at every scrape, following reloads; an `env` reference exports nothing.

mod common;

use common::{Daemon, Env, UNREACHABLE_PROVIDER};
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, SystemTime};

const NAME: &str = "keyrotd_management_key_created_timestamp_seconds";

fn set_mtime(path: &Path, unix: u64) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
        .unwrap();
}

fn provider(name: &str, kind: &str, reference: &str) -> String {
    format!(
        "[[provider]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"{UNREACHABLE_PROVIDER}\"\nmanagement_key = {reference}\n\n"
    )
}

/// The sample of `provider` with `source`, if the scrape has one.
fn age_sample(metrics: &str, provider: &str, source: &str) -> Option<f64> {
    let prefix = format!("{NAME}{{provider=\"{provider}\",source=\"{source}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

#[test]
fn management_keys_are_dated_by_their_files_at_every_scrape() {
    let env = Env::with_credentials(&[]);
    let file = env.path().join("openrouter-mgmt.key");
    std::fs::write(&file, "or-management-key\n").unwrap();
    set_mtime(&file, 1_790_000_000);
    let credentials = env.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("anthropic-admin"), "sk-ant-admin01-x\n").unwrap();
    set_mtime(&credentials.join("anthropic-admin"), 1_780_000_000);
    let with_anthropic = format!(
        "{}{}{}",
        provider(
            "or",
            "openrouter",
            &format!("{{ file = {:?} }}", file.display().to_string())
        ),
        provider("anth", "anthropic", "{ credential = \"anthropic-admin\" }"),
        provider("or-env", "openrouter", "{ env = \"OR_MGMT_FOR_TEST\" }"),
    );
    env.write_config(&with_anthropic);
    let mut command = env.command();
    command
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("OR_MGMT_FOR_TEST", "or-env-management-key");
    let daemon = Daemon::start(command);

    let metrics = daemon.metrics();
    assert_eq!(
        age_sample(&metrics, "or", "file_mtime"),
        Some(1_790_000_000.0),
        "{metrics}"
    );
    assert_eq!(
        age_sample(&metrics, "anth", "credential_mtime"),
        Some(1_780_000_000.0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("provider=\"or-env\""),
        "an env reference has no time: {metrics}"
    );
    assert!(!metrics.contains("or-management-key"), "{metrics}");

    // The operator writes a new key: the next scrape says so, no reload needed.
    std::fs::write(&file, "or-management-key-2\n").unwrap();
    set_mtime(&file, 1_795_000_000);
    daemon.wait_for_metrics("the replaced key's time", |m| {
        age_sample(m, "or", "file_mtime") == Some(1_795_000_000.0)
    });

    // A reload without the anthropic provider drops its series.
    env.write_config(&provider(
        "or",
        "openrouter",
        &format!("{{ file = {:?} }}", file.display().to_string()),
    ));
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_metrics("the reload", |m| {
        age_sample(m, "anth", "credential_mtime").is_none()
            && age_sample(m, "or", "file_mtime").is_some()
    });
    daemon.stop();
}
