//! `keyrotd store copy` between two SQLite files, through the real binary: a store with
//! every kind of row (current, previous and revoked keys, a finished, a failed and an
//! in-flight rotation, checks with credit, events, counters) is copied; the copy reads back
//! row for row, the listing commands print the same for both, every secret opens with the
//! same master key and checks valid at the provider, and no key is ever printed. A target
//! that holds data, one store named twice, and a daemon on either end are refused with
//! nothing written.
//!
//! The PostgreSQL round trip (SQLite → PostgreSQL → SQLite) is `store_copy_pg.rs.pending`,
//! enabled once the PostgreSQL backend is on the branch.

mod common;

use common::*;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::CheckStatus;
use keyrotd::simulator::Simulator;
use keyrotd::store::prelude::*;
use keyrotd::store::{
    CheckRecord, Claim, CredentialSpec, Dump, NewKey, RotationFailure, RotationStep, SqliteStore,
    StoreCopy,
};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

const CREDENTIALS: [&str; 3] = ["app-a", "app-b", "app-c"];

fn claim() -> Claim {
    Claim {
        owner: "test:seed".into(),
        lease_seconds: 3600,
        leader: None,
    }
}

fn new_key(secret: &str, rotation: Option<&str>) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: Some(format!("remote-{}", &secret[secret.len() - 6..])),
        rotation_id: rotation.map(String::from),
    }
}

/// An env whose config has `CREDENTIALS` on the simulator, and the secrets it knows.
fn env_on(sim: &Simulator) -> Env {
    let env = Env::with_credentials(&[]);
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
    env
}

async fn open(path: &Path, master_key: Option<&Path>) -> SqliteStore {
    let sealer = master_key.map(|k| Arc::new(Sealer::new(&MasterKey::load(k).unwrap())));
    SqliteStore::open(path, sealer).await.unwrap()
}

/// Seeds `env`'s database through the store API; returns every secret by version id.
async fn seed(env: &Env, sim: &Simulator) -> BTreeMap<i64, String> {
    let store = open(&env.database, Some(&env.master_key)).await;
    let t = now() - 7200;
    let specs: Vec<_> = CREDENTIALS
        .iter()
        .map(|name| CredentialSpec {
            name: name.to_string(),
            provider: "sim".into(),
            provider_kind: "simulated".into(),
        })
        .collect();
    store.sync_credentials(&specs, t).await.unwrap();
    let mut secrets = BTreeMap::new();
    let mut remember = |id: i64, secret: String| {
        sim.add_key(&secret);
        assert!(secrets.insert(id, secret).is_none());
    };
    let rotate = async |credential: &str, id: &str, at: i64| {
        let (_, lease) = store
            .plan_rotation(credential, id, "test", &claim(), at)
            .await
            .unwrap();
        let secret = canary();
        let version = store
            .record_issued(&lease, new_key(&secret, Some(id)), at)
            .await
            .unwrap();
        (lease, version.id, secret)
    };
    // app-a and app-b: an imported key, rotated once to a new current key.
    for credential in ["app-a", "app-b"] {
        let first = canary();
        let version = store
            .import_key(credential, new_key(&first, None), "test", t)
            .await
            .unwrap();
        remember(version.id, first);
        let rotation = format!("rot-{credential}-1");
        let (lease, id, secret) = rotate(credential, &rotation, t + 60).await;
        remember(id, secret);
        for (from, to) in [
            (RotationStep::Issued, RotationStep::Verified),
            (RotationStep::Verified, RotationStep::Delivered),
        ] {
            store
                .advance_rotation(&lease, from, to, "test", t + 61)
                .await
                .unwrap();
        }
        store
            .promote(&lease, Some(t + 86_400), t + 62)
            .await
            .unwrap();
    }
    // app-a's previous key is revoked (its secret dropped); app-b keeps its previous key,
    // and its next rotation failed.
    let a_first = store.versions("app-a").await.unwrap().last().unwrap().id;
    store
        .mark_revoked(a_first, "test", "revoked at the provider", t + 120)
        .await
        .unwrap();
    let (lease, id, secret) = rotate("app-b", "rot-app-b-2", t + 180).await;
    remember(id, secret);
    let failure = RotationFailure {
        error: "verification failed: 401".into(),
        discard_pending: true,
        retry_at: Some(t + 3600),
    };
    store
        .fail_rotation(&lease, &failure, t + 181)
        .await
        .unwrap();
    // app-c: one key, and a rotation in flight at `issued`, its new key pending.
    let c_first = canary();
    let version = store
        .import_key("app-c", new_key(&c_first, None), "test", t + 200)
        .await
        .unwrap();
    remember(version.id, c_first);
    let (_, id, secret) = rotate("app-c", "rot-app-c-1", t + 240).await;
    remember(id, secret);
    // A check with a balance, and an event of the store's own.
    let (current, _) = store.current_key("app-a").await.unwrap().unwrap();
    let check = CheckRecord {
        status: CheckStatus::Valid,
        detail: "ok".into(),
        at: t + 300,
        credits: vec![("usd".into(), 12.5)],
        expires_at: Some(t + 90 * 86_400),
    };
    store
        .record_check("app-a", current.id, &check)
        .await
        .unwrap();
    store
        .append_event(
            None,
            None,
            keyrotd::store::EventKind::Imported,
            "test",
            "seeded",
            t + 301,
        )
        .await
        .unwrap();
    store.close().await;
    secrets
}

async fn export(path: &Path) -> Dump {
    let store = open(path, None).await;
    let dump = store.export().await.unwrap();
    store.close().await;
    dump
}

fn copy(from: &Path, to: &Path) -> Output {
    run_command(
        bare_command().args([
            "store",
            "copy",
            "--from",
            &format!("sqlite:{}", from.display()),
            "--to",
            &format!("sqlite:{}", to.display()),
        ]),
        "",
    )
}

/// Runs a listing on `database` with `env`'s config and master key.
fn listing(env: &Env, database: &Path, args: &[&str]) -> String {
    let out = run_command(env.command().arg("--database").arg(database).args(args), "");
    assert_success(&out, &args.join(" "));
    stdout(&out)
}

fn assert_no_secret(secrets: &BTreeMap<i64, String>, what: &str, text: &str) {
    for secret in secrets.values() {
        assert!(!text.contains(secret.as_str()), "a key leaked in {what}");
    }
}

fn assert_refused(out: &Output, what: &str, message: &str) {
    assert!(!out.status.success(), "{what} succeeded:\n{}", stdout(out));
    assert!(
        stderr(out).contains(message),
        "{what}: no {message:?} in:\n{}",
        stderr(out)
    );
    assert!(!stdout(out).contains("copied"), "{what}: {}", stdout(out));
}

async fn simulator() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .0
}

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

    // The listings print the same for both (a run may straddle a second: ages are relative).
    let mut commands: Vec<Vec<&str>> = vec![vec!["key", "list"], vec!["key", "list", "--json"]];
    for credential in CREDENTIALS {
        for command in ["show", "history"] {
            commands.push(vec!["key", command, credential]);
            commands.push(vec!["key", command, credential, "--json"]);
        }
    }
    for args in &commands {
        let same =
            (0..3).any(|_| listing(&env, &env.database, args) == listing(&env, &target, args));
        let text = listing(&env, &target, args);
        assert!(same, "`{}` differs:\n{text}", args.join(" "));
        assert_no_secret(&secrets, &args.join(" "), &text);
    }

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
