//! The command adapter: runs a program that prints JSON, for anything without an HTTP API
//! worth describing in config.
//!
//! The key goes to the command through stdin (default) or an environment variable — never
//! argv, which every user on the host can read in `/proc`. The operation is in
//! `$KEYROTD_OPERATION`. A check prints
//! `{"status":"valid","credit":[{"unit":"usd","remaining":3.5}],"expires_at":123}`
//! (`detail` and `retry_after` seconds optional). stderr is never read into anything we show:
//! a script may well echo its input there.
//!
//! Exit status: 0 with that JSON is the answer. A non-zero exit still counts when stdout holds
//! a valid answer (a checker may exit 1 for "invalid"); otherwise it is `unreachable` — a
//! broken checker is not a dead key. The command runs in a process group of its own, and at
//! the timeout the whole group is killed: a `sh -c` script's children go with it.

use super::classify::amount;
use super::client::{MAX_BODY_BYTES, MAX_RETRY_AFTER};
use super::sanitize::sanitize;
use super::{CheckReport, Credit, Provider, ProviderError, ProviderTelemetry};
use crate::config::{format_duration, ExecKeyVia, ProviderConfig};
use crate::model::CheckStatus;
use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one run of the command produced.
pub(crate) struct Output {
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RunError {
    Timeout(Duration),
    Spawn,
    TooLarge,
    Io,
}

impl RunError {
    pub(crate) fn message(&self) -> String {
        match self {
            RunError::Timeout(after) => {
                format!("command timed out after {}", format_duration(*after))
            }
            RunError::Spawn => "command could not be started".into(),
            RunError::TooLarge => format!("command printed more than {MAX_BODY_BYTES} bytes"),
            RunError::Io => "reading the command's output failed".into(),
        }
    }
}

impl From<RunError> for ProviderError {
    fn from(err: RunError) -> Self {
        match err {
            RunError::Timeout(after) => ProviderError::Timeout(after),
            other => ProviderError::Unreachable(other.message()),
        }
    }
}

/// The configured command and how to run it.
pub(crate) struct Command {
    provider: String,
    program: String,
    args: Vec<String>,
    timeout: Duration,
    key_via: ExecKeyVia,
    key_env: String,
    telemetry: ProviderTelemetry,
}

impl Command {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        let exec = config.exec.as_ref().ok_or_else(|| {
            ProviderError::Config(format!(
                "provider {:?} of kind exec needs a `[provider.exec]` table",
                config.name()
            ))
        })?;
        let (program, args) =
            exec.command.get_ref().split_first().ok_or_else(|| {
                ProviderError::Config("[provider.exec] `command` is empty".into())
            })?;
        Ok(Command {
            provider: config.name().to_string(),
            program: program.clone(),
            args: args.to_vec(),
            timeout: exec.timeout.map(|t| t.0).unwrap_or(config.timeout()),
            key_via: exec.key_via,
            key_env: exec.key_env.clone(),
            telemetry: telemetry.clone(),
        })
    }

    /// Runs the command for `operation` with `secret` handed over as configured and `vars`
    /// as `KEYROTD_*` environment variables.
    pub(crate) async fn run(
        &self,
        operation: &str,
        secret: Option<&SecretString>,
        vars: &[(&str, &str)],
    ) -> Result<Output, RunError> {
        let started = Instant::now();
        let result = self.run_to_end(operation, secret, vars).await;
        let code = match &result {
            Ok(output) if output.exit_code == Some(0) => "0".to_string(),
            Ok(output) => output
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            Err(RunError::Timeout(_)) => "timeout".into(),
            Err(_) => "error".into(),
        };
        self.telemetry
            .observe(&self.provider, operation, &code, started.elapsed());
        result
    }

    /// Starts the command and drives it to its end within the timeout. A run given up
    /// before the command was reaped (the timeout, an output too large, a broken pipe) kills
    /// its whole process group, while the unreaped leader still holds the group's id.
    async fn run_to_end(
        &self,
        operation: &str,
        secret: Option<&SecretString>,
        vars: &[(&str, &str)],
    ) -> Result<Output, RunError> {
        let mut child = self
            .command(operation, secret, vars)
            .spawn()
            .map_err(|_| RunError::Spawn)?;
        let group = child.id();
        let result = tokio::time::timeout(self.timeout, self.drive(&mut child, secret))
            .await
            .unwrap_or(Err(RunError::Timeout(self.timeout)));
        if result.is_err() {
            kill_group(group);
        }
        result
    }

    /// The command for `operation`: its environment, the key in `key_env` if so configured,
    /// stdout piped, stderr discarded, in a process group of its own.
    fn command(
        &self,
        operation: &str,
        secret: Option<&SecretString>,
        vars: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env("KEYROTD_OPERATION", operation)
            .env("KEYROTD_PROVIDER", &self.provider)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        for (name, value) in vars {
            command.env(format!("KEYROTD_{}", name.to_ascii_uppercase()), value);
        }
        if let (ExecKeyVia::Env, Some(secret)) = (self.key_via, secret) {
            command.env(&self.key_env, secret.expose_secret());
        }
        command
    }

    /// Hands the key over on stdin if so configured, reads stdout (capped) and reaps the
    /// command.
    async fn drive(
        &self,
        child: &mut tokio::process::Child,
        secret: Option<&SecretString>,
    ) -> Result<Output, RunError> {
        let mut stdin = child.stdin.take();
        if let (ExecKeyVia::Stdin, Some(secret), Some(pipe)) =
            (self.key_via, secret, stdin.as_mut())
        {
            // A command that does not read stdin closes it: a broken pipe is not our failure.
            let _ = pipe.write_all(secret.expose_secret().as_bytes()).await;
            let _ = pipe.write_all(b"\n").await;
        }
        drop(stdin);
        let mut stdout = Vec::new();
        let pipe = child.stdout.take().ok_or(RunError::Io)?;
        pipe.take(MAX_BODY_BYTES as u64 + 1)
            .read_to_end(&mut stdout)
            .await
            .map_err(|_| RunError::Io)?;
        if stdout.len() > MAX_BODY_BYTES {
            return Err(RunError::TooLarge);
        }
        let status = child.wait().await.map_err(|_| RunError::Io)?;
        Ok(Output {
            exit_code: status.code(),
            stdout,
        })
    }
}

/// SIGKILL to the command's process group (it was started as the group's leader).
fn kill_group(group: Option<u32>) {
    if let Some(pid) = group.and_then(|pid| i32::try_from(pid).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub(crate) struct Exec {
    command: Command,
}

impl Exec {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Self, ProviderError> {
        Ok(Exec {
            command: Command::new(config, telemetry)?,
        })
    }
}

/// Reads the check answer; `None` when stdout is not one.
pub(super) fn parse_check(stdout: &[u8]) -> Option<CheckReport> {
    let body: Value = serde_json::from_slice(stdout).ok()?;
    let status: CheckStatus = body.get("status")?.as_str()?.parse().ok()?;
    let detail = body
        .get("detail")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("command reported {status}"));
    let mut report = CheckReport::new(status, detail);
    if let Some(credit) = body.get("credit") {
        for entry in credit.as_array()? {
            report.credit.push(Credit {
                unit: entry.get("unit")?.as_str()?.to_ascii_lowercase(),
                remaining: amount(entry.get("remaining")?)?,
            });
        }
    }
    report.expires_at = super::classify::expiry(body.get("expires_at")).ok()?;
    report.retry_after = match body.get("retry_after") {
        None | Some(Value::Null) => None,
        // Capped like a `Retry-After` header (see `MAX_RETRY_AFTER`).
        Some(v) => Some(Duration::from_secs(v.as_u64()?).min(MAX_RETRY_AFTER)),
    };
    Some(report)
}

#[async_trait]
impl Provider for Exec {
    async fn check(&self, key: &SecretString) -> CheckReport {
        let mut report = match self.command.run("check", Some(key), &[]).await {
            Err(err) => CheckReport::new(CheckStatus::Unreachable, err.message()),
            Ok(output) => match parse_check(&output.stdout) {
                Some(report) => report,
                None => CheckReport::new(
                    CheckStatus::Unreachable,
                    match output.exit_code {
                        Some(0) => "command printed no valid check result".to_string(),
                        Some(code) => format!("command exited with status {code} without a result"),
                        None => "command was killed by a signal".to_string(),
                    },
                ),
            },
        };
        report.detail = sanitize(&report.detail, Some(key));
        report
    }
}

/// Issue / list / revoke through the same command (`issuer = true`). The management key, if
/// configured, is handed over like a checked key (stdin or `key_env`).
///
/// - `issue` (`$KEYROTD_NAME`, and `$KEYROTD_EXPIRES_AT`, the provider-side expiry to set
///   in epoch seconds, when there is one) prints `{"key": …, "id": …, "expires_at": …}` (id
///   defaults to the name);
/// - `list` (`$KEYROTD_PREFIX`) prints `[{"id": …, "name": …}]` or `{"keys": [...]}`;
/// - `revoke` (`$KEYROTD_REMOTE_ID`) exits 0 when the key is gone (already gone included).
pub(crate) struct ExecIssuer {
    command: Command,
    management_key: Option<SecretString>,
}

impl ExecIssuer {
    pub fn new(
        config: &ProviderConfig,
        telemetry: &ProviderTelemetry,
    ) -> Result<Option<Self>, ProviderError> {
        if !config.exec.as_ref().is_some_and(|e| e.issuer) {
            return Ok(None);
        }
        Ok(Some(ExecIssuer {
            command: Command::new(config, telemetry)?,
            management_key: super::management_key(config)?,
        }))
    }

    async fn run(&self, operation: &str, vars: &[(&str, &str)]) -> Result<Output, ProviderError> {
        let output = self
            .command
            .run(operation, self.management_key.as_ref(), vars)
            .await?;
        match output.exit_code {
            Some(0) => Ok(output),
            Some(code) => Err(ProviderError::Unreachable(format!(
                "command exited with status {code}"
            ))),
            None => Err(ProviderError::Unreachable(
                "command was killed by a signal".into(),
            )),
        }
    }
}

#[async_trait]
impl super::Issuer for ExecIssuer {
    async fn issue(
        &self,
        request: &super::IssueRequest<'_>,
    ) -> Result<super::IssuedKey, ProviderError> {
        let name = request.name;
        let expires_at = request.expires_at.map(|at| at.to_string());
        let mut vars = vec![("name", name)];
        if let Some(at) = &expires_at {
            vars.push(("expires_at", at));
        }
        let mut output = self.run("issue", &vars).await?;
        let body: Result<Value, _> = serde_json::from_slice(&output.stdout);
        zeroize::Zeroize::zeroize(&mut output.stdout);
        let body =
            body.map_err(|_| ProviderError::Malformed("issue: command output is not JSON".into()))?;
        let secret = SecretString::from(super::classify::string_at(&body, "/key", "issue")?);
        let remote_id =
            super::classify::string_at(&body, "/id", "issue").unwrap_or_else(|_| name.to_string());
        let expires_at = super::classify::expiry(body.get("expires_at")).unwrap_or(None);
        Ok(super::IssuedKey {
            secret,
            remote_id,
            expires_at,
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<super::RemoteKey>, ProviderError> {
        let output = self.run("list", &[("prefix", prefix)]).await?;
        let body: Value = serde_json::from_slice(&output.stdout)
            .map_err(|_| ProviderError::Malformed("list: command output is not JSON".into()))?;
        let items = body
            .as_array()
            .or_else(|| body.get("keys").and_then(Value::as_array))
            .ok_or_else(|| {
                ProviderError::Malformed("list: expected an array of {id, name}".into())
            })?;
        let mut found = Vec::new();
        for item in items {
            let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
            if name.starts_with(prefix) {
                found.push(super::RemoteKey {
                    remote_id: super::classify::string_at(item, "/id", "list")?,
                    name: name.to_string(),
                });
            }
        }
        Ok(found)
    }

    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        self.run("revoke", &[("remote_id", remote_id)]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_after_beyond_a_day_is_capped() {
        let wait = |seconds: u64| {
            let out = format!(r#"{{"status":"rate_limited","retry_after":{seconds}}}"#);
            parse_check(out.as_bytes()).expect("parses").retry_after
        };
        assert_eq!(wait(9), Some(Duration::from_secs(9)));
        assert_eq!(wait(u64::MAX), Some(MAX_RETRY_AFTER));
    }
}
