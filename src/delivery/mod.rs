//! Delivery targets: where a credential's current key is handed to its consumers.
//!
//! Each kind of target lives in its own module behind the small [`Target`] trait, and
//! [`build`] turns one `[[credential.deliver]]` table into a boxed target. Nothing else in
//! keyrotd touches a consumer's file, process or API.
//!
//! Every target is idempotent (delivering the same key twice is harmless), so the rotation
//! engine can simply repeat the deliver step after a crash. The key is secret material: it
//! never appears in [`Target::describe`], in a [`DeliveryError`], in a command line or in a
//! log line. Text that comes back from a consumer (a hook's stderr, an API server's message)
//! is passed through [`sanitize`] before it goes into an error.

pub(crate) mod envfile;
pub(crate) mod exec;
pub(crate) mod file;
pub(crate) mod kubernetes;
pub(crate) mod lock;
pub mod preflight;

use crate::config::{DeliveryConfig, DeliveryKind};
use async_trait::async_trait;
use secrecy::SecretString;

/// One target that hands a key to its consumer.
#[async_trait]
pub trait Target: Send + Sync {
    /// Human description for logs/events, e.g. "file /etc/app/key" (never the key).
    fn describe(&self) -> String;
    /// Hands `key` to the consumer. Idempotent: delivering the same key twice is harmless.
    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError>;
}

/// What is delivered: one key version of one credential.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub credential: &'a str,
    pub key: &'a SecretString,
    /// Short SHA-256 prefix of the key: the only way the key is named outside its targets.
    pub fingerprint: &'a str,
    pub version_id: i64,
}

/// Why a delivery failed. Every message names the target and the cause, never the key.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The target's configuration cannot be used (normally caught when the config loads).
    #[error("{target}: invalid configuration: {reason}")]
    Config { target: String, reason: String },
    /// A file-system or process operation failed.
    #[error("{target}: {action}: {source}")]
    Io {
        target: String,
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// Another delivery to the same file (maybe in another process) held its lock longer than
    /// the bounded wait.
    #[error("{target}: another delivery held lock file {} for longer than {waited}; is a keyrotd process stopped or the file system hung?", .lock_file.display())]
    LockTimeout {
        target: String,
        lock_file: std::path::PathBuf,
        waited: String,
    },
    /// The key cannot be represented by this target (e.g. a newline for an env file).
    #[error("{target}: the key cannot be delivered here: {reason}")]
    UnsuitableKey { target: String, reason: String },
    /// A user or group name that does not exist on this host.
    #[error("{target}: unknown {what} {name:?}")]
    UnknownAccount {
        target: String,
        what: &'static str,
        name: String,
    },
    /// An exec hook exited unsuccessfully.
    #[error("{target}: {status}{}", stderr_suffix(.stderr))]
    HookFailed {
        target: String,
        /// "exited with status 3" or "killed by signal 9".
        status: String,
        /// Last line of stderr, sanitised; empty when the hook printed nothing.
        stderr: String,
    },
    /// An exec hook ran longer than its timeout and was killed.
    #[error("{target}: did not finish within {timeout}, killed")]
    HookTimeout { target: String, timeout: String },
    /// The Kubernetes API server answered with an error status.
    #[error("{target}: {operation} failed: HTTP {status}: {message}")]
    Api {
        target: String,
        operation: &'static str,
        status: u16,
        /// `Status.message` (or the start of the body), sanitised.
        message: String,
    },
    /// The Kubernetes API server could not be reached or TLS could not be set up.
    #[error("{target}: {operation}: {message}")]
    Transport {
        target: String,
        operation: &'static str,
        message: String,
    },
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// Builds the target one `[[credential.deliver]]` table describes.
pub fn build(config: &DeliveryConfig) -> Result<Box<dyn Target>, DeliveryError> {
    Ok(match config.kind() {
        DeliveryKind::File => Box::new(file::FileTarget::from_config(config)?),
        DeliveryKind::EnvFile => Box::new(envfile::EnvFileTarget::from_config(config)?),
        DeliveryKind::Exec => Box::new(exec::ExecTarget::from_config(config)?),
        DeliveryKind::Kubernetes => Box::new(kubernetes::KubernetesTarget::from_config(config)?),
    })
}

/// Makes text from a consumer safe to put in an error: every occurrence of a secret is
/// replaced by `[REDACTED]`, control characters become spaces, and the result is cut to
/// `max_chars` characters.
pub(crate) fn sanitize(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        // Very short "secrets" would mangle ordinary text; real keys and tokens are long.
        if secret.len() >= 4 {
            text = text.replace(secret, "[REDACTED]");
        }
    }
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.chars().count() > max_chars {
        let mut cut: String = cleaned.chars().take(max_chars).collect();
        cut.push('…');
        cut
    } else {
        cleaned.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_masks_secrets_and_control_characters_and_truncates() {
        let out = sanitize("bad key sk-abc123\x1b[31m!\n", &["sk-abc123"], 100);
        assert_eq!(out, "bad key [REDACTED] [31m!");
        assert_eq!(sanitize("abcdef", &[], 3), "abc…");
        assert_eq!(sanitize("a b", &["", "a"], 10), "a b");
    }

    #[test]
    fn hook_failure_message_names_status_and_stderr() {
        let err = DeliveryError::HookFailed {
            target: "exec x".into(),
            status: "exited with status 3".into(),
            stderr: "boom".into(),
        };
        assert_eq!(err.to_string(), "exec x: exited with status 3: boom");
        let err = DeliveryError::HookFailed {
            target: "exec x".into(),
            status: "exited with status 3".into(),
            stderr: String::new(),
        };
        assert_eq!(err.to_string(), "exec x: exited with status 3");
    }
}
