//! `keyrotd master-key rotate` through the real binary: every sealed secret of every
//! credential and version is re-sealed under the new key, in one transaction. Read back
//! independently of the command: the test opens each sealed row of the database with the
//! library's `Sealer`. A failure half-way (a trigger planted in the database file aborts
//! one of the updates) leaves every secret as it was, and every path has its exit status.

mod common;

use common::*;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::simulator::Simulator;
use secrecy::ExposeSecret;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

const CREDENTIALS: [&str; 3] = ["or-a", "or-b", "or-c"];
/// Keys imported per credential: each import makes the earlier one `previous`, which keeps
/// its sealed secret.
const VERSIONS: usize = 3;

async fn connect(env: &Env) -> SqliteConnection {
    SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&env.database))
        .await
        .expect("open the database")
}

/// Every sealed row: (version id, credential, sealed secret).
async fn sealed_rows(env: &Env) -> Vec<(i64, String, Vec<u8>)> {
    let mut db = connect(env).await;
    let rows = sqlx::query_as(
        "SELECT v.id, c.name, v.sealed_secret FROM key_versions v
         JOIN credentials c ON c.id = v.credential_id
         WHERE v.sealed_secret IS NOT NULL ORDER BY v.id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    rows
}

/// The secrets `key` opens, and how many sealed rows it cannot open.
async fn open_with(env: &Env, key: &Path) -> (BTreeSet<String>, usize) {
    let sealer = Sealer::new(&MasterKey::load(key).unwrap());
    let mut opened = BTreeSet::new();
    let mut refused = 0;
    for (id, credential, sealed) in sealed_rows(env).await {
        match sealer.open(&credential, id, &sealed) {
            Ok(secret) => {
                opened.insert(secret.expose_secret().to_string());
            }
            Err(_) => refused += 1,
        }
    }
    (opened, refused)
}

/// Every secret opens with `key`; no sealed row opens with `other`.
async fn assert_sealed_under(env: &Env, secrets: &BTreeSet<String>, key: &Path, other: &Path) {
    let (opened, refused) = open_with(env, key).await;
    assert_eq!(
        refused,
        0,
        "{refused} rows do not open with {}",
        key.display()
    );
    assert_eq!(&opened, secrets, "the secrets under {}", key.display());
    let (opened, refused) = open_with(env, other).await;
    assert!(
        opened.is_empty(),
        "{} rows open with {}",
        opened.len(),
        other.display()
    );
    assert_eq!(refused, secrets.len());
}

fn rotate(env: &Env, master_key: &Path, new_key: &Path) -> Output {
    run_command(
        bare_command()
            .arg("--config")
            .arg(&env.config)
            .arg("--master-key")
            .arg(master_key)
            .args(["master-key", "rotate", "--new-key"])
            .arg(new_key),
        "",
    )
}

fn assert_failed(out: &Output, what: &str, message: &str) {
    assert!(!out.status.success(), "{what} succeeded:\n{}", stdout(out));
    assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(out));
    assert!(
        stderr(out).contains(message),
        "{what}: no {message:?} in:\n{}",
        stderr(out)
    );
    assert!(
        !stdout(out).contains("re-sealed"),
        "{what}: {}",
        stdout(out)
    );
}

/// An env with `VERSIONS` keys imported for each of `CREDENTIALS`, and a second master key.
/// The credentials are on `sim`, which knows every key: importing a second key for a
/// credential rotates to it, and the rotation checks it at the provider.
fn seeded(sim: &Simulator) -> (Env, BTreeSet<String>, std::path::PathBuf) {
    let env = Env::new();
    let mut config = format!(
        "[[provider]]\nname = \"sim\"\nkind = \"simulated\"\nbase_url = \"{}\"\n",
        sim.base_url()
    );
    for credential in CREDENTIALS {
        config.push_str(&format!(
            "\n[[credential]]\nname = \"{credential}\"\nprovider = \"sim\"\n"
        ));
    }
    env.write_config(&config);
    let mut secrets = BTreeSet::new();
    for _ in 0..VERSIONS {
        for credential in CREDENTIALS {
            let secret = canary();
            sim.add_key(&secret);
            env.import(credential, &secret, &[]);
            secrets.insert(secret);
        }
    }
    let new_key = env.path().join("new.key");
    assert_success(
        &env.run(&["master-key", "generate", new_key.to_str().unwrap()]),
        "generate",
    );
    (env, secrets, new_key)
}

async fn simulator() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_secret_of_every_credential_and_version_is_resealed() {
    let sim = simulator().await;
    let (env, secrets, new_key) = seeded(&sim);
    assert_eq!(secrets.len(), CREDENTIALS.len() * VERSIONS);
    assert_sealed_under(&env, &secrets, &env.master_key, &new_key).await;

    let out = rotate(&env, &env.master_key, &new_key);
    assert_success(&out, "master-key rotate");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(&format!("re-sealed {} secrets", secrets.len())),
        "{}",
        stdout(&out)
    );
    assert_sealed_under(&env, &secrets, &new_key, &env.master_key).await;

    // The audit trail has the rotation; nothing printed carries a key.
    let history = env.run(&["key", "history", "or-a", "--json"]);
    assert_success(&history, "key history");
    for secret in &secrets {
        for text in [stdout(&out), stderr(&out), stdout(&history)] {
            assert!(!text.contains(secret.as_str()), "a key leaked:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rotation_changes_nothing_and_says_why() {
    let sim = simulator().await;
    let (env, secrets, new_key) = seeded(&sim);
    let before = sealed_rows(&env).await;

    // A wrong master key: it opens none of the secrets.
    let other = env.path().join("other.key");
    assert_success(
        &env.run(&["master-key", "generate", other.to_str().unwrap()]),
        "generate",
    );
    let out = rotate(&env, &other, &new_key);
    // Found by key id, before any row is opened: the message counts the rows.
    assert_failed(
        &out,
        "a wrong master key",
        &format!(
            "{} sealed secrets were sealed under master key",
            secrets.len()
        ),
    );
    // A missing master key.
    let out = rotate(&env, &env.path().join("no-such.key"), &new_key);
    assert_failed(&out, "a missing master key", "no-such.key");
    // A new key that cannot be read.
    let out = rotate(&env, &env.master_key, &env.path().join("no-such-new.key"));
    assert_failed(&out, "a missing new key", "no-such-new.key");
    assert_eq!(sealed_rows(&env).await, before, "a refused rotation wrote");
    assert_sealed_under(&env, &secrets, &env.master_key, &new_key).await;

    // The fifth of nine updates fails, whatever order they come in: four rows were already
    // re-sealed inside the transaction when the store gets the error.
    let mut db = connect(&env).await;
    sqlx::raw_sql(
        "CREATE TABLE injected_updates (n INTEGER NOT NULL);
         INSERT INTO injected_updates VALUES (0);
         CREATE TRIGGER injected_failure AFTER UPDATE OF sealed_secret ON key_versions
         BEGIN
           UPDATE injected_updates SET n = n + 1;
           SELECT RAISE(ABORT, 'injected failure') WHERE (SELECT n FROM injected_updates) >= 5;
         END;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    db.close().await.unwrap();
    let out = rotate(&env, &env.master_key, &new_key);
    assert_failed(&out, "the injected failure", "injected failure");
    assert_eq!(sealed_rows(&env).await, before, "a failed rotation wrote");
    assert_sealed_under(&env, &secrets, &env.master_key, &new_key).await;
    let mut db = connect(&env).await;
    let (updates,): (i64,) = sqlx::query_as("SELECT n FROM injected_updates")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(updates, 0, "the counted updates were rolled back too");
    // With the trigger gone, the same command succeeds: the failure was the injected one.
    sqlx::raw_sql("DROP TRIGGER injected_failure")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let out = rotate(&env, &env.master_key, &new_key);
    assert_success(&out, "master-key rotate after the failure");
    assert_sealed_under(&env, &secrets, &new_key, &env.master_key).await;
}

/// Re-seals the store under `new_key` from this process, the way a `master-key rotate` that
/// got past the daemon's lock would (an older keyrotd, or a database copied elsewhere).
async fn reseal_behind_the_daemon(env: &Env, new_key: &Path) {
    use keyrotd::store::prelude::*;
    use std::sync::Arc;
    let old = Arc::new(Sealer::new(&MasterKey::load(&env.master_key).unwrap()));
    let store = keyrotd::store::SqliteStore::open(&env.database, Some(old))
        .await
        .unwrap();
    let new = Sealer::new(&MasterKey::load(new_key).unwrap());
    store.reseal(&new, "test", now()).await.unwrap();
    store.close().await;
}

/// `master-key rotate` refuses while a daemon runs on the database, and changes nothing;
/// once the daemon stopped it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_refused_while_a_daemon_runs() {
    let sim = simulator().await;
    let (env, secrets, new_key) = seeded(&sim);
    let before = sealed_rows(&env).await;
    let daemon = env.start();
    let out = rotate(&env, &env.master_key, &new_key);
    assert_failed(
        &out,
        "rotate under a live daemon",
        "a keyrotd daemon is running",
    );
    assert_eq!(sealed_rows(&env).await, before, "a refused rotation wrote");
    let (status, _) = daemon.get("/readyz");
    assert_eq!(status, 200, "the daemon stays ready");
    daemon.stop();
    assert_success(
        &rotate(&env, &env.master_key, &new_key),
        "rotate after stop",
    );
    assert_sealed_under(&env, &secrets, &new_key, &env.master_key).await;
}

/// After the master key was swapped, a process given the old key finds out at start-up,
/// with the number of rows and what to do, before it opens any row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_the_old_master_key_is_refused_at_start_up() {
    let sim = simulator().await;
    let (env, secrets, new_key) = seeded(&sim);
    assert_success(&rotate(&env, &env.master_key, &new_key), "rotate");
    let secret = canary();
    sim.add_key(&secret);
    let import = env.run_with_stdin(&["key", "import", "or-a"], &format!("{secret}\n"));
    assert!(
        !import.status.success(),
        "import with the old key succeeded"
    );
    let message = format!(
        "{} sealed secrets were sealed under master key",
        secrets.len()
    );
    assert!(stderr(&import).contains(&message), "{}", stderr(&import));
    assert!(
        stderr(&import).contains("install the new key file"),
        "{}",
        stderr(&import)
    );
    let daemon = env.run(&["run"]);
    assert!(
        !daemon.status.success(),
        "the daemon started with the old key"
    );
    assert!(stderr(&daemon).contains(&message), "{}", stderr(&daemon));
    assert!(
        !stderr(&daemon).contains("keyrotd ready"),
        "{}",
        stderr(&daemon)
    );
    assert_sealed_under(&env, &secrets, &new_key, &env.master_key).await;
}

/// The swap under a live daemon: a daemon holding the old key rotates after the swap. Its
/// sealing write is refused by the store (the new key is revoked at the provider, not
/// stored unreadable), it reports itself not ready, and the current key stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_still_holds_the_old_key_writes_nothing_unreadable() {
    let sim = simulator().await;
    let env = Env::with_credentials(&[]);
    std::fs::write(env.path().join("mgmt"), sim.management_key()).unwrap();
    env.write_config(&format!(
        "[checks]\ninterval = \"1h\"\n\n[[provider]]\nname = \"sim\"\nkind = \"simulated\"\nbase_url = \"{}\"\nmanagement_key = {{ file = {:?} }}\n\n[[credential]]\nname = \"app\"\nprovider = \"sim\"\n[credential.rotation]\nrotate_before_expiry = \"1h\"\nmin_age = \"1s\"\nretry_backoff = \"1h\"\n",
        sim.base_url(),
        env.path().join("mgmt").display().to_string()
    ));
    let seed = canary();
    sim.add_key(&seed);
    // Due 45 s from now: after the daemon started and the key was swapped under it.
    let expires = (now() + 3600 + 45).to_string();
    env.import("app", &seed, &["--expires-at", &expires]);
    let new_key = env.path().join("new.key");
    assert_success(
        &env.run(&["master-key", "generate", new_key.to_str().unwrap()]),
        "generate",
    );
    let daemon = env.start();
    reseal_behind_the_daemon(&env, &new_key).await;
    let readyz = wait_for(HANG_TIMEOUT, || {
        let (status, body) = daemon.get("/readyz");
        (status == 503).then_some(body)
    });
    assert!(
        readyz.is_some_and(|body| body.contains("master key")),
        "the daemon stays ready with a replaced master key"
    );
    daemon.wait_for_log("rotation failed", 2 * HANG_TIMEOUT);
    let log = daemon.stop();
    assert!(log.contains("master key of the database changed"), "{log}");
    assert!(!log.contains(&seed), "a key leaked");
    // Every sealed row opens with the new key; the seed is still current and live, and the
    // key the daemon was given is not left live at the provider.
    let (opened, refused) = open_with(&env, &new_key).await;
    assert_eq!(refused, 0, "rows nobody can open");
    assert_eq!(opened, BTreeSet::from([seed.clone()]));
    assert!(sim.is_live(&seed));
    let live: Vec<_> = sim
        .live_keys()
        .into_iter()
        .filter(|(_, name)| name != "seeded")
        .collect();
    assert!(live.is_empty(), "keys left live at the provider: {live:?}");
}
