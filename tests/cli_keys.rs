//! `key import|list|show|history` and the master key, through the real binary: output
//! shapes, the audit trail, refusals with clear messages.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn json(env: &Env, args: &[&str]) -> Value {
    let out = env.run(args);
    assert_success(&out, &args.join(" "));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", stdout(&out)))
}

#[test]
fn list_show_and_history_have_their_fields() {
    let env = Env::with_credentials(&[CREDENTIAL, "or-empty"]);
    env.import(CREDENTIAL, &canary(), &["--expires-at", "1893456000"]);

    let list = json(&env, &["key", "list", "--json"]);
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{list:#}");
    let row = rows.iter().find(|r| r["credential"] == CREDENTIAL).unwrap();
    for field in [
        "credential",
        "provider",
        "stage",
        "version",
        "fingerprint",
        "created_at",
        "age_seconds",
        "expires_at",
        "last_check_at",
        "last_check_status",
    ] {
        assert!(row.get(field).is_some(), "no {field} in {row:#}");
    }
    assert_eq!(row["provider"], PROVIDER);
    assert_eq!(row["stage"], "current");
    assert_eq!(row["expires_at"], 1_893_456_000);
    assert!(row["fingerprint"].as_str().unwrap().starts_with("sha256:"));
    let empty = rows.iter().find(|r| r["credential"] == "or-empty").unwrap();
    assert!(
        empty["stage"].is_null() && empty["fingerprint"].is_null(),
        "{empty:#}"
    );

    let table = env.run(&["key", "list"]);
    assert_success(&table, "key list");
    let text = stdout(&table);
    assert!(text.starts_with("CREDENTIAL"), "{text}");
    assert!(text.contains("(no key)"), "{text}");

    let show = json(&env, &["key", "show", CREDENTIAL, "--json"]);
    for field in [
        "credential",
        "provider",
        "provider_kind",
        "check_status",
        "valid",
        "last_check_at",
        "next_rotation_at",
        "last_rotated_at",
        "consecutive_failures",
        "versions",
    ] {
        assert!(show.get(field).is_some(), "no {field} in {show:#}");
    }
    assert_eq!(show["provider_kind"], "openrouter");
    let version = &show["versions"][0];
    for field in [
        "version",
        "stage",
        "fingerprint",
        "provider_key_id",
        "rotation_id",
        "created_at",
        "expires_at",
        "stage_changed_at",
        "last_check_at",
        "last_check_status",
        "has_secret",
    ] {
        assert!(version.get(field).is_some(), "no {field} in {version:#}");
    }
    assert_eq!(version["has_secret"], true);
    assert_eq!(version["fingerprint"], row["fingerprint"]);
    let show_text = env.run(&["key", "show", CREDENTIAL]);
    assert_success(&show_text, "key show");
    assert!(
        stdout(&show_text).contains("openrouter"),
        "{}",
        stdout(&show_text)
    );

    let history = json(&env, &["key", "history", CREDENTIAL, "--json"]);
    let events = history.as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["credential_added", "imported"], "{history:#}");
    assert_eq!(events[0]["actor"], "config");
    assert_eq!(events[1]["actor"], "cli:tester");
    assert_eq!(events[1]["version"], version["version"]);
    for event in events {
        for field in ["id", "at", "kind", "actor", "version", "detail"] {
            assert!(event.get(field).is_some(), "no {field} in {event:#}");
        }
    }
    let history_text = env.run(&["key", "history", CREDENTIAL]);
    assert_success(&history_text, "key history");
    assert!(stdout(&history_text).contains("imported"));
    assert!(stdout(&history_text).contains("cli:tester"));
}

#[test]
fn listings_work_without_the_master_key() {
    let env = Env::new();
    env.import(CREDENTIAL, &canary(), &[]);
    let empty = tempfile::tempdir().unwrap();
    for args in [
        &["key", "list", "--json"][..],
        &["key", "show", CREDENTIAL][..],
        &["key", "history", CREDENTIAL][..],
    ] {
        let out = run_command(
            bare_command()
                .env("CREDENTIALS_DIRECTORY", empty.path())
                .arg("--config")
                .arg(&env.config)
                .args(args),
            "",
        );
        assert_success(&out, &args.join(" "));
    }
}

#[test]
fn importing_the_same_key_twice_is_refused() {
    let env = Env::new();
    let secret = canary();
    env.import(CREDENTIAL, &secret, &[]);
    let again = env.run_with_stdin(&["key", "import", CREDENTIAL], &secret);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert!(!stderr(&again).contains(&secret));
    let show = json(&env, &["key", "show", CREDENTIAL, "--json"]);
    assert_eq!(show["versions"].as_array().unwrap().len(), 1, "{show:#}");
}

#[test]
fn importing_for_an_unknown_credential_is_a_clear_error() {
    let env = Env::new();
    let secret = canary();
    let out = env.run_with_stdin(&["key", "import", "no-such"], &secret);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("unknown credential \"no-such\""), "{err}");
    assert!(
        err.contains("[[credential]]"),
        "should say how to fix it: {err}"
    );
    assert!(!err.contains(&secret));
}

#[test]
fn empty_and_multi_line_keys_are_refused() {
    let env = Env::new();
    for (input, word) in [("", "empty"), ("sk-one\nsk-two\n", "several lines")] {
        let out = env.run_with_stdin(&["key", "import", CREDENTIAL], input);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(word), "{}", stderr(&out));
        assert!(!stderr(&out).contains("sk-one"), "{}", stderr(&out));
    }
}

#[test]
fn importing_without_a_master_key_says_how_to_create_one() {
    let env = Env::new();
    let empty = tempfile::tempdir().unwrap();
    let out = run_command(
        bare_command()
            .env("CREDENTIALS_DIRECTORY", empty.path())
            .arg("--config")
            .arg(&env.config)
            .args(["key", "import", CREDENTIAL]),
        &canary(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no master key"), "{err}");
    assert!(err.contains("keyrotd master-key generate"), "{err}");
}

#[test]
fn a_wrong_master_key_stops_the_daemon_at_start_up() {
    let env = Env::new();
    env.import(CREDENTIAL, &canary(), &[]);
    let other = env.path().join("other.key");
    assert_success(
        &env.run(&["master-key", "generate", other.to_str().unwrap()]),
        "generate",
    );
    let out = run_command(
        bare_command()
            .arg("--config")
            .arg(&env.config)
            .arg("--master-key")
            .arg(&other)
            .arg("run"),
        "",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("does not open this store"), "{err}");
    assert!(err.contains(&*other.to_string_lossy()), "{err}");
    assert!(!err.contains("keyrotd ready"), "{err}");
}

#[test]
fn a_master_key_readable_by_others_is_refused() {
    let env = Env::new();
    std::fs::set_permissions(&env.master_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run_with_stdin(&["key", "import", CREDENTIAL], &canary());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(err.contains("644"), "{err}");
    let run = env.run(&["run"]);
    assert!(!run.status.success());
    assert!(stderr(&run).contains("chmod 600"), "{}", stderr(&run));
}

#[test]
fn master_key_generate_never_overwrites() {
    let env = Env::new();
    let before = std::fs::read(&env.master_key).unwrap();
    let mode = std::fs::metadata(&env.master_key)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = env.run(&["master-key", "generate", env.master_key.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&env.master_key).unwrap(), before);
}

#[test]
fn master_key_rotation_reseals_every_secret_under_the_new_key() {
    let env = Env::new();
    let secret = canary();
    env.import(CREDENTIAL, &secret, &[]);
    let new_key = env.path().join("new.key");
    assert_success(
        &env.run(&["master-key", "generate", new_key.to_str().unwrap()]),
        "generate",
    );
    let out = env.run(&[
        "master-key",
        "rotate",
        "--new-key",
        new_key.to_str().unwrap(),
    ]);
    assert_success(&out, "master-key rotate");
    assert!(
        stdout(&out).contains("re-sealed 1 secrets"),
        "{}",
        stdout(&out)
    );

    // The old key no longer opens the store; the new one does.
    let with = |key: &std::path::Path| {
        run_command(
            bare_command()
                .arg("--config")
                .arg(&env.config)
                .arg("--master-key")
                .arg(key)
                .args(["key", "rotate", CREDENTIAL]),
            "",
        )
    };
    let old = with(&env.master_key);
    assert!(
        stderr(&old).contains("does not open this store"),
        "{}",
        stderr(&old)
    );
    let new = with(&new_key);
    assert!(
        !stderr(&new).contains("does not open this store"),
        "{}",
        stderr(&new)
    );
    // The history records the rotation without any key material.
    let history = env.run(&["key", "history", CREDENTIAL]);
    assert!(!stdout(&history).contains(&secret));
    for file in env.database_files() {
        assert!(!contains_bytes(
            &std::fs::read(&file).unwrap(),
            secret.as_bytes()
        ));
    }
}

#[test]
fn a_key_on_the_command_line_is_refused_without_being_echoed() {
    let env = Env::new();
    let secret = canary();
    let out = env.run(&["key", "import", CREDENTIAL, &secret]);
    assert!(!out.status.success());
    assert!(!stderr(&out).contains(&secret), "{}", stderr(&out));
    assert!(!stdout(&out).contains(&secret));
    assert!(
        stderr(&out).contains("never from the command line"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_database_created_by_root_belongs_to_the_owner_of_its_directory() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        skip_or_fail("needs root to create a file for another user");
        return;
    }
    let env = Env::new();
    let state = env.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    let database = state.join("keyrotd.db");
    let out = run_command(
        env.command()
            .arg("--database")
            .arg(&database)
            .args(["key", "import", CREDENTIAL]),
        &format!("{}\n", canary()),
    );
    assert_success(&out, "key import into a directory owned by nobody");
    assert_eq!(std::fs::metadata(&database).unwrap().uid(), 65534);
    assert_eq!(std::fs::metadata(&database).unwrap().gid(), 65534);
}

/// A first key imported by root into a directory the service user owns leaves files that
/// user can still use: the key file, the env file (read back at the next delivery) and the
/// lock files beside them (opened read-write by every later delivery) belong to the
/// directory's owner, not to root.
#[test]
fn files_root_delivers_into_a_service_directory_belong_to_its_owner() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        skip_or_fail("needs root to create a file for another user");
        return;
    }
    let env = Env::new();
    let app = env.path().join("app");
    std::fs::create_dir(&app).unwrap();
    std::os::unix::fs::chown(&app, Some(65534), Some(65534)).unwrap();
    env.write_config(&format!(
        "{}deliver = [{{ kind = \"file\", path = {:?} }}, {{ kind = \"env_file\", path = {:?}, variable = \"K\" }}]\n",
        sections(&[CREDENTIAL]),
        app.join("key").to_str().unwrap(),
        app.join("env").to_str().unwrap(),
    ));
    env.import(CREDENTIAL, &canary(), &[]);
    for name in ["key", ".key.keyrotd.lock", "env", ".env.keyrotd.lock"] {
        let meta = std::fs::metadata(app.join(name)).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (65534, 65534),
            "{name} is not the directory owner's"
        );
    }
}
