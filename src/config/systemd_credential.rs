//! Where a `{ credential = NAME }` secret is read from: the unit's `$CREDENTIALS_DIRECTORY`,
//! or, for a command run from a shell, the credential stores systemd itself reads.
//!
//! Under the unit, systemd has copied every `LoadCredential=` / `LoadCredentialEncrypted=`
//! credential (decrypted) into `$CREDENTIALS_DIRECTORY` before keyrotd starts. That copy is
//! the daemon's only source: a name the unit does not load is an error, never something
//! found elsewhere, so the daemon cannot quietly use a different secret than the unit gives
//! it.
//!
//! An operator's shell has no `$CREDENTIALS_DIRECTORY`, yet `keyrotd key rotate` there needs
//! the same management key. So without one, the name is looked up where systemd looks for
//! `LoadCredentialEncrypted=NAME` / `LoadCredential=NAME` given a bare name, in systemd's
//! order: the encrypted stores (`/etc/credstore.encrypted/`, `/run/…`, `/usr/local/lib/…`,
//! `/usr/lib/…`), each file decrypted by `systemd-creds decrypt`, then the plain stores
//! (`/etc/credstore/`, …). As in systemd, the first path that is anything but absent ends the
//! search: a store keyrotd may not read is an error, not a reason to look further. A unit
//! that maps the name to another file (`LoadCredential=NAME:/some/path`) is found only when
//! the command is pointed at it: `$CREDENTIALS_DIRECTORY`, or `$KEYROTD_CREDSTORE_PATH`
//! naming other stores.
//!
//! The plaintext goes from the file or the pipe straight into a [`SecretString`]; the
//! decrypting command gets the name and the path in its arguments, never the secret.

use secrecy::SecretString;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

/// systemd's credential store directories, in its search order (`CONF_PATHS("credstore")`).
/// Each has an encrypted sibling, the same path with `.encrypted` appended.
pub(crate) const SYSTEM_CREDENTIAL_STORES: [&str; 4] = [
    "/etc/credstore",
    "/run/credstore",
    "/usr/local/lib/credstore",
    "/usr/lib/credstore",
];

/// The environment variable that replaces [`SYSTEM_CREDENTIAL_STORES`]: a `:`-separated list
/// of plain stores, like `PATH`, each with its `.encrypted` sibling.
pub(crate) const CREDSTORE_PATH_VAR: &str = "KEYROTD_CREDSTORE_PATH";

/// The command that decrypts a credential, found on `PATH` like any tool the operator runs.
pub(crate) const SYSTEMD_CREDS: &str = "systemd-creds";

/// Room reserved for a decrypted credential before reading it, so a secret of ordinary size
/// is never copied into a grown buffer (the old one freed without being zeroed).
const PLAINTEXT_CAPACITY: usize = 64 * 1024;

/// Where `{ credential = NAME }` is looked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CredentialSource {
    /// `$CREDENTIALS_DIRECTORY`: inside the unit, its copies and nothing else.
    ServiceDirectory(PathBuf),
    /// Outside a unit: the credential stores.
    Stores(CredentialStores),
}

/// Plain credential stores, searched after all their encrypted siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CredentialStores {
    /// Plain stores in search order; `<store>.encrypted` is each one's encrypted sibling.
    pub(crate) plain: Vec<PathBuf>,
    /// The program run as `<decrypt_with> decrypt --name=NAME PATH -`.
    pub(crate) decrypt_with: OsString,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    #[error(
        "systemd credential {name:?} not found: $CREDENTIALS_DIRECTORY is not set (keyrotd is \
         not running under its unit) and no credential store holds it (looked for {}). \
         Store it as /etc/credstore/{name} (or encrypted as /etc/credstore.encrypted/{name}) \
         and load it with `LoadCredential={name}` (`LoadCredentialEncrypted={name}`); or, when \
         the unit loads it from another file, run the command with that credential: \
         `systemd-run -P -p LoadCredential={name}:PATH keyrotd ...` as root, or set \
         CREDENTIALS_DIRECTORY (or {CREDSTORE_PATH_VAR}) to the directory that holds it",
        list(searched)
    )]
    NotFound {
        name: String,
        searched: Vec<PathBuf>,
    },
    #[error("cannot read systemd credential {name:?} from {}: {source}{}", path.display(), root_hint(source))]
    Unreadable {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot decrypt systemd credential {name:?} from {}: {reason}", path.display())]
    Decrypt {
        name: String,
        path: PathBuf,
        reason: String,
    },
}

fn list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn root_hint(error: &std::io::Error) -> &'static str {
    if error.kind() == std::io::ErrorKind::PermissionDenied {
        " (credential stores are root's: run keyrotd as root)"
    } else {
        ""
    }
}

impl CredentialSource {
    /// `$CREDENTIALS_DIRECTORY` when set (the unit), else the stores of
    /// `$KEYROTD_CREDSTORE_PATH`, else systemd's.
    pub(crate) fn from_environment() -> CredentialSource {
        if let Some(directory) = non_empty_var("CREDENTIALS_DIRECTORY") {
            return CredentialSource::ServiceDirectory(PathBuf::from(directory));
        }
        let plain = match non_empty_var(CREDSTORE_PATH_VAR) {
            Some(list) => std::env::split_paths(&list)
                .filter(|store| !store.as_os_str().is_empty())
                .collect(),
            None => SYSTEM_CREDENTIAL_STORES.iter().map(PathBuf::from).collect(),
        };
        CredentialSource::Stores(CredentialStores {
            plain,
            decrypt_with: SYSTEMD_CREDS.into(),
        })
    }
}

impl CredentialStores {
    /// Every path looked at for `name`, in order: encrypted stores first, as systemd's search
    /// for `LoadCredentialEncrypted=NAME` does, then the plain ones.
    pub(crate) fn candidates(&self, name: &str) -> Vec<(PathBuf, Encryption)> {
        let encrypted = self
            .plain
            .iter()
            .filter_map(|store| encrypted_sibling(store))
            .map(|store| (store.join(name), Encryption::Encrypted));
        let plain = self
            .plain
            .iter()
            .map(|store| (store.join(name), Encryption::Plain));
        encrypted.chain(plain).collect()
    }

    /// Reads the credential `name` (a [`valid_name`]) from the first candidate that exists,
    /// untrimmed.
    pub(crate) fn read(&self, name: &str) -> Result<SecretString, CredentialError> {
        let candidates = self.candidates(name);
        for (path, encryption) in &candidates {
            let unreadable = |source| CredentialError::Unreadable {
                name: name.to_string(),
                path: path.clone(),
                source,
            };
            match encryption {
                Encryption::Plain => match read_plain(path) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(unreadable(error)),
                    Ok(secret) => return Ok(secret),
                },
                Encryption::Encrypted => match std::fs::File::open(path) {
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(unreadable(error)),
                    Ok(_) => return decrypt_once(&self.decrypt_with, name, path),
                },
            }
        }
        Err(CredentialError::NotFound {
            name: name.to_string(),
            searched: candidates.into_iter().map(|(path, _)| path).collect(),
        })
    }
}

/// Whether a store holds plaintext or `systemd-creds encrypt` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encryption {
    Plain,
    Encrypted,
}

/// `/etc/credstore` → `/etc/credstore.encrypted` (a trailing `/` ignored); none for `/`.
fn encrypted_sibling(store: &Path) -> Option<PathBuf> {
    let store: PathBuf = store.components().collect();
    store.file_name()?;
    let mut sibling = store.into_os_string();
    sibling.push(".encrypted");
    Some(sibling.into())
}

/// A credential name systemd accepts: a file name (no `/`, not `.` or `..`), so that
/// joining it to a directory cannot leave that directory.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn non_empty_var(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|value| !value.is_empty())
}

fn read_plain(path: &Path) -> Result<SecretString, std::io::Error> {
    std::fs::read_to_string(path).map(SecretString::from)
}

/// What this process has decrypted, by program, name and path: a provider resolves its
/// management key at every call, and a command run from a shell would otherwise fork
/// `systemd-creds` (and block a runtime thread on it) for every request it makes. A process
/// outside the unit is a short-lived command, so the plaintext it keeps lives no longer than
/// the command; a credential rewritten meanwhile is read again by the next command.
type Decrypted = std::collections::HashMap<(OsString, String, PathBuf), SecretString>;

static DECRYPTED: std::sync::LazyLock<std::sync::Mutex<Decrypted>> =
    std::sync::LazyLock::new(Default::default);

/// [`decrypt`], once per process for each credential; a failure is not kept.
fn decrypt_once(program: &OsStr, name: &str, path: &Path) -> Result<SecretString, CredentialError> {
    use secrecy::ExposeSecret;
    let key = (program.to_os_string(), name.to_string(), path.to_path_buf());
    // Held across the decrypt: two threads asking at once run `systemd-creds` once.
    let mut decrypted = DECRYPTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(secret) = decrypted.get(&key) {
        return Ok(SecretString::from(secret.expose_secret()));
    }
    let secret = decrypt(program, name, path)?;
    let copy = SecretString::from(secret.expose_secret());
    decrypted.insert(key, secret);
    Ok(copy)
}

/// Spawns `command`, trying again a few times on ETXTBSY: a program being replaced (a
/// package upgrade rewriting `systemd-creds`), or just written while another thread forked
/// and its child still holds the file open for writing until it execs, refuses to run for
/// a moment.
fn spawn_retrying_busy_text(command: &mut Command) -> std::io::Result<std::process::Child> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match command.spawn() {
            Err(error)
                if error.raw_os_error() == Some(nix::errno::Errno::ETXTBSY as i32)
                    && attempt < ATTEMPTS =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt));
                attempt += 1;
            }
            spawned => return spawned,
        }
    }
}

/// How long `systemd-creds decrypt` may take before it is killed: it can wait on polkit or
/// a TPM, and a command must fail rather than hang.
const DECRYPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `systemd-creds decrypt --name=NAME PATH -`: the plaintext on its stdout, read into a
/// buffer that is zeroed when dropped, then copied once into a [`SecretString`]. Killed
/// after [`DECRYPT_TIMEOUT`].
fn decrypt(program: &OsStr, name: &str, path: &Path) -> Result<SecretString, CredentialError> {
    decrypt_within(program, name, path, DECRYPT_TIMEOUT)
}

fn decrypt_within(
    program: &OsStr,
    name: &str,
    path: &Path,
    timeout: std::time::Duration,
) -> Result<SecretString, CredentialError> {
    let failed = |reason: String| CredentialError::Decrypt {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    let mut command = Command::new(program);
    command
        .arg("decrypt")
        .arg(format!("--name={name}"))
        .arg(path)
        .arg("-")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_retrying_busy_text(&mut command).map_err(|error| {
        failed(format!(
            "cannot run {}: {error}",
            Path::new(program).display()
        ))
    })?;
    // A watchdog kills the child at the deadline unless told first that it was waited for
    // (the sender dropped): until it is reaped, its pid cannot name another process.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (waited, deadline) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = deadline.recv_timeout(timeout) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let started = std::time::Instant::now();
    let mut plaintext = Zeroizing::new(Vec::with_capacity(PLAINTEXT_CAPACITY));
    // stdout is read to its end before stderr: systemd-creds writes a line or two to stderr
    // only when it fails, and then exits, closing stdout too.
    let read = child
        .stdout
        .take()
        .map(|mut stdout| stdout.read_to_end(&mut plaintext));
    let finished = child.wait_with_output();
    drop(waited);
    let finished = finished.map_err(|error| failed(format!("waiting for it failed: {error}")))?;
    if !finished.status.success() && started.elapsed() >= timeout {
        return Err(failed(format!(
            "{} decrypt did not finish within {} and was stopped",
            Path::new(program).display(),
            crate::config::format_duration(timeout)
        )));
    }
    if !finished.status.success() {
        let said = String::from_utf8_lossy(&finished.stderr);
        let said = said.trim();
        let tail = if said.is_empty() {
            String::new()
        } else {
            format!(": {}", said.lines().collect::<Vec<_>>().join(" / "))
        };
        return Err(failed(format!(
            "{} decrypt failed ({}){tail}{}",
            Path::new(program).display(),
            finished.status,
            if nix::unistd::geteuid().is_root() {
                ""
            } else {
                " (decrypting needs the host key or the TPM: run keyrotd as root)"
            }
        )));
    }
    if let Some(Err(error)) = read {
        return Err(failed(format!("reading its output failed: {error}")));
    }
    // Copied into an exact-size allocation while `plaintext` is zeroed on drop: turning the
    // buffer itself into the secret would shrink it, and an allocator that moves on shrink
    // would leave the old bytes behind unzeroed.
    match std::str::from_utf8(&plaintext) {
        Ok(text) => Ok(SecretString::from(text)),
        Err(_) => Err(failed("the decrypted credential is not UTF-8 text".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::os::unix::fs::PermissionsExt;

    /// Plain stores `a`, `b`, `c` under a temp dir (not created: a missing store is skipped).
    fn stores(root: &Path, decrypt_with: &Path) -> CredentialStores {
        CredentialStores {
            plain: ["a", "b", "c"].iter().map(|s| root.join(s)).collect(),
            decrypt_with: decrypt_with.into(),
        }
    }

    fn put(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A fake `systemd-creds`: its arguments, one a line, to `argv`; then `body` runs.
    fn fake_systemd_creds(dir: &Path, argv: &Path, body: &str) -> PathBuf {
        let path = dir.join("systemd-creds");
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n{body}\n",
            argv.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn a_decrypt_that_hangs_is_stopped_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let argv = dir.path().join("argv");
        let program = fake_systemd_creds(dir.path(), &argv, "exec sleep 30");
        let started = std::time::Instant::now();
        let error = decrypt_within(
            program.as_os_str(),
            "mgmt",
            &dir.path().join("mgmt"),
            std::time::Duration::from_millis(300),
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("did not finish within 300ms and was stopped"),
            "{error}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "waited for it"
        );
    }

    #[test]
    fn a_credential_is_decrypted_once_per_process() {
        let dir = tempfile::tempdir().unwrap();
        let argv = dir.path().join("argv");
        let runs = dir.path().join("runs");
        let program = fake_systemd_creds(
            dir.path(),
            &argv,
            &format!("echo run >> '{}'\nprintf 'decrypted-once'", runs.display()),
        );
        let store = dir.path().join("credstore");
        put(&dir.path().join("credstore.encrypted/mgmt"), "ciphertext");
        let stores = CredentialStores {
            plain: vec![store],
            decrypt_with: program.into_os_string(),
        };
        for _ in 0..3 {
            assert_eq!(
                stores.read("mgmt").unwrap().expose_secret(),
                "decrypted-once"
            );
        }
        assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\n");
    }

    #[test]
    fn a_program_open_for_writing_is_tried_again_and_then_reported_busy() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("busy");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Held open for writing throughout: every attempt meets ETXTBSY, and the last one's
        // error is what the caller sees.
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(&program)
            .unwrap();
        let error = spawn_retrying_busy_text(&mut Command::new(&program)).unwrap_err();
        assert_eq!(
            error.raw_os_error(),
            Some(nix::errno::Errno::ETXTBSY as i32),
            "{error}"
        );
        drop(writer);
        let status = spawn_retrying_busy_text(&mut Command::new(&program))
            .unwrap()
            .wait()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn the_system_stores_are_searched_in_systemds_order_encrypted_first() {
        let system = CredentialStores {
            plain: SYSTEM_CREDENTIAL_STORES.iter().map(PathBuf::from).collect(),
            decrypt_with: SYSTEMD_CREDS.into(),
        };
        let candidates = system.candidates("mgmt");
        let shown: Vec<(String, Encryption)> = candidates
            .iter()
            .map(|(path, encryption)| (path.display().to_string(), *encryption))
            .collect();
        let expected = [
            ("/etc/credstore.encrypted/mgmt", Encryption::Encrypted),
            ("/run/credstore.encrypted/mgmt", Encryption::Encrypted),
            (
                "/usr/local/lib/credstore.encrypted/mgmt",
                Encryption::Encrypted,
            ),
            ("/usr/lib/credstore.encrypted/mgmt", Encryption::Encrypted),
            ("/etc/credstore/mgmt", Encryption::Plain),
            ("/run/credstore/mgmt", Encryption::Plain),
            ("/usr/local/lib/credstore/mgmt", Encryption::Plain),
            ("/usr/lib/credstore/mgmt", Encryption::Plain),
        ]
        .map(|(path, encryption)| (path.to_string(), encryption));
        assert_eq!(shown, expected);
    }

    #[test]
    fn a_plain_credential_comes_from_the_first_store_that_holds_it() {
        let root = tempfile::tempdir().unwrap();
        put(&root.path().join("b/mgmt"), "sk-from-b\n");
        put(&root.path().join("c/mgmt"), "sk-from-c\n");
        let stores = stores(root.path(), Path::new("/nonexistent/systemd-creds"));
        let secret = stores.read("mgmt").unwrap();
        assert_eq!(secret.expose_secret(), "sk-from-b\n");
    }

    #[test]
    fn an_encrypted_credential_is_decrypted_first_with_name_and_path_only_in_argv() {
        let root = tempfile::tempdir().unwrap();
        let canary = "sk-decrypted-canary-5b1f";
        let encrypted = root.path().join("c.encrypted/mgmt");
        put(&encrypted, "ciphertext");
        put(&root.path().join("a/mgmt"), "sk-plain-copy");
        let argv = root.path().join("argv");
        let fake = fake_systemd_creds(root.path(), &argv, &format!("printf '%s\\n' '{canary}'"));

        let secret = stores(root.path(), &fake).read("mgmt").unwrap();
        assert_eq!(secret.expose_secret(), &format!("{canary}\n"));
        let args = std::fs::read_to_string(&argv).unwrap();
        assert_eq!(
            args.lines().collect::<Vec<_>>(),
            ["decrypt", "--name=mgmt", encrypted.to_str().unwrap(), "-"]
        );
        assert!(!args.contains(canary));
    }

    #[test]
    fn a_failed_decryption_names_the_file_and_what_systemd_creds_said() {
        let root = tempfile::tempdir().unwrap();
        let encrypted = root.path().join("a.encrypted/mgmt");
        put(&encrypted, "ciphertext");
        let argv = root.path().join("argv");
        let fake = fake_systemd_creds(
            root.path(),
            &argv,
            "echo 'Embedded credential name does not match' >&2; exit 1",
        );
        let error = stores(root.path(), &fake).read("mgmt").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, CredentialError::Decrypt { .. }), "{text}");
        assert!(text.contains(&*encrypted.to_string_lossy()), "{text}");
        assert!(
            text.contains("Embedded credential name does not match"),
            "{text}"
        );
        assert!(text.contains("exit status: 1"), "{text}");
    }

    #[test]
    fn a_missing_systemd_creds_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        put(&root.path().join("a.encrypted/mgmt"), "ciphertext");
        let missing = root.path().join("no-such-systemd-creds");
        let text = stores(root.path(), &missing)
            .read("mgmt")
            .unwrap_err()
            .to_string();
        assert!(
            text.contains(&format!("cannot run {}", missing.display())),
            "{text}"
        );
    }

    #[test]
    fn a_store_entry_that_cannot_be_read_ends_the_search() {
        let root = tempfile::tempdir().unwrap();
        // A directory where the credential should be: not "absent", so not skipped.
        std::fs::create_dir_all(root.path().join("a/mgmt")).unwrap();
        put(&root.path().join("b/mgmt"), "sk-from-b");
        let error = stores(root.path(), Path::new("/nonexistent"))
            .read("mgmt")
            .unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, CredentialError::Unreadable { .. }),
            "{text}"
        );
        assert!(text.contains(&*root.path().join("a/mgmt").to_string_lossy()));
    }

    #[test]
    fn permission_denied_says_to_run_as_root() {
        let error = CredentialError::Unreadable {
            name: "mgmt".into(),
            path: "/etc/credstore/mgmt".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(
            error.to_string().ends_with("run keyrotd as root)"),
            "{error}"
        );
    }

    #[test]
    fn nothing_found_names_every_place_looked_at_and_the_ways_out() {
        let root = tempfile::tempdir().unwrap();
        let stores = stores(root.path(), Path::new("/nonexistent"));
        let text = stores.read("mgmt").unwrap_err().to_string();
        for (path, _) in stores.candidates("mgmt") {
            assert!(text.contains(&*path.to_string_lossy()), "{path:?}: {text}");
        }
        for way_out in [
            "LoadCredential=mgmt",
            "systemd-run -P -p LoadCredential=mgmt:PATH",
            "CREDENTIALS_DIRECTORY",
            CREDSTORE_PATH_VAR,
        ] {
            assert!(text.contains(way_out), "{way_out}: {text}");
        }
    }

    #[test]
    fn encrypted_siblings_ignore_trailing_slashes_and_the_root_has_none() {
        assert_eq!(
            encrypted_sibling(Path::new("/srv/credstore/")),
            Some(PathBuf::from("/srv/credstore.encrypted"))
        );
        assert_eq!(
            encrypted_sibling(Path::new("/etc/credstore")),
            Some(PathBuf::from("/etc/credstore.encrypted"))
        );
        assert_eq!(encrypted_sibling(Path::new("/")), None);
    }

    #[test]
    fn names_that_would_leave_a_store_are_not_credential_names() {
        for bad in ["", ".", "..", "../etc/shadow", "a/b", "a\0b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["openrouter-mgmt", "keyrotd.db-password", "a..b"] {
            assert!(valid_name(good), "{good:?}");
        }
    }
}
