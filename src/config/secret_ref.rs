//! References to secrets held outside the config file: a file, an environment variable, or a
//! systemd credential (`LoadCredential=` → `$CREDENTIALS_DIRECTORY/<name>`).
//!
//! Secrets are never inline in the config: the config file is world-readable in many set-ups
//! and its raw text outlives parsing in memory.

use secrecy::SecretString;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Exactly one of `file`, `env`, `credential`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretRefError {
    #[error("secret reference must set exactly one of `file`, `env`, `credential`")]
    Ambiguous,
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} is not set or not valid UTF-8")]
    Env(String),
    #[error("systemd credential {0:?} requested but $CREDENTIALS_DIRECTORY is not set")]
    NoCredentialsDirectory(String),
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Checks the shape without touching the outside world (used by `check-config`).
    pub(crate) fn validate(&self) -> Result<(), SecretRefError> {
        let set = [
            self.file.is_some(),
            self.env.is_some(),
            self.credential.is_some(),
        ];
        if set.iter().filter(|x| **x).count() != 1 {
            return Err(SecretRefError::Ambiguous);
        }
        Ok(())
    }

    /// Human description that names where the secret lives, never what it is.
    pub(crate) fn describe(&self) -> String {
        match (&self.file, &self.env, &self.credential) {
            (Some(path), _, _) => format!("file {}", path.display()),
            (_, Some(var), _) => format!("env {var}"),
            (_, _, Some(name)) => format!("systemd credential {name}"),
            _ => "nothing".into(),
        }
    }

    /// Reads the secret. Surrounding whitespace (a trailing newline in a file) is trimmed.
    pub(crate) fn resolve(&self) -> Result<SecretString, SecretRefError> {
        self.validate()?;
        let raw = if let Some(path) = &self.file {
            read_file(path)?
        } else if let Some(var) = &self.env {
            std::env::var(var).map_err(|_| SecretRefError::Env(var.clone()))?
        } else {
            let name = self.credential.as_deref().unwrap_or_default();
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretRefError::NoCredentialsDirectory(name.to_string()))?;
            read_file(&Path::new(&dir).join(name))?
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(SecretRefError::Empty(self.describe()));
        }
        let secret = SecretString::from(trimmed.to_string());
        zeroize::Zeroize::zeroize(&mut { raw });
        Ok(secret)
    }
}

fn read_file(path: &Path) -> Result<String, SecretRefError> {
    std::fs::read_to_string(path).map_err(|source| SecretRefError::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn exactly_one_source_is_required() {
        let none = SecretRef {
            file: None,
            env: None,
            credential: None,
        };
        assert!(none.validate().is_err());
        let two = SecretRef {
            file: Some("/x".into()),
            env: Some("X".into()),
            credential: None,
        };
        assert!(two.validate().is_err());
    }

    #[test]
    fn file_secret_is_trimmed_and_errors_do_not_contain_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "sk-secret-value\n").unwrap();
        let reference = SecretRef {
            file: Some(path),
            env: None,
            credential: None,
        };
        assert_eq!(
            reference.resolve().unwrap().expose_secret(),
            "sk-secret-value"
        );
        let missing = SecretRef {
            file: Some(dir.path().join("absent")),
            env: None,
            credential: None,
        };
        let err = missing.resolve().unwrap_err().to_string();
        assert!(err.contains("absent"));
    }
}
