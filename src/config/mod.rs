//! Configuration: one TOML file, parsed with positions, validated as a whole.
//!
//! Loading never stops at the first semantic problem: every issue found is reported together,
//! each as `file:line:column: message`, so an operator fixes a config in one pass.
//! Unknown fields are rejected everywhere (`deny_unknown_fields`): a typo must not silently
//! turn a policy off.
//!
//! ## Layout
//!
//! - this file: the file as a whole, `[daemon]`, `[checks]`, `[[credential]]` and its
//!   rotation policy, and the validation that ties them together;
//! - `provider/`: `[[provider]]`, with `[provider.http]` and `[provider.exec]` apart;
//! - `delivery`: `[[credential.deliver]]` and the words delivery targets are built from;
//! - `issues`: problems by position, rendered as `file:line:column: message`;
//! - `cron`, `duration`, `secret_ref`: the value types a section is made of;
//! - `systemd_credential`: where a `{ credential = NAME }` secret is read from, under the
//!   unit and outside it.

mod cron;
mod delivery;
mod duration;
mod issues;
mod provider;
mod relay;
mod secret_ref;
mod store;
mod systemd_credential;

pub use cron::CronSchedule;
pub(crate) use delivery::DEFAULT_KEY_ENV_VAR;
pub(crate) use delivery::{DeliveryConfig, DeliveryKind, FileFormat, HookKeyVia};
pub use duration::{format_duration, parse_duration, DurationError, DurationOrOff, HumanDuration};
pub(crate) use issues::{span_of, Issues, LazyPositions, Position, ProviderPositions};
pub use issues::{ConfigError, ConfigIssue};
pub(crate) use provider::{
    expiry_uses, ExpiryPlaceholder, Standing, DEFAULT_RELAY_ROTATION_POLICY,
};
pub use provider::{
    ExecAdapterConfig, ExecKeyVia, GoogleConfig, HttpAdapterConfig, HttpCheckConfig,
    HttpIssueConfig, HttpListConfig, HttpRevokeConfig, ProviderConfig, ProviderKind,
};
pub use relay::{
    ClientConfig, KeyHeader, RelayConfig, RelayListen, RouteConfig, Strategy, OVERFLOW_UID,
};
pub(crate) use secret_ref::SecretRef;
pub use store::{LeaderTiming, StoreConfig};

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Default path of the config file (systemd `ConfigurationDirectory=keyrotd`).
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/keyrotd/keyrotd.toml";
/// Default listen address. 9090 is Prometheus's own; this port is ours.
pub(crate) const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9877";
/// Default state directory (systemd `StateDirectory=keyrotd`).
pub(crate) const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/keyrotd";
pub(crate) const DATABASE_FILE_NAME: &str = "keyrotd.db";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub checks: ChecksConfig,
    /// `[store]`: SQLite (the default) or a PostgreSQL database shared by replicas.
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderConfig>,
    #[serde(default, rename = "credential")]
    pub credentials: Vec<CredentialConfig>,
    /// `[relay]`: the local relay, when configured.
    #[serde(default)]
    pub relay: Option<Spanned<RelayConfig>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address of the HTTP server for /metrics, /healthz, /readyz.
    #[serde(default = "default_listen_address")]
    pub listen_address: Spanned<String>,
    /// SQLite database file. Default: `$STATE_DIRECTORY/keyrotd.db`, else /var/lib/keyrotd/keyrotd.db.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoint, in node_exporter's web-config format
    /// (`--web.config.file` overrides it). Relative to the config file's directory.
    #[serde(default)]
    pub web_config_file: Option<PathBuf>,
    /// How long audit events are kept: older ones are pruned at start-up and daily. `0s`
    /// keeps them forever; otherwise at least a day. The counters in the metrics are kept apart and never drop.
    #[serde(default = "default_events_retention")]
    pub events_retention: HumanDuration,
    /// How long a process owns a rotation it drives without renewing (it renews every third
    /// of it and before every provider call or delivery); another process (the daemon, a
    /// `keyrotd key rotate`) takes the rotation over only once it has expired. Read by the
    /// daemon and the CLI alike.
    #[serde(default = "default_rotation_lease")]
    pub rotation_lease: HumanDuration,
    /// This replica's name among several on one database (logs, `keyrotd_instance_info`,
    /// the leadership lease). Default: the host name.
    #[serde(default)]
    pub instance: Option<Spanned<String>>,
}

/// 400 days: a year of history plus a margin for a yearly review.
fn default_events_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(400 * 86_400))
}

/// Shortest `events_retention` other than `0s` (forever): the audit trail is what an
/// operator reads after an incident, and pruning runs daily, so a shorter retention would
/// delete the record of yesterday's rotations before anyone looked.
pub const MIN_EVENTS_RETENTION: Duration = Duration::from_secs(86_400);

/// Shortest `rotation_lease`: below it a busy database could make an owner lose a lease it
/// is renewing.
pub const MIN_ROTATION_LEASE: Duration = Duration::from_secs(3);

fn default_rotation_lease() -> HumanDuration {
    HumanDuration(crate::rotation::DEFAULT_LEASE)
}

fn default_listen_address() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_LISTEN_ADDRESS.to_string())
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen_address: default_listen_address(),
            database: None,
            web_config_file: None,
            events_retention: default_events_retention(),
            rotation_lease: default_rotation_lease(),
            instance: None,
        }
    }
}

impl DaemonConfig {
    pub(crate) fn listen_address(&self) -> SocketAddr {
        self.listen_address
            .get_ref()
            .parse()
            .expect("validated at load time")
    }

    /// This replica's name: `instance`, else the host name.
    pub(crate) fn instance(&self) -> String {
        match &self.instance {
            Some(name) => name.get_ref().clone(),
            None => host_name(),
        }
    }
}

/// The kernel's host name, or `localhost` when it cannot be read.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where the database lives when neither config nor command line says.
pub(crate) fn default_database_path() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        // systemd may pass several colon-separated directories; the first is ours.
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIRECTORY));
    dir.join(DATABASE_FILE_NAME)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksConfig {
    /// Default interval between validity checks of one credential.
    #[serde(default = "default_check_interval")]
    pub interval: HumanDuration,
    /// Random spread added to each interval, as a fraction of it (0.1 = up to 10 %).
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    /// Upper bound on checks in flight across all providers.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
}

fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_jitter() -> f64 {
    0.1
}
fn default_max_concurrent() -> usize {
    16
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            interval: default_check_interval(),
            jitter: default_jitter(),
            max_concurrent: default_max_concurrent(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    pub name: Spanned<String>,
    pub provider: Spanned<String>,
    /// Overrides `[checks] interval` for this credential.
    #[serde(default)]
    pub check_interval: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    pub rotation: RotationPolicyConfig,
    #[serde(default)]
    pub deliver: Vec<DeliveryConfig>,
}

impl CredentialConfig {
    pub(crate) fn name(&self) -> &str {
        self.name.get_ref()
    }
    pub(crate) fn provider(&self) -> &str {
        self.provider.get_ref()
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotationPolicyConfig {
    /// `schedule` in the file: when to rotate, as a cron expression (5 or 6 fields, UTC).
    #[serde(default, rename = "schedule")]
    pub cron: Option<Spanned<String>>,
    /// Rotate when the current key is older than this.
    #[serde(default)]
    pub max_age: Option<Spanned<HumanDuration>>,
    /// Rotate this long before the current key's expiry.
    #[serde(default)]
    pub rotate_before_expiry: Option<Spanned<HumanDuration>>,
    /// How long the previous key stays valid after a rotation (default 24h).
    #[serde(default)]
    pub grace: Option<Spanned<HumanDuration>>,
    /// First wait after a failed rotation; doubles per failure (default 5m).
    #[serde(default)]
    pub retry_backoff: Option<Spanned<HumanDuration>>,
    /// Longest wait between failed attempts (default 6h).
    #[serde(default)]
    pub retry_backoff_max: Option<Spanned<HumanDuration>>,
    /// The runaway guard: a key is never due for rotation before it has been current this
    /// long (default: see [`RotationPolicyConfig::min_age`]).
    #[serde(default)]
    pub min_age: Option<Spanned<HumanDuration>>,
    /// How long after its planned replacement plus grace a key keyrotd issues dies on its own
    /// at the provider, where the vendor can set an expiry (default 7d; `"off"`: never).
    #[serde(default)]
    pub provider_expiry_margin: Option<Spanned<DurationOrOff>>,
    /// How long a new key may take to answer valid at the provider before the rotation
    /// gives up on it (default 30s); it is asked again with a growing pause meanwhile.
    #[serde(default)]
    pub verify_timeout: Option<Spanned<HumanDuration>>,
}

impl RotationPolicyConfig {
    pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

    pub(crate) fn grace(&self) -> Duration {
        self.grace
            .as_ref()
            .map(|g| g.get_ref().0)
            .unwrap_or(Self::DEFAULT_GRACE)
    }

    pub(crate) const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(300);
    pub(crate) const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(6 * 3600);

    /// Capped exponential backoff between failed rotation attempts.
    pub(crate) fn retry_backoff(&self) -> crate::backoff::Backoff {
        let pick = |value: &Option<Spanned<HumanDuration>>, default| {
            value.as_ref().map(|d| d.get_ref().0).unwrap_or(default)
        };
        let base = pick(&self.retry_backoff, Self::DEFAULT_RETRY_BACKOFF);
        let cap = pick(&self.retry_backoff_max, Self::DEFAULT_RETRY_BACKOFF_MAX).max(base);
        crate::backoff::Backoff::new(base, cap)
    }

    /// A week: the lead of the KeyExpiringSoon alert, so the provider-side expiry of a
    /// healthy key never raises it; it fires once a replacement is `grace` overdue.
    pub(crate) const DEFAULT_PROVIDER_EXPIRY_MARGIN: Duration = Duration::from_secs(7 * 86_400);

    /// The margin of the provider-side expiry, `None` when switched off.
    pub(crate) fn provider_expiry_margin(&self) -> Option<Duration> {
        match &self.provider_expiry_margin {
            Some(margin) => margin.get_ref().get(),
            None => Some(Self::DEFAULT_PROVIDER_EXPIRY_MARGIN),
        }
    }

    /// A key a vendor has just issued can take a while to be accepted everywhere behind its
    /// API (key stores replicated with eventual consistency): half a minute allows for a
    /// propagation of tens of seconds, yet keeps a key that will never work from holding
    /// its rotation for long.
    pub(crate) const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);
    /// Longest `verify_timeout`: while it waits, a rotation holds its credential (no other
    /// rotation of it, by the daemon or `keyrotd key rotate`) and one of the daemon's
    /// rotation passes.
    pub(crate) const MAX_VERIFY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

    /// How long the verify step keeps asking a new key before giving up on it.
    pub(crate) fn verify_timeout(&self) -> Duration {
        self.verify_timeout
            .as_ref()
            .map(|t| t.get_ref().0)
            .unwrap_or(Self::DEFAULT_VERIFY_TIMEOUT)
    }

    /// The longest default `min_age`.
    pub(crate) const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

    /// The runaway guard's minimum age of a current key: `min_age` when set; otherwise an
    /// hour, or half the policy's own cadence (`max_age`, the shortest gap between firings
    /// of `schedule`) when that is shorter, so a deliberately fast policy keeps its pace.
    /// Only the expiry rule can make a key due at once, and that is what the hour stops.
    pub(crate) fn min_age(&self) -> Duration {
        if let Some(min_age) = &self.min_age {
            return min_age.get_ref().0;
        }
        let by_age = self.max_age.as_ref().map(|d| d.get_ref().0);
        let by_schedule = self
            .cron_schedule()
            .and_then(|schedule| shortest_gap(&schedule));
        [by_age, by_schedule]
            .into_iter()
            .flatten()
            .map(|cadence| cadence / 2)
            .fold(Self::DEFAULT_MIN_AGE, Duration::min)
    }

    /// The parsed `schedule`, if any (validated at load time).
    pub(crate) fn cron_schedule(&self) -> Option<CronSchedule> {
        self.cron
            .as_ref()
            .and_then(|s| CronSchedule::parse(s.get_ref()).ok())
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_path_buf(),
            issues: vec![ConfigIssue {
                line: 0,
                column: 0,
                message: format!("cannot read config file: {err}"),
            }],
        })?;
        Self::parse(path, &source)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(source).map_err(|err| {
            let mut issues = Issues::default();
            // toml's message is multi-line with a snippet; keep its first line of meaning.
            let message = err.message().trim().replace('\n', " ");
            issues.push(Some(err.span().unwrap_or(0..0)), message);
            let mut error = issues.into_error(path, source).expect("one issue");
            // A syntax error always has a place; toml gives none, or an empty span at 0
            // (which reads as "no position"), when it fails on the first byte.
            if error.issues[0].line == 0 {
                error.issues[0].line = 1;
                error.issues[0].column = 1;
            }
            error
        })?;
        let mut issues = Issues::default();
        config.validate(&mut issues, &LazyPositions::new(source));
        match issues.into_error(path, source) {
            Some(error) => Err(error),
            None => Ok(config),
        }
    }

    fn validate(&self, issues: &mut Issues, positions: &LazyPositions) {
        self.validate_daemon_and_checks(issues, positions);
        self.store.validate(issues);
        let providers = self.validate_providers(issues, positions);
        self.validate_credentials(issues, &providers);
        if let Some(relay) = &self.relay {
            let credential_providers = self
                .credentials
                .iter()
                .map(|c| (c.name(), c.provider()))
                .collect();
            relay
                .get_ref()
                .validate(issues, &providers, &credential_providers, relay.span());
        }
    }

    /// `[relay]`, when configured.
    pub fn relay(&self) -> Option<&RelayConfig> {
        self.relay.as_ref().map(|r| r.get_ref())
    }

    /// `[daemon]` and `[checks]`.
    fn validate_daemon_and_checks(&self, issues: &mut Issues, positions: &LazyPositions) {
        if self
            .daemon
            .listen_address
            .get_ref()
            .parse::<SocketAddr>()
            .is_err()
        {
            issues.push(
                Some(self.daemon.listen_address.span()),
                format!(
                    "`listen_address` {:?} is not an address like \"127.0.0.1:9877\"",
                    self.daemon.listen_address.get_ref()
                ),
            );
        }
        let retention = self.daemon.events_retention.0;
        if !retention.is_zero() && retention < MIN_EVENTS_RETENTION {
            issues.push(
                span_of(&positions.get().daemon.events_retention),
                "`daemon.events_retention` must be at least 1d, or \"0s\" to keep every event"
                    .to_string(),
            );
        }
        if self.daemon.rotation_lease.0 < MIN_ROTATION_LEASE {
            issues.push(
                span_of(&positions.get().daemon.rotation_lease),
                format!(
                    "`daemon.rotation_lease` must be at least {}s",
                    MIN_ROTATION_LEASE.as_secs()
                ),
            );
        }
        if let Some(instance) = &self.daemon.instance {
            if !valid_name(instance.get_ref()) {
                issues.push(
                    Some(instance.span()),
                    name_rule("instance", instance.get_ref()),
                );
            }
        }
        if !(0.0..=1.0).contains(&self.checks.jitter) {
            issues.push(
                span_of(&positions.get().checks.jitter),
                "`checks.jitter` must be between 0 and 1".into(),
            );
        }
        if self.checks.max_concurrent == 0 {
            issues.push(
                span_of(&positions.get().checks.max_concurrent),
                "`checks.max_concurrent` must be at least 1".into(),
            );
        }
        if self.checks.interval.0 < Duration::from_secs(1) {
            issues.push(
                span_of(&positions.get().checks.interval),
                "`checks.interval` must be at least 1s".into(),
            );
        }
    }

    /// Every `[[provider]]`, with unique plain names; returns them by name.
    fn validate_providers(
        &self,
        issues: &mut Issues,
        positions: &LazyPositions,
    ) -> HashMap<&str, &ProviderConfig> {
        let mut providers: HashMap<&str, &ProviderConfig> = HashMap::new();
        for (index, provider) in self.providers.iter().enumerate() {
            if !valid_name(provider.name()) {
                issues.push(
                    Some(provider.name.span()),
                    name_rule("provider", provider.name()),
                );
            }
            if providers.insert(provider.name(), provider).is_some() {
                issues.push(
                    Some(provider.name.span()),
                    format!("duplicate provider name {:?}", provider.name()),
                );
            }
            provider.validate(issues, || positions.get().providers.get(index));
        }
        providers
    }

    /// Every `[[credential]]`: unique plain names, a defined provider, its rotation policy
    /// and delivery targets.
    fn validate_credentials(
        &self,
        issues: &mut Issues,
        providers: &HashMap<&str, &ProviderConfig>,
    ) {
        let mut credentials: HashMap<&str, &CredentialConfig> = HashMap::new();
        for credential in &self.credentials {
            if !valid_name(credential.name()) {
                issues.push(
                    Some(credential.name.span()),
                    name_rule("credential", credential.name()),
                );
            }
            if credentials.insert(credential.name(), credential).is_some() {
                issues.push(
                    Some(credential.name.span()),
                    format!("duplicate credential name {:?}", credential.name()),
                );
            }
            if !providers.contains_key(credential.provider()) {
                issues.push(
                    Some(credential.provider.span()),
                    self.undefined_provider(credential),
                );
            }
            if let Some(interval) = &credential.check_interval {
                if interval.get_ref().0 < Duration::from_secs(1) {
                    issues.push(
                        Some(interval.span()),
                        "`check_interval` must be at least 1s".into(),
                    );
                }
            }
            credential.rotation.validate(issues);
            if let Some(provider) = providers.get(credential.provider()) {
                credential.rotation.validate_against(provider, issues);
                provider.validate_self_rotation(credential, issues);
            }
            for target in &credential.deliver {
                target.validate(issues);
            }
        }
    }

    fn undefined_provider(&self, credential: &CredentialConfig) -> String {
        let known: Vec<&str> = self.providers.iter().map(|p| p.name()).collect();
        format!(
            "credential {:?} refers to undefined provider {:?} (defined: {})",
            credential.name(),
            credential.provider(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name() == name)
    }

    pub(crate) fn credential(&self, name: &str) -> Option<&CredentialConfig> {
        self.credentials.iter().find(|c| c.name() == name)
    }

    /// Check interval of a credential (its own or the global default).
    pub(crate) fn check_interval(&self, credential: &CredentialConfig) -> Duration {
        credential
            .check_interval
            .as_ref()
            .map(|i| i.get_ref().0)
            .unwrap_or(self.checks.interval.0)
    }
}

/// The shortest gap between the first firings of `schedule` over a year from a fixed date
/// (enough to see a weekly or monthly pattern; a cadence longer than that is no concern of
/// an hour-long guard).
fn shortest_gap(schedule: &CronSchedule) -> Option<Duration> {
    let start = chrono::DateTime::<chrono::Utc>::from_timestamp(1_767_225_600, 0)?;
    let mut at = schedule.next_after(start)?;
    let mut shortest: Option<i64> = None;
    for _ in 0..16 {
        let Some(next) = schedule.next_after(at) else {
            break;
        };
        let gap = (next - at).num_seconds();
        shortest = Some(shortest.map_or(gap, |s| s.min(gap)));
        at = next;
    }
    shortest.map(|s| Duration::from_secs(s.max(0) as u64))
}

impl RotationPolicyConfig {
    fn validate(&self, issues: &mut Issues) {
        if let Some(cron) = &self.cron {
            if let Err(message) = CronSchedule::parse(cron.get_ref()) {
                issues.push(Some(cron.span()), message);
            }
        }
        if let Some(max_age) = &self.max_age {
            if max_age.get_ref().0 < Duration::from_secs(60) {
                issues.push(Some(max_age.span()), "`max_age` must be at least 1m".into());
            }
        }
        if let (Some(grace), Some(max_age)) = (&self.grace, &self.max_age) {
            if grace.get_ref() > max_age.get_ref() {
                issues.push(
                    Some(grace.span()),
                    format!(
                        "`grace` ({}) is longer than `max_age` ({}): the previous key would outlive its successor's rotation",
                        grace.get_ref(),
                        max_age.get_ref()
                    ),
                );
            }
        }
        if let Some(backoff) = &self.retry_backoff {
            if backoff.get_ref().0 < Duration::from_secs(1) {
                issues.push(
                    Some(backoff.span()),
                    "`retry_backoff` must be at least 1s".into(),
                );
            }
        }
        if let Some(timeout) = &self.verify_timeout {
            if timeout.get_ref().0 > Self::MAX_VERIFY_TIMEOUT {
                issues.push(
                    Some(timeout.span()),
                    format!(
                        "`verify_timeout` ({}) must be at most {}: the rotation holds its credential while it waits",
                        timeout.get_ref(),
                        format_duration(Self::MAX_VERIFY_TIMEOUT)
                    ),
                );
            }
        }
        if let (Some(before), Some(max_age)) = (&self.rotate_before_expiry, &self.max_age) {
            if before.get_ref() >= max_age.get_ref() {
                issues.push(
                    Some(before.span()),
                    "`rotate_before_expiry` must be shorter than `max_age`".into(),
                );
            }
        }
        if let (Some(min_age), Some(max_age)) = (&self.min_age, &self.max_age) {
            if min_age.get_ref() > max_age.get_ref() {
                issues.push(
                    Some(min_age.span()),
                    format!(
                        "`min_age` ({}) is longer than `max_age` ({}): the key would outlive its maximum age at every rotation",
                        min_age.get_ref(),
                        max_age.get_ref()
                    ),
                );
            }
        }
    }

    /// A policy that can never settle against the provider it rotates through: a margin
    /// before expiry at least as long as the lifetime the provider gives every key it
    /// issues makes each new key due the moment it is promoted.
    fn validate_against(&self, provider: &ProviderConfig, issues: &mut Issues) {
        let (Some(before), Some(lifetime)) =
            (&self.rotate_before_expiry, provider.issued_key_lifetime())
        else {
            return;
        };
        if before.get_ref().0 >= lifetime {
            issues.push(
                Some(before.span()),
                format!(
                    "`rotate_before_expiry` ({}) is not shorter than the lifetime of the keys provider {:?} issues ({}): every new key would be due at once; use a shorter margin",
                    before.get_ref(),
                    provider.name(),
                    format_duration(lifetime)
                ),
            );
        }
    }
}

/// Names appear in metric labels, file names and provider-side key names: keep them plain.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name_rule(what: &str, name: &str) -> String {
    format!("{what} name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ .")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn an_empty_file_is_a_valid_config_with_defaults() {
        let config = parse("").unwrap();
        assert_eq!(
            config.daemon.listen_address().to_string(),
            DEFAULT_LISTEN_ADDRESS
        );
        assert_eq!(config.checks.interval.0, Duration::from_secs(300));
    }

    #[test]
    fn events_retention_is_forever_or_at_least_a_day() {
        assert_eq!(
            parse("").unwrap().daemon.events_retention.0,
            Duration::from_secs(400 * 86_400)
        );
        for kept in ["0s", "1d", "30d"] {
            parse(&format!("[daemon]\nevents_retention = \"{kept}\"\n")).unwrap();
        }
        let rendered = parse("[daemon]\nevents_retention = \"1h\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            rendered.contains(
                "test.toml:2:20: `daemon.events_retention` must be at least 1d, or \"0s\" to keep every event"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn the_rotation_lease_defaults_to_a_minute_and_has_a_floor() {
        let config = parse("").unwrap();
        assert_eq!(config.daemon.rotation_lease.0, Duration::from_secs(60));
        let config = parse("[daemon]\nrotation_lease = \"10s\"\n").unwrap();
        assert_eq!(config.daemon.rotation_lease.0, Duration::from_secs(10));
        let rendered = parse("[daemon]\nrotation_lease = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            rendered.contains("test.toml:2:18: `daemon.rotation_lease` must be at least 3s"),
            "{rendered}"
        );
    }

    #[test]
    fn the_verify_timeout_defaults_to_half_a_minute_and_has_a_ceiling() {
        let credential = |rotation: &str| {
            format!("[[provider]]\nname = \"or\"\nkind = \"openrouter\"\n\n[[credential]]\nname = \"a\"\nprovider = \"or\"\n[credential.rotation]\n{rotation}\n")
        };
        let config = parse(&credential("")).unwrap();
        assert_eq!(
            config.credentials[0].rotation.verify_timeout(),
            Duration::from_secs(30)
        );
        let config = parse(&credential("verify_timeout = \"2m\"")).unwrap();
        assert_eq!(
            config.credentials[0].rotation.verify_timeout(),
            Duration::from_secs(120)
        );
        let config = parse(&credential("verify_timeout = \"0s\"")).unwrap();
        assert_eq!(
            config.credentials[0].rotation.verify_timeout(),
            Duration::ZERO
        );
        let rendered = parse(&credential("verify_timeout = \"1h\""))
            .unwrap_err()
            .to_string();
        assert!(
            rendered.contains("test.toml:9:18: `verify_timeout` (1h) must be at most 10m"),
            "{rendered}"
        );
        let rendered = parse(&credential("verify_timeout = \"soon\""))
            .unwrap_err()
            .to_string();
        assert!(
            rendered.contains("test.toml:9:18: invalid duration \"soon\""),
            "{rendered}"
        );
    }

    #[test]
    fn semantic_issues_are_reported_together_with_positions() {
        let text = r#"
[[provider]]
name = "or"
kind = "openrouter"

[[credential]]
name = "a"
provider = "nope"

[[credential]]
name = "a"
provider = "or"
rotation = { schedule = "bad cron", max_age = "1d", grace = "2d" }
"#;
        let err = parse(text).unwrap_err();
        let rendered = err.to_string();
        assert_eq!(err.issues.len(), 4, "{rendered}");
        assert!(
            rendered
                .contains("test.toml:8:12: credential \"a\" refers to undefined provider \"nope\""),
            "{rendered}"
        );
        assert!(
            rendered.contains("test.toml:11:8: duplicate credential name"),
            "{rendered}"
        );
        assert!(rendered.contains("cron"), "{rendered}");
        assert!(
            rendered.contains("`grace` (2d) is longer than `max_age` (1d)"),
            "{rendered}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_a_position() {
        let err = parse("[daemon]\nlisten_adress = \"x\"\n").unwrap_err();
        assert_eq!(err.issues[0].line, 2);
        assert!(err.issues[0].message.contains("unknown field"), "{err}");
    }
}
