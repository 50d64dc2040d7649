//! `kind = "env_file"`: `NAME=value` in a file for systemd's `EnvironmentFile=`.
//!
//! Several credentials may share one env file, so a delivery replaces only its own
//! variable's line and keeps every other line (comments, other variables) as it was; the
//! variable is appended when the file does not have it yet. The file is replaced with the
//! same [`AtomicWriter`] as a `file` target, and the whole read-modify-write cycle holds the
//! file's cross-process lock ([`super::lock`]), so two credentials delivered at once, by one
//! process or by the daemon and the CLI, do not lose each other's line.
//!
//! Values are written unquoted when they consist of ordinary key characters, in single
//! quotes otherwise (systemd takes single-quoted text literally). A key with a line break or
//! another control character, or one that would need both quoting and a single quote, is
//! refused rather than written in a form the consumer might read differently.

use super::file::AtomicWriter;
use super::{Delivery, DeliveryError, Target};
use crate::config::DeliveryConfig;
use async_trait::async_trait;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

/// `kind = "env_file"`.
#[derive(Debug, Clone)]
pub(crate) struct EnvFileTarget {
    writer: AtomicWriter,
    variable: String,
}

impl EnvFileTarget {
    pub(crate) fn from_config(config: &DeliveryConfig) -> Result<Self, DeliveryError> {
        let described = match &config.path {
            Some(path) => format!("env file {}", path.display()),
            None => "env file".to_string(),
        };
        let variable = config
            .variable
            .as_ref()
            .map(|v| v.get_ref().clone())
            .ok_or_else(|| DeliveryError::Config {
                target: described.clone(),
                reason: "`variable` is missing".into(),
            })?;
        Ok(EnvFileTarget {
            writer: AtomicWriter::from_config(config, &described)?,
            variable,
        })
    }
}

#[async_trait]
impl Target for EnvFileTarget {
    fn describe(&self) -> String {
        format!(
            "env file {} ({})",
            self.writer.path.display(),
            self.variable
        )
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        let target = self.describe();
        let value = encode_value(delivery.key.expose_secret()).map_err(|reason| {
            DeliveryError::UnsuitableKey {
                target: target.clone(),
                reason: reason.into(),
            }
        })?;
        let writer = self.writer.clone();
        let variable = self.variable.clone();
        let name = target.clone();
        tokio::task::spawn_blocking(move || update(&writer, &target, &variable, &value))
            .await
            .map_err(|join| DeliveryError::Io {
                target: name,
                action: "writing".into(),
                source: std::io::Error::other(join.to_string()),
            })?
    }
}

/// Sets `variable` to `value` in the file: read, replace the line, write, all under the
/// file's cross-process lock. Blocking.
fn update(
    writer: &AtomicWriter,
    target: &str,
    variable: &str,
    value: &str,
) -> Result<(), DeliveryError> {
    let _held = writer.lock(target)?;
    let existing = match std::fs::read(&writer.path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Zeroizing::new(Vec::new()),
        Err(source) => {
            return Err(DeliveryError::Io {
                target: target.to_string(),
                action: format!("reading {}", writer.path.display()),
                source,
            })
        }
    };
    let contents = replace_variable(&existing, variable, value);
    writer.replace(target, &contents)
}

/// Characters a value may hold without quotes in an EnvironmentFile.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.~+/=:@%,^".contains(c)
}

/// The value as it is written after `NAME=`.
fn encode_value(key: &str) -> Result<Zeroizing<String>, &'static str> {
    if key.is_empty() {
        return Err("the key is empty");
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("it contains a line break or another control character, which an environment file cannot hold");
    }
    if key.chars().all(plain) {
        return Ok(Zeroizing::new(key.to_string()));
    }
    if key.contains('\'') {
        return Err("it contains characters that need quoting and a single quote, which an environment file cannot hold unambiguously");
    }
    Ok(Zeroizing::new(format!("'{key}'")))
}

/// Whether `line` assigns `variable` (`NAME=...`, spaces around `=` allowed).
fn assigns(line: &[u8], variable: &str) -> bool {
    let line = trim_start(line);
    line.strip_prefix(variable.as_bytes())
        .is_some_and(|rest| trim_start(rest).first() == Some(&b'='))
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The file with `variable`'s first assignment replaced (later duplicates dropped, since they
/// would win) or appended, every other line kept byte for byte.
fn replace_variable(existing: &[u8], variable: &str, value: &str) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(
        existing.len() + variable.len() + value.len() + 2,
    ));
    let mut replaced = false;
    let body = existing.strip_suffix(b"\n").unwrap_or(existing);
    if !existing.is_empty() {
        for line in body.split(|b| *b == b'\n') {
            if assigns(line, variable) {
                if replaced {
                    continue;
                }
                replaced = true;
                out.extend_from_slice(variable.as_bytes());
                out.push(b'=');
                out.extend_from_slice(value.as_bytes());
            } else {
                out.extend_from_slice(line);
            }
            out.push(b'\n');
        }
    }
    if !replaced {
        out.extend_from_slice(variable.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in a child process of [`two_processes_updating_one_env_file_lose_no_line`]:
    /// `path|variable|rounds`.
    use std::path::PathBuf;

    const CHILD: &str = "KEYROTD_TEST_ENVFILE_WRITER";
    const ROUNDS: usize = 150;

    fn value_of(path: &std::path::Path, variable: &str) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{variable}=")).map(str::to_string))
    }

    /// In a child process: sets its variable `rounds` times, checking before each update
    /// that the line it wrote last is still there (another process's stale rewrite would
    /// have put an older value back). Does nothing in an ordinary test run.
    #[test]
    fn child_env_file_writer() {
        let Ok(spec) = std::env::var(CHILD) else {
            return;
        };
        let mut parts = spec.split('|');
        let (path, variable, rounds) = (
            PathBuf::from(parts.next().unwrap()),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().parse::<usize>().unwrap(),
        );
        let writer = AtomicWriter {
            path: path.clone(),
            mode: 0o600,
            owner: None,
            group: None,
            lock_wait: super::super::lock::LOCK_WAIT,
        };
        let mut lost = 0;
        for round in 0..rounds {
            if round > 0 && value_of(&path, &variable) != Some(format!("{variable}{}", round - 1)) {
                lost += 1;
            }
            update(
                &writer,
                "env file",
                &variable,
                &format!("{variable}{round}"),
            )
            .unwrap();
        }
        assert_eq!(
            lost, 0,
            "{variable}: {lost} of {rounds} updates were overwritten by the other process"
        );
    }

    #[test]
    fn two_processes_updating_one_env_file_lose_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, "# shared by two credentials\n").unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = ["ALPHA_KEY", "BETA_KEY"]
            .iter()
            .map(|variable| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "delivery::envfile::tests::child_env_file_writer",
                        "--test-threads=1",
                        "--nocapture",
                    ])
                    .env(CHILD, format!("{}|{variable}|{ROUNDS}", path.display()))
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "a writer lost updates:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = ROUNDS - 1;
        assert_eq!(
            value_of(&path, "ALPHA_KEY"),
            Some(format!("ALPHA_KEY{last}"))
        );
        assert_eq!(value_of(&path, "BETA_KEY"), Some(format!("BETA_KEY{last}")));
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("# shared by two credentials\n"));
    }

    fn replace(existing: &str, value: &str) -> String {
        String::from_utf8(replace_variable(existing.as_bytes(), "API_KEY", value).to_vec()).unwrap()
    }

    #[test]
    fn replaces_only_the_variable_and_keeps_other_lines() {
        let before = "# comment\nOTHER=1\nAPI_KEY=old\nAPI_KEYS=x\n\nLAST=2";
        assert_eq!(
            replace(before, "new"),
            "# comment\nOTHER=1\nAPI_KEY=new\nAPI_KEYS=x\n\nLAST=2\n"
        );
    }

    #[test]
    fn appends_when_absent_and_creates_when_empty() {
        assert_eq!(replace("OTHER=1\n", "k"), "OTHER=1\nAPI_KEY=k\n");
        assert_eq!(replace("", "k"), "API_KEY=k\n");
        assert_eq!(
            replace("#API_KEY=commented\n", "k"),
            "#API_KEY=commented\nAPI_KEY=k\n"
        );
    }

    #[test]
    fn later_duplicates_are_dropped_and_spaced_assignments_match() {
        assert_eq!(
            replace("  API_KEY = a\nX=1\nAPI_KEY=b\n", "k"),
            "API_KEY=k\nX=1\n"
        );
    }

    #[test]
    fn values_are_quoted_only_when_needed_and_line_breaks_are_refused() {
        assert_eq!(
            encode_value("sk-proj-AB_c.d/e+f=").unwrap().as_str(),
            "sk-proj-AB_c.d/e+f="
        );
        assert_eq!(encode_value("a b$c").unwrap().as_str(), "'a b$c'");
        assert!(encode_value("a\nb").unwrap_err().contains("line break"));
        assert!(encode_value("a b'c").unwrap_err().contains("single quote"));
        assert!(encode_value("").is_err());
    }
}
