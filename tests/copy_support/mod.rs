//! The store both `store copy` test files copy: an env on the simulator whose database
//! holds every kind of row, seeded through the store API, and the helpers that read a store
//! back whole and run the command.
#![allow(dead_code)]

use crate::common::*;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::CheckStatus;
use keyrotd::simulator::Simulator;
use keyrotd::store::prelude::*;
use keyrotd::store::{
    CheckRecord, Claim, CredentialSpec, Dump, EventKind, NewKey, RotationFailure, RotationStep,
    SqliteStore, StoreCopy,
};
use secrecy::SecretString;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

pub const CREDENTIALS: [&str; 3] = ["app-a", "app-b", "app-c"];

pub fn claim() -> Claim {
    Claim {
        owner: "test:seed".into(),
        lease_seconds: 3600,
        leader: None,
    }
}

pub fn new_key(secret: &str, rotation: Option<&str>) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: Some(format!("remote-{}", &secret[secret.len() - 6..])),
        rotation_id: rotation.map(String::from),
    }
}

/// An env whose config has `CREDENTIALS` on the simulator, and the secrets it knows.
pub fn env_on(sim: &Simulator) -> Env {
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

pub async fn open(path: &Path, master_key: Option<&Path>) -> SqliteStore {
    let sealer = master_key.map(|k| Arc::new(Sealer::new(&MasterKey::load(k).unwrap())));
    SqliteStore::open(path, sealer).await.unwrap()
}

/// Seeds `env`'s database through the store API; returns every secret by version id.
pub async fn seed(env: &Env, sim: &Simulator) -> BTreeMap<i64, String> {
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
        .append_event(None, None, EventKind::Imported, "test", "seeded", t + 301)
        .await
        .unwrap();
    store.close().await;
    secrets
}

pub async fn export(path: &Path) -> Dump {
    let store = open(path, None).await;
    let dump = store.export().await.unwrap();
    store.close().await;
    dump
}

/// `keyrotd store copy` between two SQLite files.
pub fn copy(from: &Path, to: &Path) -> Output {
    copy_between(
        &format!("sqlite:{}", from.display()),
        &format!("sqlite:{}", to.display()),
        &[],
    )
}

/// `keyrotd store copy --from FROM --to TO EXTRA...`.
pub fn copy_between(from: &str, to: &str, extra: &[&str]) -> Output {
    run_command(
        bare_command()
            .args(["store", "copy", "--from", from, "--to", to])
            .args(extra),
        "",
    )
}

/// Runs a listing on `database` with `env`'s config and master key.
pub fn listing(env: &Env, database: &Path, args: &[&str]) -> String {
    let out = run_command(env.command().arg("--database").arg(database).args(args), "");
    assert_success(&out, &args.join(" "));
    stdout(&out)
}

/// `key list`, `key show` and `key history` (tables and JSON) print the same on `a` and
/// `b`, and no key. A run may straddle a second, and ages are relative: each pair gets
/// three tries.
pub fn assert_same_listings(env: &Env, a: &Path, b: &Path, secrets: &BTreeMap<i64, String>) {
    let mut commands: Vec<Vec<&str>> = vec![vec!["key", "list"], vec!["key", "list", "--json"]];
    for credential in CREDENTIALS {
        for command in ["show", "history"] {
            commands.push(vec!["key", command, credential]);
            commands.push(vec!["key", command, credential, "--json"]);
        }
    }
    for args in &commands {
        let same = (0..3).any(|_| listing(env, a, args) == listing(env, b, args));
        let text = listing(env, b, args);
        assert!(same, "`{}` differs:\n{text}", args.join(" "));
        assert_no_secret(secrets, &args.join(" "), &text);
    }
}

pub fn assert_no_secret(secrets: &BTreeMap<i64, String>, what: &str, text: &str) {
    for secret in secrets.values() {
        assert!(!text.contains(secret.as_str()), "a key leaked in {what}");
    }
}

pub fn assert_refused(out: &Output, what: &str, message: &str) {
    assert!(!out.status.success(), "{what} succeeded:\n{}", stdout(out));
    assert!(
        stderr(out).contains(message),
        "{what}: no {message:?} in:\n{}",
        stderr(out)
    );
    assert!(!stdout(out).contains("copied"), "{what}: {}", stdout(out));
}

pub async fn simulator() -> Simulator {
    Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .0
}
