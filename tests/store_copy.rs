//! `keyrotd store copy` between two SQLite files, through the real binary: a store with
//! every kind of row (current, previous and revoked keys, a finished, a failed and an
//! in-flight rotation, checks with credit, events, counters) is copied; the copy reads back
//! row for row, the listing commands print the same for both, every secret opens with the
//! same master key and checks valid at the provider, and no key is ever printed. A target
//! that holds data, one store named twice, and a daemon on either end are refused with
//! nothing written.
//!
//! The PostgreSQL round trip (SQLite → PostgreSQL → SQLite) is `store_copy_pg.rs`.

mod common;
mod copy_support;

use common::*;
use copy_support::*;
use keyrotd::store::prelude::*;
use keyrotd::store::CredentialSpec;
use secrecy::ExposeSecret;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_reads_back_the_same_and_its_secrets_open_with_the_same_master_key() {
    let sim = simulator().await;
    let env = env_on(&sim);
    let secrets = seed(&env, &sim).await;
    let source = export(&env.database).await;
    // Every kind of row is there to be copied.
    let stages: Vec<&str> = source
        .key_versions
        .iter()
        .map(|v| v.stage.as_str())
        .collect();
    for stage in ["current", "previous", "revoked", "pending", "failed"] {
        assert!(stages.contains(&stage), "no {stage} key in {stages:?}");
    }
    assert!(source.rotations.iter().any(|r| r.finished_at.is_none()));
    assert!(!source.credits.is_empty() && !source.counters.is_empty());

    // Into a directory that does not exist yet.
    let target = env.path().join("ha").join("keyrotd.db");
    let out = copy(&env.database, &target);
    assert_success(&out, "store copy");
    let printed = stdout(&out);
    assert!(
        printed.contains(&format!(
            "copied installation {}",
            source.installation.installation_id
        )),
        "{printed}"
    );
    for (table, rows) in source.counts() {
        assert!(
            printed
                .lines()
                .any(|l| l.split_whitespace().eq([table, &rows.to_string()])),
            "no {table} {rows} in:\n{printed}"
        );
    }
    assert!(printed.contains("install that same key"), "{printed}");
    assert_no_secret(&secrets, "the copy's output", &(printed + &stderr(&out)));

    // Row for row, installation and master key id included; the generation moved past.
    let mut copied = export(&target).await;
    assert!(copied.generation > source.generation);
    copied.generation = source.generation;
    assert_eq!(copied, source);

    assert_same_listings(&env, &env.database, &target, &secrets);

    // Every secret opens on the copy with the same master key, under its own version id.
    let store = open(&target, Some(&env.master_key)).await;
    store.claim_master_key(&env.master_key).await.unwrap();
    store.verify_master_key().await.unwrap();
    for version in source
        .key_versions
        .iter()
        .filter(|v| v.sealed_secret.is_some())
    {
        let secret = store.secret(version.id).await.unwrap();
        assert_eq!(
            secret.expose_secret(),
            secrets[&version.id],
            "version {}",
            version.id
        );
    }
    assert_eq!(
        store.installation_id().await.unwrap(),
        source.installation.installation_id
    );
    store.close().await;
    // And the binary checks every current key valid at the provider from the copy.
    let out = run_command(
        env.command()
            .arg("--database")
            .arg(&target)
            .args(["check", "--json"]),
        "",
    );
    assert_success(&out, "check on the copy");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statuses: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, vec!["valid"; CREDENTIALS.len()], "{rows:#}");
    assert_no_secret(&secrets, "check", &(stdout(&out) + &stderr(&out)));
    // Sealed on disk, never plaintext.
    for file in files_under(env.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in secrets.values() {
            assert!(
                !contains_bytes(&bytes, secret.as_bytes()),
                "{} holds a key",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_with_data_is_refused_and_left_untouched() {
    let sim = simulator().await;
    let env = env_on(&sim);
    let secrets = seed(&env, &sim).await;
    // Another installation's store, with a key of its own.
    let occupied = env.path().join("occupied.db");
    let store = open(&occupied, Some(&env.master_key)).await;
    store
        .sync_credentials(
            &[CredentialSpec {
                name: "other".into(),
                provider: "sim".into(),
                provider_kind: "simulated".into(),
            }],
            now(),
        )
        .await
        .unwrap();
    store
        .import_key("other", new_key(&canary(), None), "test", now())
        .await
        .unwrap();
    store.close().await;
    let before = export(&occupied).await;
    let out = copy(&env.database, &occupied);
    assert_refused(
        &out,
        "a copy into a store with data",
        "the target store is not empty",
    );
    assert!(
        stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        export(&occupied).await,
        before,
        "the refused target changed"
    );
    assert_no_secret(&secrets, "the refusal", &(stdout(&out) + &stderr(&out)));

    // One store named twice (through a symbolic link) is refused before anything opens.
    let link = env.path().join("link.db");
    std::os::unix::fs::symlink(&env.database, &link).unwrap();
    assert_refused(
        &copy(&env.database, &link),
        "a copy onto itself",
        "name the same store",
    );

    // A database that was only opened (its installation row made) takes the copy, and the
    // source's identity with it.
    let fresh = env.path().join("fresh.db");
    open(&fresh, None).await.close().await;
    assert_ne!(
        export(&fresh).await.installation,
        export(&env.database).await.installation
    );
    assert_success(
        &copy(&env.database, &fresh),
        "a copy into an opened, empty store",
    );
    assert_eq!(
        export(&fresh).await.installation,
        export(&env.database).await.installation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_daemon_on_either_end_refuses_the_copy() {
    let sim = simulator().await;
    let env = env_on(&sim);
    seed(&env, &sim).await;
    let target = env.path().join("target").join("keyrotd.db");
    let daemon = env.start();
    assert_refused(
        &copy(&env.database, &target),
        "a copy from a live store",
        "a keyrotd daemon is running",
    );
    daemon.stop();
    assert!(!target.exists(), "a refused copy made its target");

    let other = env.path().join("other.db");
    let mut command = env.command();
    command.arg("--database").arg(&other);
    let daemon = Daemon::start(command);
    assert_refused(
        &copy(&env.database, &other),
        "a copy into a live store",
        "a keyrotd daemon is running",
    );
    daemon.stop();
}

#[test]
fn a_password_in_a_url_is_refused_without_being_repeated() {
    let out = run_command(
        bare_command().args([
            "store",
            "copy",
            "--from",
            "sqlite:/nonexistent/keyrotd.db",
            "--to",
            "postgres://keyrotd:hunter2-canary@127.0.0.1:5432/keyrotd",
        ]),
        "",
    );
    assert_refused(&out, "a password in the URL", "the URL holds a password");
    assert!(!stderr(&out).contains("hunter2"), "{}", stderr(&out));
}

#[test]
fn the_help_says_the_new_host_needs_the_same_master_key() {
    for flag in ["-h", "--help"] {
        let out = run_command(bare_command().args(["store", "copy", flag]), "");
        assert_success(&out, "store copy --help");
        // Words, not lines: the help text is wrapped.
        let words = stdout(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            words.contains("the SAME master key must be installed on the new host(s)"),
            "{words}"
        );
    }
}
