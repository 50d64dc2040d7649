//! A management key given as a systemd credential (`{ credential = NAME }`), read by a
//! command run from a shell, with no `$CREDENTIALS_DIRECTORY`: from a plain credential store,
//! from an encrypted one through `systemd-creds decrypt` (a fake that records its arguments,
//! and the real one when installed), and the error when no store holds it. Under the unit
//! (`$CREDENTIALS_DIRECTORY` set) only the unit's copy counts, as before.
//!
//! The stores are temporary directories named by `KEYROTD_CREDSTORE_PATH`; the command is
//! `key rotate`, which the simulated provider answers only with the right management key.

mod common;

use common::*;
use keyrotd::simulator::Simulator;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SIM_CREDENTIAL: &str = "sim-prod";
/// The systemd credential the provider's management key is read from.
const MANAGEMENT_CREDENTIAL: &str = "sim-mgmt";

/// An installation whose simulated provider takes its management key from the systemd
/// credential [`MANAGEMENT_CREDENTIAL`], with a first key imported, and an empty credential
/// store `credstore/` (its encrypted sibling `credstore.encrypted/`) beside it.
struct Rig {
    sim: Simulator,
    env: Env,
    store: PathBuf,
    encrypted_store: PathBuf,
}

impl Rig {
    async fn new() -> Rig {
        let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let first = canary();
        sim.add_key(&first);
        let env = Env::with_credentials(&[]);
        env.write_config(&format!(
            r#"[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ credential = "{MANAGEMENT_CREDENTIAL}" }}

[[credential]]
name = "{SIM_CREDENTIAL}"
provider = "sim"
rotation = {{ grace = "1h", retry_backoff = "1h" }}
"#,
            base = sim.base_url(),
        ));
        let store = env.path().join("credstore");
        let encrypted_store = env.path().join("credstore.encrypted");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(&encrypted_store).unwrap();
        // `key import` needs the management key too (it delivers the first key through the
        // provider's adapters); each test then places the credential its own way.
        let management = store.join(MANAGEMENT_CREDENTIAL);
        std::fs::write(&management, sim.management_key()).unwrap();
        let out = run_command(
            env.command().env("KEYROTD_CREDSTORE_PATH", &store).args([
                "key",
                "import",
                SIM_CREDENTIAL,
            ]),
            &first,
        );
        assert_success(&out, "key import");
        std::fs::remove_file(&management).unwrap();
        Rig {
            sim,
            env,
            store,
            encrypted_store,
        }
    }

    /// `keyrotd key rotate` from a shell: no `$CREDENTIALS_DIRECTORY`, the stores of this rig.
    fn rotate(&self, adjust: impl FnOnce(&mut Command)) -> Output {
        let mut command = self.env.command();
        command
            .env("KEYROTD_CREDSTORE_PATH", &self.store)
            .args(["key", "rotate", SIM_CREDENTIAL]);
        adjust(&mut command);
        run_command(&mut command, "")
    }

    fn management_key(&self) -> String {
        self.sim.management_key()
    }
}

/// Fails naming each output of `out` that holds `secret`.
fn assert_not_in_output(out: &Output, secret: &str) {
    assert!(
        !contains_bytes(&out.stdout, secret.as_bytes()),
        "the management key is in stdout"
    );
    assert!(
        !contains_bytes(&out.stderr, secret.as_bytes()),
        "the management key is in stderr"
    );
}

/// A fake `systemd-creds` in `dir`: writes each argument on a line of `argv_log`, then prints
/// `plaintext` (or fails with `plaintext` as its message when `fail`).
fn fake_systemd_creds(dir: &Path, argv_log: &Path, plaintext: &str, fail: bool) {
    let script = if fail {
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{log}'\necho '{plaintext}' >&2\nexit 1\n",
            log = argv_log.display()
        )
    } else {
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{log}'\nprintf '%s\\n' '{plaintext}'\n",
            log = argv_log.display()
        )
    };
    let path = dir.join("systemd-creds");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `PATH` with `first` in front.
fn path_with(first: &Path) -> std::ffi::OsString {
    let mut dirs = vec![first.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reads_the_management_key_from_a_plain_credential_store() {
    let rig = Rig::new().await;
    std::fs::write(
        rig.store.join(MANAGEMENT_CREDENTIAL),
        format!("{}\n", rig.management_key()),
    )
    .unwrap();

    let out = rig.rotate(|_| {});
    assert_success(
        &out,
        "key rotate with the management key in a credential store",
    );
    assert!(
        stdout(&out).contains("rotated sim-prod"),
        "{}",
        stdout(&out)
    );
    assert_not_in_output(&out, &rig.management_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_credential_is_decrypted_by_systemd_creds_and_never_in_its_arguments() {
    let rig = Rig::new().await;
    let encrypted = rig.encrypted_store.join(MANAGEMENT_CREDENTIAL);
    std::fs::write(&encrypted, "not the key: ciphertext\n").unwrap();
    // A plain copy too: the encrypted store comes first, as in systemd's search.
    std::fs::write(
        rig.store.join(MANAGEMENT_CREDENTIAL),
        "sk-wrong-plain-copy\n",
    )
    .unwrap();
    let bin = tempfile::tempdir().unwrap();
    let argv_log = rig.env.path().join("systemd-creds.argv");
    fake_systemd_creds(bin.path(), &argv_log, &rig.management_key(), false);

    let out = rig.rotate(|command| {
        command.env("PATH", path_with(bin.path()));
    });
    assert_success(&out, "key rotate with an encrypted management key");
    let argv = std::fs::read_to_string(&argv_log).expect("systemd-creds was run");
    assert_eq!(
        argv.lines().collect::<Vec<_>>(),
        [
            "decrypt",
            &format!("--name={MANAGEMENT_CREDENTIAL}"),
            encrypted.to_str().unwrap(),
            "-"
        ],
        "systemd-creds arguments"
    );
    assert!(!argv.contains(&rig.management_key()));
    assert_not_in_output(&out, &rig.management_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_decryption_says_what_systemd_creds_said() {
    let rig = Rig::new().await;
    let encrypted = rig.encrypted_store.join(MANAGEMENT_CREDENTIAL);
    std::fs::write(&encrypted, "ciphertext\n").unwrap();
    let bin = tempfile::tempdir().unwrap();
    let argv_log = rig.env.path().join("systemd-creds.argv");
    fake_systemd_creds(
        bin.path(),
        &argv_log,
        "Failed to determine local credential key",
        true,
    );

    let out = rig.rotate(|command| {
        command.env("PATH", path_with(bin.path()));
    });
    assert!(!out.status.success(), "a failed decryption passed");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot decrypt systemd credential \"{MANAGEMENT_CREDENTIAL}\" from {}",
            encrypted.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("Failed to determine local credential key"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_systemd_creds_decrypts_a_credential_bound_to_its_name() {
    if !tool_available("systemd-creds") {
        return;
    }
    let rig = Rig::new().await;
    // A host key of the test's own (systemd-creds makes it at the first encryption) instead
    // of /var/lib/systemd/credential.secret.
    let host_secret = rig.env.path().join("credential.secret");
    let encrypt = |name: &str, path: &Path| -> Output {
        let mut child = Command::new("systemd-creds")
            .env("SYSTEMD_CREDENTIAL_SECRET", &host_secret)
            .args(["encrypt", "--with-key=host", &format!("--name={name}"), "-"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rig.management_key().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let encrypted = rig.encrypted_store.join(MANAGEMENT_CREDENTIAL);

    // Encrypted for another name: systemd-creds refuses it, as systemd would for the unit.
    let out = encrypt("another-name", &encrypted);
    if !out.status.success() {
        skip_or_fail(&format!(
            "systemd-creds cannot encrypt with a host key here: {}",
            stderr(&out).trim()
        ));
        return;
    }
    let out = rig.rotate(|command| {
        command.env("SYSTEMD_CREDENTIAL_SECRET", &host_secret);
    });
    assert!(
        !out.status.success(),
        "a credential of another name was used"
    );
    assert!(
        stderr(&out).contains("cannot decrypt systemd credential"),
        "{}",
        stderr(&out)
    );

    assert_success(
        &encrypt(MANAGEMENT_CREDENTIAL, &encrypted),
        "systemd-creds encrypt",
    );
    let out = rig.rotate(|command| {
        command.env("SYSTEMD_CREDENTIAL_SECRET", &host_secret);
    });
    assert_success(&out, "key rotate with a real encrypted credential");
    assert_not_in_output(&out, &rig.management_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_store_holding_it_the_error_names_every_place_and_the_ways_out() {
    let rig = Rig::new().await;
    let other = rig.env.path().join("other-store");
    let stores = std::env::join_paths([&rig.store, &other]).unwrap();

    let out = rig.rotate(|command| {
        command.env("KEYROTD_CREDSTORE_PATH", &stores);
    });
    assert!(!out.status.success(), "a missing management key passed");
    let err = stderr(&out);
    let other_encrypted = rig.env.path().join("other-store.encrypted");
    for place in [&rig.encrypted_store, &other_encrypted, &rig.store, &other] {
        let path = place.join(MANAGEMENT_CREDENTIAL);
        assert!(
            err.contains(&*path.to_string_lossy()),
            "{path:?} not named: {err}"
        );
    }
    assert!(err.contains("$CREDENTIALS_DIRECTORY is not set"), "{err}");
    for way_out in [
        "LoadCredential=sim-mgmt",
        "systemd-run -P -p LoadCredential=sim-mgmt:PATH keyrotd",
        "CREDENTIALS_DIRECTORY",
    ] {
        assert!(err.contains(way_out), "no {way_out:?} in: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_unit_only_the_credentials_directory_counts() {
    let rig = Rig::new().await;
    std::fs::write(rig.store.join(MANAGEMENT_CREDENTIAL), rig.management_key()).unwrap();
    let unit_copies = tempfile::tempdir().unwrap();

    // The unit does not load the credential: the store's copy is not used instead.
    let out = rig.rotate(|command| {
        command.env("CREDENTIALS_DIRECTORY", unit_copies.path());
    });
    assert!(
        !out.status.success(),
        "a credential outside $CREDENTIALS_DIRECTORY was used"
    );
    let missing = unit_copies.path().join(MANAGEMENT_CREDENTIAL);
    assert!(
        stderr(&out).contains(&format!("cannot read secret file {}", missing.display())),
        "{}",
        stderr(&out)
    );

    // It does: its copy is read.
    std::fs::write(&missing, rig.management_key()).unwrap();
    let out = rig.rotate(|command| {
        command.env("CREDENTIALS_DIRECTORY", unit_copies.path());
    });
    assert_success(&out, "key rotate with the unit's copy");
}
