//! The delivery preflight with the real binary: `keyrotd check-config --preflight` and the
//! daemon's start-up try every delivery target as the running process and report every
//! problem at once (exit 78), each naming the credential, the target and the path.
//!
//! A read-only file system (EROFS, what `ProtectSystem=strict` gives a directory missing
//! from `ReadWritePaths=`) is made with a read-only bind mount in a private mount namespace
//! (`unshare -m`, as root); chown as an unprivileged process with `setpriv` (as root) or
//! directly (as any other user). What the sandbox cannot express goes through
//! `skip_or_fail`.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

/// A config with one credential delivering through `targets` (inline tables).
fn write_config(dir: &Path, targets: &[String]) -> std::path::PathBuf {
    let text = format!(
        "{}deliver = [\n{}\n]\n",
        sections(&[CREDENTIAL]),
        targets.join(",\n")
    );
    let path = dir.join("keyrotd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check_config(config: &Path) -> Command {
    let mut command = bare_command();
    command
        .arg("check-config")
        .arg("--preflight")
        .arg("--config")
        .arg(config);
    command
}

#[test]
fn every_target_problem_is_reported_at_once_and_plain_check_config_still_passes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let ok = dir.path().join("ok");
    std::fs::create_dir(&ok).unwrap();
    let config = write_config(
        dir.path(),
        &[
            format!("{{ kind = \"file\", path = {} }}", toml_path(&ok.join("key"))),
            format!(
                "{{ kind = \"env_file\", path = {}, variable = \"K\" }}",
                toml_path(&missing.join("env"))
            ),
            format!(
                "{{ kind = \"file\", path = {}, group = \"no-such-group-keyrotd\" }}",
                toml_path(&ok.join("grouped"))
            ),
            format!(
                "{{ kind = \"kubernetes\", namespace = \"n\", secret_name = \"s\", secret_key = \"k\", token_file = {}, ca_file = {} }}",
                toml_path(&missing.join("token")),
                toml_path(&missing.join("ca.crt"))
            ),
        ],
    );
    let out = run_command(&mut check_config(&config), "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("4 delivery target problem(s)"), "{err}");
    for wanted in [
        format!(
            "credential \"{CREDENTIAL}\": env_file target: {}: the directory does not exist",
            missing.display()
        ),
        format!(
            "file target: {}: unknown group \"no-such-group-keyrotd\"",
            ok.join("grouped").display()
        ),
        format!(
            "kubernetes target: {}: cannot read the token file",
            missing.join("token").display()
        ),
        format!(
            "kubernetes target: {}: cannot read the CA file",
            missing.join("ca.crt").display()
        ),
    ] {
        assert!(err.contains(&wanted), "missing {wanted:?} in:\n{err}");
    }
    assert_eq!(
        std::fs::read_dir(&ok).unwrap().count(),
        0,
        "the probe left a file"
    );

    let mut plain = bare_command();
    plain.arg("check-config").arg("--config").arg(&config);
    assert_success(
        &run_command(&mut plain, ""),
        "check-config without --preflight",
    );
}

#[test]
fn the_daemon_refuses_to_start_when_a_target_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let config = write_config(
        dir.path(),
        &[format!(
            "{{ kind = \"file\", path = {} }}",
            toml_path(&missing.join("key"))
        )],
    );
    let database = dir.path().join("keyrotd.db");
    let mut run = bare_command();
    run.arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--database")
        .arg(&database);
    let out = run_command(&mut run, "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the directory does not exist",
            missing.display()
        )),
        "{err}"
    );
    assert!(!database.exists(), "refused before the store was opened");
}

/// A reload checks the targets as the start-up does: `keyrotd reload` (the unit's
/// `ExecReload=`, run in the service's sandbox) refuses a config with a target that cannot
/// work, naming it, and does not signal the daemon; the daemon refuses it too when SIGHUP
/// comes directly, and keeps the running config.
#[test]
fn a_reload_refuses_a_target_that_cannot_work() {
    const OK: &str = "keyrotd_config_last_reload_successful 1";
    let env = Env::new();
    let daemon = env.start();
    let pid = daemon.pid().to_string();
    assert!(daemon.metrics().lines().any(|l| l == OK));

    let missing = env.path().join("missing");
    env.write_config(&format!(
        "{}deliver = [{{ kind = \"file\", path = {} }}]\n",
        sections(&[CREDENTIAL]),
        toml_path(&missing.join("key"))
    ));
    let out = env.run(&["reload", "--pid", &pid]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "credential \"{CREDENTIAL}\": file target: {}: the directory does not exist",
            missing.display()
        )),
        "{err}"
    );

    // The same file by SIGHUP: refused by the daemon. Its log holds this one refusal only:
    // the command above never signalled.
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let log = daemon.wait_for_log("reload failed", HANG_TIMEOUT);
    assert_eq!(log.matches("reload failed").count(), 1, "{log}");
    assert!(
        log.contains("the directory does not exist"),
        "the daemon's refusal names no target: {log}"
    );
    daemon.wait_for_metrics("the refused reload", |m| {
        m.lines()
            .any(|l| l == "keyrotd_config_last_reload_successful 0")
    });
    daemon.stop();
}

#[test]
fn a_read_only_directory_is_named_with_read_write_paths() {
    let dir = tempfile::tempdir().unwrap();
    let target_dir = dir.path().join("app");
    std::fs::create_dir(&target_dir).unwrap();
    let config = write_config(
        dir.path(),
        &[format!(
            "{{ kind = \"env_file\", path = {}, variable = \"K\" }}",
            toml_path(&target_dir.join("env"))
        )],
    );
    if !is_root() {
        // Without root no read-only mount; an unwritable directory is the nearest case.
        std::fs::set_permissions(&target_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        let out = run_command(&mut check_config(&config), "");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(
            err.contains("cannot create files in the directory"),
            "{err}"
        );
        skip_or_fail("EROFS needs a read-only bind mount (unshare -m), which needs root");
        return;
    }
    if !tool_available("unshare") {
        return;
    }
    let command = check_config(&config);
    let keyrotd: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| shell_quote(a.to_str().unwrap()))
        .collect();
    let d = shell_quote(target_dir.to_str().unwrap());
    let script = format!(
        "mount --bind {d} {d} && mount -o remount,ro,bind {d} || exit 99; exec {}",
        keyrotd.join(" ")
    );
    let mut unshare = Command::new("unshare");
    unshare.args(["-m", "sh", "-c", &script]);
    let out = run_command(&mut unshare, "");
    if out.status.code() == Some(99) {
        skip_or_fail(&format!(
            "cannot make a read-only bind mount here: {}",
            stderr(&out)
        ));
        return;
    }
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("EROFS"), "{err}");
    assert!(
        err.contains(&format!("ReadWritePaths={}", target_dir.display())),
        "{err}"
    );
}

#[test]
fn an_owner_this_process_cannot_chown_to_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let target_dir = dir.path().join("app");
    std::fs::create_dir(&target_dir).unwrap();
    let config = write_config(
        dir.path(),
        &[format!(
            "{{ kind = \"file\", path = {}, owner = \"0\", mode = \"0640\" }}",
            toml_path(&target_dir.join("key"))
        )],
    );
    let mut command = check_config(&config);
    if is_root() {
        // Root may chown anything: run the check as nobody, as the shipped unit's
        // capability-less user would be.
        if !tool_available("setpriv") {
            return;
        }
        for path in [dir.path(), &target_dir] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let inner = command;
        command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(inner.get_program())
            .args(inner.get_args());
    }
    let out = run_command(&mut command, "");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains(&format!(
            "{}: this process cannot set owner \"0\"",
            target_dir.join("key").display()
        )) && err.contains("CAP_CHOWN"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&target_dir).unwrap().count(), 0);
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
