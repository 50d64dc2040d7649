//! Preflight: would the first delivery to every target fail for sure? Checked as the running
//! process, at daemon start-up and by `keyrotd check-config --preflight`.
//!
//! A target that cannot work is otherwise found at the first rotation, days after install,
//! as a failed rotation: the classic ones are a directory missing from systemd's
//! `ReadWritePaths=` (EROFS under `ProtectSystem=strict`) and an `owner`/`group` the
//! sandbox cannot chown to (EPERM). Each check does what the delivery will do, as this
//! process: create a file in the target's directory (and chown it where the target sets an
//! owner or group), read the Kubernetes token and CA files, find the hook's program. Every
//! problem is reported, not only the first, each naming the credential, the target and the
//! path, so one pass fixes them all.
//!
//! The probe file (`.keyrotd-preflight-…`) is created exclusively and removed at once; no
//! target is written.

use super::kubernetes::{DEFAULT_CA_FILE, DEFAULT_TOKEN_FILE};
use crate::config::{Config, DeliveryConfig, DeliveryKind};
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One reason a target's delivery would fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightProblem {
    pub credential: String,
    /// The target's kind, e.g. `env_file`.
    pub target: String,
    /// The path the problem is about (a directory, a file, a program).
    pub path: PathBuf,
    pub message: String,
}

impl std::fmt::Display for PreflightProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "credential {:?}: {} target: {}: {}",
            self.credential,
            self.target,
            self.path.display(),
            self.message
        )
    }
}

/// Checks every delivery target of every credential; blocking (file-system calls only).
pub fn preflight(config: &Config) -> Vec<PreflightProblem> {
    let mut problems = Vec::new();
    for credential in &config.credentials {
        for target in &credential.deliver {
            let mut report = |path: &Path, message: String| {
                problems.push(PreflightProblem {
                    credential: credential.name().to_string(),
                    target: target.kind().as_str().to_string(),
                    path: path.to_path_buf(),
                    message,
                })
            };
            match target.kind() {
                DeliveryKind::File | DeliveryKind::EnvFile => {
                    check_file_target(target, &mut report)
                }
                DeliveryKind::Kubernetes => check_kubernetes_target(target, &mut report),
                DeliveryKind::Exec => check_exec_target(target, &mut report),
            }
        }
    }
    problems
}

/// The directory exists and this process can create a file in it, and chown that file
/// where the target sets an owner or group.
fn check_file_target(target: &DeliveryConfig, report: &mut impl FnMut(&Path, String)) {
    let Some(path) = &target.path else { return };
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return;
    };
    match std::fs::metadata(dir) {
        Err(err) if err.kind() == ErrorKind::NotFound => {
            return report(dir, "the directory does not exist; create it (keyrotd does not create a consumer's directories)".into());
        }
        Err(err) => return report(dir, format!("cannot read the directory: {err}")),
        Ok(meta) if !meta.is_dir() => return report(dir, "is not a directory".into()),
        Ok(_) => {}
    }
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir()) {
        report(path, "is a directory, not a file".into());
    }
    let probe = dir.join(format!(
        ".keyrotd-preflight-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
    {
        Ok(file) => file,
        Err(err) => return report(dir, not_writable(dir, &err)),
    };
    let remove = RemoveProbe(&probe);
    if target.owner.is_some() || target.group.is_some() {
        let uid = target.owner.as_ref().map(|o| lookup_user(o.get_ref()));
        let gid = target.group.as_ref().map(|g| lookup_group(g.get_ref()));
        let mut resolved = true;
        for lookup in [&uid, &gid].into_iter().flatten() {
            if let Err(message) = lookup {
                report(path, message.clone());
                resolved = false;
            }
        }
        if resolved {
            let uid = uid.and_then(Result::ok);
            let gid = gid.and_then(Result::ok);
            if let Err(err) = std::os::unix::fs::fchown(&file, uid, gid) {
                report(path, cannot_chown(target, &err));
            }
        }
    }
    drop(file);
    drop(remove);
}

fn not_writable(dir: &Path, err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(code) if code == nix::errno::Errno::EROFS as i32 => format!(
            "the directory is on a read-only file system for this process (EROFS: {err}); under the shipped systemd unit (ProtectSystem=strict) add it to the unit with `systemctl edit keyrotd`: [Service] ReadWritePaths={}",
            dir.display()
        ),
        _ if err.kind() == ErrorKind::PermissionDenied => format!(
            "this process (uid {}) cannot create files in the directory ({err}); make it writable for keyrotd",
            nix::unistd::geteuid()
        ),
        _ => format!("cannot create a file in the directory: {err}"),
    }
}

fn cannot_chown(target: &DeliveryConfig, err: &std::io::Error) -> String {
    let wanted = [
        target
            .owner
            .as_ref()
            .map(|o| format!("owner {:?}", o.get_ref())),
        target
            .group
            .as_ref()
            .map(|g| format!("group {:?}", g.get_ref())),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" and ");
    format!(
        "this process cannot set {wanted} on a new file ({err}); it needs CAP_CHOWN, which the shipped systemd unit withholds: drop `owner`/`group` and deliver into a setgid directory of the consumer's group with mode 0640 (README, \"Install\")"
    )
}

fn lookup_user(name: &str) -> Result<u32, String> {
    match crate::accounts::user_id(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!("unknown user {name:?} (owner)")),
        Err(errno) => Err(format!("cannot look up user {name:?}: {errno}")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    match crate::accounts::group_id(name) {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!("unknown group {name:?} (group)")),
        Err(errno) => Err(format!("cannot look up group {name:?}: {errno}")),
    }
}

struct RemoveProbe<'a>(&'a Path);

impl Drop for RemoveProbe<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// The service-account token (re-read at every delivery) and the CA bundle are readable.
fn check_kubernetes_target(target: &DeliveryConfig, report: &mut impl FnMut(&Path, String)) {
    let token = target
        .token_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
    match std::fs::read_to_string(&token) {
        Ok(text) if text.trim().is_empty() => report(&token, "the token file is empty".into()),
        Ok(_) => {}
        Err(err) => report(&token, format!("cannot read the token file: {err}")),
    }
    let ca = target
        .ca_file
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_FILE));
    if let Err(err) = std::fs::File::open(&ca) {
        report(&ca, format!("cannot read the CA file: {err}"));
    }
}

/// The hook's program exists and is executable (looked up in `PATH` when it has no slash).
fn check_exec_target(target: &DeliveryConfig, report: &mut impl FnMut(&Path, String)) {
    let Some(program) = target.command.as_ref().and_then(|c| c.get_ref().first()) else {
        return;
    };
    let executable = |path: &Path| {
        std::fs::metadata(path)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = Path::new(program);
        if !executable(path) {
            report(
                path,
                "the hook's program does not exist or is not executable".into(),
            );
        }
        return;
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path_var).any(|dir| executable(&dir.join(program))) {
        report(
            Path::new(program),
            "the hook's program is not found in PATH".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            Path::new("t.toml"),
            &format!("[[provider]]\nname = \"p\"\nkind = \"openrouter\"\n{text}"),
        )
        .unwrap()
    }

    #[test]
    fn every_problem_is_reported_with_its_credential_target_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        let text = format!(
            r#"
[[credential]]
name = "a"
provider = "p"
deliver = [
  {{ kind = "file", path = "{ok}/key" }},
  {{ kind = "env_file", path = "{missing}/env", variable = "K" }},
  {{ kind = "file", path = "{ok}/k2", owner = "no-such-user-keyrotd" }},
]
[[credential]]
name = "b"
provider = "p"
deliver = [
  {{ kind = "exec", command = ["/no/such/hook"] }},
  {{ kind = "kubernetes", namespace = "n", secret_name = "s", secret_key = "k", token_file = "{missing}/token", ca_file = "{missing}/ca" }},
]
"#,
            ok = ok.display(),
            missing = dir.path().join("absent").display()
        );
        let problems = preflight(&config(&text));
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 5, "{lines:#?}");
        assert!(
            lines[0].starts_with("credential \"a\": env_file target: ")
                && lines[0].contains("absent: the directory does not exist"),
            "{lines:#?}"
        );
        assert!(
            lines[1].contains("k2: unknown user \"no-such-user-keyrotd\""),
            "{lines:#?}"
        );
        assert!(
            lines[2].starts_with("credential \"b\": exec target: /no/such/hook"),
            "{lines:#?}"
        );
        assert!(
            lines[3].contains("token: cannot read the token file"),
            "{lines:#?}"
        );
        assert!(
            lines[4].contains("ca: cannot read the CA file"),
            "{lines:#?}"
        );
        // The probe left nothing behind.
        assert_eq!(std::fs::read_dir(&ok).unwrap().count(), 0);
    }

    #[test]
    fn erofs_names_read_write_paths_and_the_directory() {
        let err = std::io::Error::from_raw_os_error(nix::errno::Errno::EROFS as i32);
        let message = not_writable(Path::new("/etc/myapp"), &err);
        assert!(message.contains("ReadWritePaths=/etc/myapp"), "{message}");
    }
}
