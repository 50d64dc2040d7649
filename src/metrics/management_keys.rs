//! `keyrotd_management_key_created_timestamp_seconds{provider,source}`: when each provider's
//! management key was last replaced, so the alert rules can call an old one out.
//!
//! Most management keys cannot rotate themselves: OpenRouter management keys and Anthropic
//! admin keys can only be made in the vendor's console, and any management key keyrotd does
//! not rotate as a credential of its own is replaced by a person. A key nobody replaces is
//! exactly the long-lived secret keyrotd exists to retire, so its age is exported like a
//! key's.
//!
//! None of the vendors keyrotd speaks to reports a management key's creation time through
//! the key itself (OpenRouter's `GET /key` has no `created_at`; Anthropic's and OpenAI's key
//! listings do not list the admin key used to read them), so the time comes from the
//! secret's file: its modification time, i.e. when the operator (or keyrotd, for a key it
//! rotates) last wrote it. `source` says which file:
//!
//! - `file_mtime`: the `file` reference's own modification time;
//! - `credential_mtime`: the systemd credential's copy in `$CREDENTIALS_DIRECTORY`. systemd
//!   writes that copy when the service starts, so this is the last restart at the latest:
//!   the age is a lower bound (a `file` reference tells the truth).
//!
//! An `env` reference has no time and exports no sample; neither does a file that cannot be
//! read. The files are looked at on every scrape (a stat each), so a replaced key shows at
//! the next scrape with no reload.

use crate::config::{Config, SecretRef};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

/// A provider's management key reference, as the config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ManagementKeyRef {
    pub(crate) provider: String,
    pub(crate) reference: SecretRef,
}

/// Every provider's management key reference in `config`.
pub(crate) fn management_keys(config: &Config) -> Vec<ManagementKeyRef> {
    config
        .providers
        .iter()
        .filter_map(|provider| {
            provider
                .management_key
                .as_ref()
                .map(|reference| ManagementKeyRef {
                    provider: provider.name().to_string(),
                    reference: reference.clone(),
                })
        })
        .collect()
}

/// The gauge, read from the files at each scrape. Clones share their references: the daemon
/// registers one and keeps another to follow reloads.
#[derive(Clone)]
pub(crate) struct ManagementKeyAges {
    tracked: Arc<Mutex<Vec<ManagementKeyRef>>>,
    gauge: GaugeVec,
}

impl ManagementKeyAges {
    pub(crate) fn new(tracked: Vec<ManagementKeyRef>) -> ManagementKeyAges {
        let gauge = GaugeVec::new(
            Opts::new(
                "keyrotd_management_key_created_timestamp_seconds",
                "Unix time a provider's management key was last replaced, from its secret file's modification time (`source`: file_mtime, or credential_mtime for a systemd credential, a lower bound).",
            ),
            &["provider", "source"],
        )
        .expect("valid metric");
        ManagementKeyAges {
            tracked: Arc::new(Mutex::new(tracked)),
            gauge,
        }
    }

    /// Follows the references of a reloaded configuration.
    pub(crate) fn track(&self, tracked: &[ManagementKeyRef]) {
        let mut current = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_slice() != tracked {
            *current = tracked.to_vec();
        }
    }
}

/// The file behind a reference and the `source` label it earns; `None` for `env`.
fn file_of(reference: &SecretRef) -> Option<(PathBuf, &'static str)> {
    if let Some(path) = &reference.file {
        return Some((path.clone(), "file_mtime"));
    }
    let name = reference.credential.as_deref()?;
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    Some((PathBuf::from(dir).join(name), "credential_mtime"))
}

fn modified(path: &std::path::Path) -> Option<f64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.duration_since(UNIX_EPOCH).ok()?.as_secs() as f64)
}

impl Collector for ManagementKeyAges {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Rebuilt whole each time, so a provider removed by a reload leaves no series.
        self.gauge.reset();
        let tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        for key in tracked.iter() {
            let Some((path, source)) = file_of(&key.reference) else {
                continue;
            };
            if let Some(at) = modified(&path) {
                self.gauge
                    .with_label_values(&[key.provider.as_str(), source])
                    .set(at);
            }
        }
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn reference(file: Option<PathBuf>, env: Option<&str>) -> SecretRef {
        SecretRef {
            file,
            env: env.map(str::to_string),
            credential: None,
        }
    }

    /// The series as a scrape shows them: through a registry, as the daemon serves them.
    fn render(ages: &ManagementKeyAges) -> String {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(ages.clone())).unwrap();
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_file_reference_reports_its_modification_time_and_env_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mgmt");
        std::fs::write(&path, "secret").unwrap();
        let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(written)
            .unwrap();
        let ages = ManagementKeyAges::new(vec![
            ManagementKeyRef {
                provider: "openrouter".into(),
                reference: reference(Some(path.clone()), None),
            },
            ManagementKeyRef {
                provider: "anthropic".into(),
                reference: reference(None, Some("ANTHROPIC_ADMIN_KEY")),
            },
            ManagementKeyRef {
                provider: "gone".into(),
                reference: reference(Some(dir.path().join("absent")), None),
            },
        ]);
        let text = render(&ages);
        assert!(
            text.contains(
                "keyrotd_management_key_created_timestamp_seconds{provider=\"openrouter\",source=\"file_mtime\"} 1790000000\n"
            ),
            "{text}"
        );
        assert!(!text.contains("anthropic"), "{text}");
        assert!(!text.contains("gone"), "{text}");

        // The operator replaces the key: the next scrape says so, no reload needed.
        let replaced = written + Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(replaced)
            .unwrap();
        assert!(render(&ages).contains("} 1790086400\n"));

        // A reload that drops the provider drops its series.
        ages.track(&[]);
        assert!(!render(&ages).contains("openrouter"));
    }
}
