//! Installation identity and the orphan sweep, with real processes: the test hosts the
//! simulated (OpenRouter-shaped) provider and the real binary rotates against it. The sweep
//! before each issue deletes only keys this database provably issued and never stored;
//! keys from a lost database, from after the backup a database was restored from, or from
//! another installation sharing the provider account are left alone and reported. Each
//! scenario ends with an issue that fails (HTTP 500): "the previous key stays current" must
//! then be true, at the provider too.
//!
//! Run with a multi-threaded runtime: the simulator keeps answering while the test body
//! blocks on child processes.

mod common;

use common::*;
use keyrotd::model::fingerprint;
use keyrotd::simulator::{Fault, Op, Simulator};
use secrecy::SecretString;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const CRED: &str = "app";

/// One installation: a database, a config on the shared simulator, a consumer's key file.
struct Installation {
    env: Env,
    key_file: PathBuf,
}

impl Installation {
    fn new(sim: &Simulator) -> Installation {
        let env = Env::with_credentials(&[]);
        let key_file = env.path().join("consumer.key");
        std::fs::write(env.path().join("mgmt"), sim.management_key()).unwrap();
        let body = format!(
            r#"[checks]
interval = "1h"

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt:?} }}
timeout = "30s"

[[credential]]
name = "{CRED}"
provider = "sim"
[[credential.deliver]]
kind = "file"
path = {key:?}
"#,
            base = sim.base_url(),
            mgmt = env.path().join("mgmt").display().to_string(),
            key = key_file.display().to_string(),
        );
        env.write_config(&body);
        Installation { env, key_file }
    }

    /// Imports a seeded key as the first current key, as the consumer holds it.
    fn seed(&self, sim: &Simulator) -> String {
        let seed = canary();
        sim.add_key(&seed);
        self.env.import(CRED, &seed, &[]);
        std::fs::write(&self.key_file, format!("{seed}\n")).unwrap();
        seed
    }

    fn rotate(&self) -> Output {
        self.env.run(&["key", "rotate", CRED])
    }

    /// A successful rotation; returns the key it delivered.
    fn rotated(&self) -> String {
        assert_success(&self.rotate(), "key rotate");
        self.delivered()
    }

    fn delivered(&self) -> String {
        std::fs::read_to_string(&self.key_file)
            .unwrap()
            .trim_end()
            .to_string()
    }

    fn current_fingerprint(&self) -> String {
        let out = self.env.run(&["key", "list", "--json"]);
        assert_success(&out, "key list");
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        let current: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["credential"] == CRED && r["stage"] == "current")
            .map(|r| r["fingerprint"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(current.len(), 1, "exactly one current key: {current:?}");
        current[0].clone()
    }

    fn event_kinds(&self) -> Vec<String> {
        let out = self.env.run(&["key", "history", CRED, "--json"]);
        assert_success(&out, "key history");
        let events: Value = serde_json::from_slice(&out.stdout).unwrap();
        events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    }

    /// The database files, for a backup or to lose them.
    fn database_files(&self) -> Vec<PathBuf> {
        self.env.database_files()
    }
}

fn fp(secret: &str) -> String {
    fingerprint(&SecretString::from(secret.to_string()))
}

async fn simulator() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .0
}

/// The next issue fails with HTTP 500; `key rotate` must say the previous key stays current,
/// and it must: `consumer_key` is still current in the store and live at the provider.
fn assert_failed_issue_keeps(sim: &Simulator, at: &Installation, consumer_key: &str) {
    sim.fail_next(Op::Issue, Fault::ServerError, 1);
    let out = at.rotate();
    assert!(
        !out.status.success(),
        "the rotation succeeded:\n{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("the previous key stays current"),
        "{}",
        stderr(&out)
    );
    assert!(
        sim.is_live(consumer_key),
        "the consumer's key was deleted at the provider:\n{}",
        stderr(&out)
    );
    assert_eq!(at.current_fingerprint(), fp(consumer_key));
    assert_eq!(at.delivered(), consumer_key, "the consumer's file changed");
    for text in [stdout(&out), stderr(&out)] {
        assert!(!text.contains(consumer_key), "a key leaked:\n{text}");
    }
}

fn copy_files(files: &[PathBuf], to: &Path) -> Vec<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(to).unwrap();
    files
        .iter()
        .map(|file| {
            let copy = to.join(file.file_name().unwrap());
            std::fs::copy(file, &copy).unwrap();
            (copy, file.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_re_imported_after_the_database_was_lost_survives_a_failed_rotation() {
    let sim = simulator().await;
    let site = Installation::new(&sim);
    site.seed(&sim);
    // keyrotd issues a key and hands it to the consumer.
    let issued = site.rotated();
    assert!(sim.is_live(&issued));
    // The database is lost: a fresh one, and the operator re-imports the consumer's key.
    for file in site.database_files() {
        std::fs::remove_file(file).unwrap();
    }
    site.env.import(CRED, &issued, &[]);
    assert_eq!(site.current_fingerprint(), fp(&issued));

    assert_failed_issue_keeps(&sim, &site, &issued);
    let kinds = site.event_kinds();
    assert!(
        kinds.contains(&"orphan_unplaced".to_string()),
        "the key from the lost database is reported: {kinds:?}"
    );
    assert!(!kinds.contains(&"orphan_deleted".to_string()), "{kinds:?}");

    // The next rotation works, and still leaves the re-imported key alone until its grace
    // ends (it is `previous` now, revoked by the daemon later, never as an orphan).
    let next = site.rotated();
    assert!(sim.is_live(&next) && sim.is_live(&issued));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_older_backup_does_not_delete_the_keys_issued_after_it() {
    let sim = simulator().await;
    let site = Installation::new(&sim);
    site.seed(&sim);
    let first = site.rotated();
    let backup = copy_files(&site.database_files(), &site.env.path().join("backup"));
    // After the backup: another rotation, whose key the consumer now holds.
    let later = site.rotated();
    assert!(sim.is_live(&later));
    // The database is restored from the backup: same installation, but it never planned
    // the later rotation, and the consumer still holds the later key.
    for file in site.database_files() {
        std::fs::remove_file(file).unwrap();
    }
    for (copy, original) in &backup {
        std::fs::copy(copy, original).unwrap();
    }
    assert_eq!(site.current_fingerprint(), fp(&first));

    sim.fail_next(Op::Issue, Fault::ServerError, 1);
    let out = site.rotate();
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        sim.is_live(&later),
        "the key issued after the backup was deleted:\n{}",
        stderr(&out)
    );
    assert!(sim.is_live(&first), "the current key was deleted");
    assert!(site.event_kinds().contains(&"orphan_unplaced".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_provider_account_leave_each_other_s_keys_alone() {
    let sim = simulator().await;
    let a = Installation::new(&sim);
    let b = Installation::new(&sim);
    a.seed(&sim);
    b.seed(&sim);
    let a_key = a.rotated();
    let b_key = b.rotated();
    assert!(sim.is_live(&a_key), "b's rotation deleted a's key");
    let a_again = a.rotated();
    assert!(sim.is_live(&b_key), "a's rotation deleted b's key");
    assert!(sim.is_live(&a_again));
    assert_failed_issue_keeps(&sim, &b, &b_key);
    assert!(sim.is_live(&a_again), "b's failed rotation deleted a's key");
    assert!(b.event_kinds().contains(&"orphan_unplaced".to_string()));
}
