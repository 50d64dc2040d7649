//! `[[credential.deliver]]` sections: where a credential's current key is written.

use super::Issues;
use serde::Deserialize;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    File,
    EnvFile,
    Exec,
    Kubernetes,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    pub kind: Spanned<DeliveryKind>,
    /// File or env file path.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl DeliveryConfig {
    pub(super) fn validate(&self, issues: &mut Issues) {
        if matches!(
            self.kind.get_ref(),
            DeliveryKind::File | DeliveryKind::EnvFile
        ) && self.path.is_none()
        {
            issues.push(
                Some(self.kind.span()),
                "this delivery target needs `path`".into(),
            );
        }
    }
}
