//! `[provider.exec]`: a provider reached by running a command that prints JSON.

use super::super::{HumanDuration, Issues};
use serde::Deserialize;
use toml::Spanned;

/// How the exec provider hands a key to its command. Never argv: arguments are world-readable
/// in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecKeyVia {
    /// Written to the command's standard input, then stdin is closed.
    #[default]
    Stdin,
    /// In the environment variable named by `key_env`.
    Env,
}

/// `[provider.exec]`: a command that prints JSON.
///
/// The operation is in `$KEYROTD_OPERATION` (`check`, `issue`, `list`, `revoke`), with
/// `$KEYROTD_NAME`, `$KEYROTD_PREFIX` or `$KEYROTD_REMOTE_ID` as they apply.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecAdapterConfig {
    /// Program and arguments (no shell unless you write `["sh", "-c", ...]`).
    pub command: Spanned<Vec<String>>,
    /// Kill the command after this long (default: the provider's `timeout`).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    #[serde(default)]
    pub key_via: ExecKeyVia,
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// The command also implements `issue`, `list` and `revoke`.
    #[serde(default)]
    pub issuer: bool,
}

fn default_key_env() -> String {
    super::super::DEFAULT_KEY_ENV_VAR.into()
}

impl ExecAdapterConfig {
    pub(super) fn validate(&self, issues: &mut Issues) {
        let command = self.command.get_ref();
        if command.is_empty() || command[0].trim().is_empty() {
            issues.push(
                Some(self.command.span()),
                "[provider.exec] `command` must name a program, e.g. [\"/usr/local/bin/check-key\"]".into(),
            );
        }
        if let Some(timeout) = self.timeout {
            if timeout.0.is_zero() {
                issues.push(
                    Some(self.command.span()),
                    "[provider.exec] `timeout` must be longer than 0s".into(),
                );
            }
        }
        let env_ok = !self.key_env.is_empty()
            && !self.key_env.starts_with(|c: char| c.is_ascii_digit())
            && self
                .key_env
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !env_ok {
            issues.push(
                Some(self.command.span()),
                format!(
                    "[provider.exec] `key_env` {:?} is not an environment variable name",
                    self.key_env
                ),
            );
        }
    }
}
