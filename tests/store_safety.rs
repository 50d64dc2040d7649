//! A database keyrotd must not touch — from a newer schema, not SQLite, another program's,
//! or in a directory it cannot write — gives a clear one-line error naming the file and the
//! cause, and is left byte-for-byte as it was (no -wal/-shm files appear next to it).

mod common;

use common::*;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::ConnectOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs SQL statements on a database file with sqlx, then closes it cleanly in
/// rollback-journal mode so the file is complete on its own (no -wal/-shm left).
fn sql(path: &Path, statements: &[&str]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Delete)
            .connect()
            .await
            .unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&mut conn).await.unwrap();
        }
        sqlx::Connection::close(conn).await.unwrap();
    });
}

/// Key versions in the main database file read on its own (a copy without its -wal and
/// -shm, opened immutable): zero when the file has no schema yet.
fn key_versions_in_main_file_alone(db: &Path) -> i64 {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("alone.db");
    std::fs::copy(db, &copy).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let count = runtime.block_on(async {
        let mut conn = SqliteConnectOptions::new()
            .filename(&copy)
            .read_only(true)
            .immutable(true)
            .connect()
            .await
            .unwrap();
        let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM key_versions")
            .fetch_one(&mut conn)
            .await;
        sqlx::Connection::close(conn).await.unwrap();
        count
    });
    match count {
        Ok(count) => count,
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => 0,
        Err(e) => panic!("reading the main file alone: {e}"),
    }
}

fn sidecars(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .filter(|p| p.exists())
        .collect()
}

/// An env whose database holds a sealed key, closed and self-contained.
fn env_with_database() -> Env {
    let env = Env::new();
    env.import(CREDENTIAL, &canary(), &[]);
    sql(&env.database, &[]);
    assert!(
        sidecars(&env.database).is_empty(),
        "{:?}",
        sidecars(&env.database)
    );
    env
}

/// Both `key list` and `run` refuse the database with an error containing `words`, and
/// leave it untouched.
fn assert_refused(env: &Env, words: &[&str]) {
    let before = file_hash(&env.database);
    for args in [&["key", "list"][..], &["run"][..]] {
        let out = env.run(args);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{args:?} accepted the database:\n{err}"
        );
        let line = err
            .lines()
            .find(|l| l.contains(&*env.database.to_string_lossy()))
            .unwrap_or_else(|| panic!("{args:?}: the error does not name the file:\n{err}"));
        for word in words {
            assert!(line.contains(word), "{args:?}: no {word:?} in {line:?}");
        }
        assert!(!err.contains("keyrotd ready"), "{err}");
        assert_eq!(
            file_hash(&env.database),
            before,
            "{args:?} modified the database"
        );
        assert!(
            sidecars(&env.database).is_empty(),
            "{args:?} created {:?}",
            sidecars(&env.database)
        );
    }
}

#[test]
fn a_database_from_a_newer_schema_is_refused() {
    let env = env_with_database();
    sql(
        &env.database,
        &[
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
           VALUES (99990101000000, 'from the future', 1, x'00', 0)",
        ],
    );
    assert_refused(&env, &["newer", "99990101000000"]);
}

#[test]
fn random_bytes_are_not_a_database() {
    let env = Env::new();
    let mut bytes = vec![0u8; 8192];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    std::fs::write(&env.database, &bytes).unwrap();
    assert_refused(&env, &["not a keyrotd database"]);
}

#[test]
fn a_database_with_an_overwritten_header_is_refused() {
    let env = env_with_database();
    let mut bytes = std::fs::read(&env.database).unwrap();
    bytes[..16].copy_from_slice(b"garbage garbage!");
    std::fs::write(&env.database, &bytes).unwrap();
    assert_refused(&env, &["not a keyrotd database"]);
}

#[test]
fn another_programs_sqlite_database_is_not_migrated() {
    let env = Env::new();
    sql(
        &env.database,
        &[
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
            "INSERT INTO notes (body) VALUES ('not yours')",
        ],
    );
    assert_refused(&env, &["not a keyrotd database"]);
}

/// Runs keyrotd as `nobody` when we are root (root ignores directory permissions).
fn run_unprivileged(binary: &Path, env: &Env, database: &Path, args: &[&str]) -> Output {
    let mut command = if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary);
        command
    } else {
        Command::new(binary)
    };
    command
        .env_remove("NOTIFY_SOCKET")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .arg("--config")
        .arg(&env.config)
        .arg("--master-key")
        .arg(&env.master_key)
        .arg("--database")
        .arg(database)
        .args(args);
    run_command(&mut command, "")
}

#[test]
fn an_unwritable_directory_is_a_clear_error_and_nothing_is_touched() {
    let env = env_with_database();
    let root = is_root();
    // Everything `nobody` needs must be reachable by it: the scratch dir, the config, a
    // copy of the binary, and a master key it owns (mode 0600).
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let binary = env.path().join("keyrotd");
    std::fs::copy(bin(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    if root {
        std::os::unix::fs::chown(&env.master_key, Some(65534), Some(65534)).unwrap();
    }

    // A read-only state directory (owned by root, 0755; or 0555 when not root).
    let state = env.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let existing = state.join("existing.db");
    std::fs::copy(&env.database, &existing).unwrap();
    std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mode = if root { 0o755 } else { 0o555 };
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(mode)).unwrap();

    let fresh = state.join("fresh.db");
    let before = file_hash(&existing);
    for (database, args) in [
        (&fresh, &["run"][..]),
        (&fresh, &["key", "list"][..]),
        (&existing, &["run"][..]),
        (&existing, &["key", "list"][..]),
    ] {
        let out = run_unprivileged(&binary, &env, database, args);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{args:?} on {database:?} succeeded:\n{err}"
        );
        let line = err
            .lines()
            .find(|l| l.contains("cannot create or write"))
            .unwrap_or_else(|| panic!("{args:?}: no 'cannot create or write' in:\n{err}"));
        assert!(line.contains(&*state.to_string_lossy()), "{line}");
        assert!(
            line.contains("ermission denied") || line.contains("ead-only"),
            "no cause in {line}"
        );
        assert!(!err.contains("keyrotd ready"), "{err}");
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        file_hash(&existing),
        before,
        "the existing database was modified"
    );
    let mut left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["existing.db"],
        "files appeared in the read-only directory"
    );
}

/// After a SIGKILL the newest state can live only in the WAL file: the store must still be
/// recognised as ours (not "another program's database") and read completely.
#[test]
fn a_store_left_with_an_unmerged_wal_after_sigkill_opens_with_everything_in_it() {
    let env = Env::new();
    let secret = canary();
    let daemon = env.start();
    env.import(CREDENTIAL, &secret, &[]);
    daemon.wait_for_metrics("the imported key", |m| has_credential(m, CREDENTIAL));
    nix::sys::signal::kill(daemon.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    drop(daemon);
    // The premise: the daemon died with the imported key in a WAL file that nobody merged.
    // Were it checkpointed already (a close, an automatic checkpoint), the rest would
    // prove nothing about reading a WAL.
    let wal = PathBuf::from(format!("{}-wal", env.database.display()));
    let wal_len = std::fs::metadata(&wal)
        .unwrap_or_else(|e| panic!("no {wal:?} after SIGKILL: {e}"))
        .len();
    assert!(wal_len > 32, "{wal:?} holds no frame ({wal_len} bytes)");
    assert_eq!(
        key_versions_in_main_file_alone(&env.database),
        0,
        "the imported key was merged into the main file: nothing lives only in the WAL"
    );
    let listing = env.run(&["key", "list", "--json"]);
    assert_success(&listing, "key list after SIGKILL");
    assert!(
        stdout(&listing).contains("\"current\""),
        "{}",
        stdout(&listing)
    );
    let restarted = env.start();
    restarted.wait_for_metrics("the key after restart", |m| has_credential(m, CREDENTIAL));
    restarted.stop();
}
