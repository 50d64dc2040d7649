//! A consumer's view of a delivery target: the file a program reads its key from, either a
//! `file` target (the key on one line) or an `env_file` target (`VARIABLE='key'`).

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Consumer {
    pub path: PathBuf,
    /// `Some(VARIABLE)` for an env file.
    pub variable: Option<String>,
}

impl Consumer {
    pub fn file(path: PathBuf) -> Consumer {
        Consumer {
            path,
            variable: None,
        }
    }

    pub fn env_file(path: PathBuf, variable: &str) -> Consumer {
        Consumer {
            path,
            variable: Some(variable.to_string()),
        }
    }

    /// The key the consumer would load now, if the file holds one.
    pub fn read_key(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let key = match &self.variable {
            None => text.trim().to_string(),
            Some(variable) => {
                let prefix = format!("{variable}=");
                let value = text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))?;
                value
                    .trim()
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_string()
            }
        };
        (!key.is_empty()).then_some(key)
    }

    pub fn describe(&self) -> String {
        match &self.variable {
            None => format!("file {}", self.path.display()),
            Some(v) => format!("env_file {} ({v})", self.path.display()),
        }
    }
}
