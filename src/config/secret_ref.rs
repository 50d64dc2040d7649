//! References to secrets held outside the config file: a file, an environment variable, or a
//! systemd credential (`LoadCredential=` → `$CREDENTIALS_DIRECTORY/<name>`; outside the unit,
//! the credential stores: see [`super::systemd_credential`]).
//!
//! Secrets are never inline in the config: the config file is world-readable in many set-ups
//! and its raw text outlives parsing in memory.

use super::systemd_credential::{self, CredentialError, CredentialSource};
use secrecy::{ExposeSecret, SecretString};
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
    #[error("systemd credential name {0:?} must be a file name (no `/`, not `.` or `..`)")]
    CredentialName(String),
    #[error(transparent)]
    Credential(#[from] CredentialError),
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
        if let Some(name) = &self.credential {
            if !systemd_credential::valid_name(name) {
                return Err(SecretRefError::CredentialName(name.clone()));
            }
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
        self.resolve_from(&CredentialSource::from_environment())
    }

    /// [`resolve`](Self::resolve), with a `credential` looked for in `credentials`.
    pub(crate) fn resolve_from(
        &self,
        credentials: &CredentialSource,
    ) -> Result<SecretString, SecretRefError> {
        self.validate()?;
        let raw = if let Some(path) = &self.file {
            read_file(path)?
        } else if let Some(var) = &self.env {
            SecretString::from(std::env::var(var).map_err(|_| SecretRefError::Env(var.clone()))?)
        } else {
            let name = self.credential.as_deref().unwrap_or_default();
            match credentials {
                // The unit's copy or nothing: a daemon under systemd never looks elsewhere.
                CredentialSource::ServiceDirectory(directory) => read_file(&directory.join(name))?,
                CredentialSource::Stores(stores) => stores.read(name)?,
            }
        };
        let trimmed = raw.expose_secret().trim();
        if trimmed.is_empty() {
            return Err(SecretRefError::Empty(self.describe()));
        }
        Ok(SecretString::from(trimmed.to_string()))
    }
}

fn read_file(path: &Path) -> Result<SecretString, SecretRefError> {
    std::fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|source| SecretRefError::File {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn credential(name: &str) -> SecretRef {
        SecretRef {
            file: None,
            env: None,
            credential: Some(name.into()),
        }
    }

    #[test]
    fn credential_names_that_leave_their_directory_are_refused() {
        for name in ["../master.key", "a/b", "..", ""] {
            let err = credential(name).validate().unwrap_err().to_string();
            assert!(err.contains("must be a file name"), "{name:?}: {err}");
        }
        assert!(credential("openrouter-mgmt").validate().is_ok());
    }

    #[test]
    fn under_the_unit_only_its_credentials_directory_is_read() {
        let unit = tempfile::tempdir().unwrap();
        let under_unit = CredentialSource::ServiceDirectory(unit.path().to_path_buf());
        let err = credential("mgmt")
            .resolve_from(&under_unit)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&*unit.path().join("mgmt").to_string_lossy()),
            "{err}"
        );
        std::fs::write(unit.path().join("mgmt"), "sk-unit-copy\n").unwrap();
        let secret = credential("mgmt").resolve_from(&under_unit).unwrap();
        assert_eq!(secret.expose_secret(), "sk-unit-copy");
    }

    #[test]
    fn outside_the_unit_a_credential_comes_from_the_stores_trimmed() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("credstore")).unwrap();
        std::fs::write(root.path().join("credstore/mgmt"), "  sk-stored\n").unwrap();
        let outside = CredentialSource::Stores(systemd_credential::CredentialStores {
            plain: vec![root.path().join("credstore")],
            decrypt_with: "/nonexistent/systemd-creds".into(),
        });
        let secret = credential("mgmt").resolve_from(&outside).unwrap();
        assert_eq!(secret.expose_secret(), "sk-stored");
        std::fs::write(root.path().join("credstore/mgmt"), "\n").unwrap();
        let err = credential("mgmt").resolve_from(&outside).unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
    }
}
