//! `kind = "exec"`: a hook run after delivery, e.g. `systemctl try-reload-or-restart app`.
//!
//! The command runs directly (no shell) in its own process group. The key reaches it on
//! standard input or in one environment variable, or not at all; never in its arguments,
//! which every local user can read in `/proc`. The hook also gets `KEYROTD_CREDENTIAL`,
//! `KEYROTD_FINGERPRINT` and `KEYROTD_VERSION_ID`. Its standard output is discarded (a hook
//! that echoes the key must not put it in the journal); the last line of standard error,
//! with the key masked, goes into the error when the hook fails. A hook that outlives its
//! timeout is killed together with everything it started.

use super::{sanitize, Delivery, DeliveryError, Target};
use crate::config::{format_duration, DeliveryConfig, HookKeyVia, DEFAULT_KEY_ENV_VAR};
use async_trait::async_trait;
use secrecy::ExposeSecret;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroize::Zeroizing;

/// How much of the end of stderr is kept.
const STDERR_TAIL: usize = 8 * 1024;
/// How long stderr may stay open after the hook exited (a background child may hold it).
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// `kind = "exec"`.
#[derive(Debug, Clone)]
pub(crate) struct ExecTarget {
    command: Vec<String>,
    key_via: HookKeyVia,
    env_var: String,
    timeout: Duration,
}

impl ExecTarget {
    pub(crate) fn from_config(config: &DeliveryConfig) -> Result<Self, DeliveryError> {
        let command = config
            .command
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_default();
        Self::new(
            command,
            config.key_via(),
            config.env_var(),
            config.timeout(),
        )
    }

    pub fn new(
        command: Vec<String>,
        key_via: HookKeyVia,
        env_var: &str,
        timeout: Duration,
    ) -> Result<Self, DeliveryError> {
        if command
            .first()
            .is_none_or(|program| program.trim().is_empty())
        {
            return Err(DeliveryError::Config {
                target: "exec".into(),
                reason: "`command` must name a program to run".into(),
            });
        }
        Ok(ExecTarget {
            command,
            key_via,
            env_var: env_var.to_string(),
            timeout,
        })
    }
}

#[async_trait]
impl Target for ExecTarget {
    fn describe(&self) -> String {
        let words: Vec<String> = self
            .command
            .iter()
            .map(|word| {
                if !word.is_empty() && !word.contains(|c: char| c.is_whitespace() || c == '"') {
                    word.clone()
                } else {
                    format!("{word:?}")
                }
            })
            .collect();
        format!("exec {}", words.join(" "))
    }

    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        let target = self.describe();
        let key = delivery.key.expose_secret();
        let mut child =
            self.hook_command(delivery, key)
                .spawn()
                .map_err(|source| DeliveryError::Io {
                    target: target.clone(),
                    action: format!("starting {:?}", self.command[0]),
                    source,
                })?;
        let group = child.id();
        let stderr = child.stderr.take().map(keep_stderr_tail);

        let mut stdin = child.stdin.take();
        let run = async {
            if let Some(mut pipe) = stdin.take() {
                let mut line = Zeroizing::new(Vec::with_capacity(key.len() + 1));
                line.extend_from_slice(key.as_bytes());
                line.push(b'\n');
                // A hook that does not read its input is not an error (broken pipe).
                let _ = pipe.write_all(&line).await;
                let _ = pipe.shutdown().await;
            }
            child.wait().await
        };
        let status = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                kill_group(group);
                return Err(DeliveryError::Io {
                    target,
                    action: "waiting for the hook".into(),
                    source,
                });
            }
            Err(_elapsed) => {
                kill_group(group);
                let _ = child.kill().await;
                if let Some(task) = stderr {
                    task.abort();
                }
                return Err(DeliveryError::HookTimeout {
                    target,
                    timeout: format_duration(self.timeout),
                });
            }
        };
        if status.success() {
            if let Some(task) = stderr {
                task.abort();
            }
            return Ok(());
        }
        Err(DeliveryError::HookFailed {
            target,
            status: describe_status(status),
            stderr: stderr_last_line(stderr, key).await,
        })
    }
}

impl ExecTarget {
    /// The hook's command: its environment, the key on stdin or in `env_var` (never in
    /// argv), stdout discarded, stderr piped, in a process group of its own.
    fn hook_command(&self, delivery: &Delivery<'_>, key: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .env("KEYROTD_CREDENTIAL", delivery.credential)
            .env("KEYROTD_FINGERPRINT", delivery.fingerprint)
            .env("KEYROTD_VERSION_ID", delivery.version_id.to_string())
            // Never pass on a key variable keyrotd itself might have inherited.
            .env_remove(DEFAULT_KEY_ENV_VAR)
            .env_remove(&self.env_var)
            .stdin(if self.key_via == HookKeyVia::Stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if self.key_via == HookKeyVia::Env {
            command.env(&self.env_var, key);
        }
        command
    }
}

/// The end of stderr kept by [`keep_stderr_tail`], and whether anything before it was cut.
type StderrTail = (Zeroizing<Vec<u8>>, bool);

/// Reads the hook's stderr to its end in a task, keeping only the last `STDERR_TAIL` bytes.
fn keep_stderr_tail(mut pipe: tokio::process::ChildStderr) -> tokio::task::JoinHandle<StderrTail> {
    tokio::spawn(async move {
        let mut tail = Zeroizing::new(Vec::new());
        let mut truncated = false;
        let mut chunk = Zeroizing::new([0u8; 4096]);
        loop {
            match pipe.read(&mut chunk[..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.extend_from_slice(&chunk[..n]);
                    if tail.len() > STDERR_TAIL {
                        let cut = tail.len() - STDERR_TAIL;
                        tail.drain(..cut);
                        truncated = true;
                    }
                }
            }
        }
        (tail, truncated)
    })
}

/// The last line of a failed hook's stderr, key masked; empty when stderr stays open
/// past `STDERR_GRACE` (a background child may hold it).
async fn stderr_last_line(
    stderr: Option<tokio::task::JoinHandle<StderrTail>>,
    key: &str,
) -> String {
    match stderr {
        Some(task) => match tokio::time::timeout(STDERR_GRACE, task).await {
            Ok(Ok((tail, truncated))) => last_line(&tail, truncated, key),
            _ => String::new(),
        },
        None => String::new(),
    }
}

/// SIGKILL to the hook's process group (it was started as the group's leader).
fn kill_group(group: Option<u32>) {
    if let Some(pid) = group.and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("failed ({status})"),
    }
}

/// The last non-empty line of stderr, with the key masked. When the kept tail starts in
/// the middle of a line, that partial line is dropped: it could start with the end of a key.
fn last_line(tail: &[u8], truncated: bool, key: &str) -> String {
    let text = Zeroizing::new(String::from_utf8_lossy(tail).into_owned());
    let text = if truncated {
        match text.find('\n') {
            Some(newline) => &text[newline + 1..],
            None => return "(last line of stderr too long to show)".into(),
        }
    } else {
        &text[..]
    };
    let line = text
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("");
    sanitize(line, &[key], 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn last_line_masks_the_key_and_skips_blank_lines() {
        assert_eq!(
            last_line(b"first\nbad key sk-1234\n\n", false, "sk-1234"),
            "bad key [REDACTED]"
        );
        assert_eq!(last_line(b"", false, "sk-1234"), "");
    }

    #[test]
    fn a_truncated_tail_drops_its_partial_first_line() {
        assert_eq!(
            last_line(b"1234 partial\nwhole\n", true, "sk-1234"),
            "whole"
        );
        assert!(last_line(b"x1234", true, "sk-1234").contains("too long"));
    }

    #[test]
    fn describe_quotes_only_words_that_need_it() {
        let t = ExecTarget::new(
            vec!["systemctl".into(), "reload".into(), "my app".into()],
            HookKeyVia::None,
            DEFAULT_KEY_ENV_VAR,
            TIMEOUT,
        )
        .unwrap();
        assert_eq!(t.describe(), "exec systemctl reload \"my app\"");
        assert!(ExecTarget::new(vec![], HookKeyVia::None, "K", TIMEOUT).is_err());
    }
}
