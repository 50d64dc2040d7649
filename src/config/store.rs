//! `[store]`: where the store lives and how replicas share it. Absent (or without `url`),
//! the store is the SQLite file at the database path; with `url = "postgres://…"` it is a
//! PostgreSQL database several replicas share, its password coming from a secret
//! reference, never from the URL. The leadership timing applies to both: on SQLite, daemons
//! on one file elect a leader the same way.
//!
//! `check-config` validates the URL's shape only; nothing here connects.

use super::{HumanDuration, Issues, SecretRef};
use crate::store::{PgSettings, PgSslMode, StoreLocation};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// The `[store]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user@host:5432/database`; absent: SQLite.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    /// The database password: `{ file = … }`, `{ env = … }` or `{ credential = … }`.
    #[serde(default)]
    pub password: Option<Spanned<SecretRef>>,
    /// libpq's `sslmode` (default `prefer`).
    #[serde(default)]
    pub sslmode: Option<Spanned<String>>,
    /// Connections in the pool (default 8).
    #[serde(default)]
    pub pool_size: Option<Spanned<i64>>,
    /// Bound on establishing one connection (default 5s).
    #[serde(default)]
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    /// How long a leader's lease lasts on the database's clock (default 15s).
    #[serde(default)]
    pub leader_lease: Option<Spanned<HumanDuration>>,
    /// How often every replica claims the lease (default 5s).
    #[serde(default)]
    pub leader_renew_interval: Option<Spanned<HumanDuration>>,
    /// A leader stops acting when no claim succeeded this long after the start of its last
    /// successful one (default 10s): before its lease can run out and a standby take over.
    #[serde(default)]
    pub leader_renew_deadline: Option<Spanned<HumanDuration>>,
}

pub(crate) const DEFAULT_POOL_SIZE: u32 = 8;
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(15);
pub(crate) const DEFAULT_LEADER_RENEW_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_LEADER_RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// When replicas claim the leadership lease, and when a leader gives up acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderTiming {
    /// The lease's length (whole seconds: the database's clock counts in seconds).
    pub lease: Duration,
    pub renew_interval: Duration,
    pub renew_deadline: Duration,
}

impl LeaderTiming {
    /// The lease in whole seconds, rounded up.
    pub fn lease_seconds(&self) -> i64 {
        crate::clock::whole_seconds(self.lease) as i64
    }
}

fn pick(value: &Option<Spanned<HumanDuration>>, default: Duration) -> Duration {
    value.as_ref().map(|d| d.get_ref().0).unwrap_or(default)
}

impl StoreConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.is_some()
    }

    pub fn leader_timing(&self) -> LeaderTiming {
        LeaderTiming {
            lease: pick(&self.leader_lease, DEFAULT_LEADER_LEASE),
            renew_interval: pick(&self.leader_renew_interval, DEFAULT_LEADER_RENEW_INTERVAL),
            renew_deadline: pick(&self.leader_renew_deadline, DEFAULT_LEADER_RENEW_DEADLINE),
        }
    }

    fn ssl_mode(&self) -> PgSslMode {
        self.sslmode
            .as_ref()
            .and_then(|mode| PgSslMode::parse(mode.get_ref()))
            .unwrap_or(PgSslMode::Prefer)
    }

    /// Where the store is: the PostgreSQL database of `url` (its password read now), else
    /// the SQLite file at `database`.
    pub(crate) fn location(
        &self,
        database: PathBuf,
    ) -> Result<StoreLocation, super::secret_ref::SecretRefError> {
        let Some(url) = &self.url else {
            return Ok(StoreLocation::Sqlite(database));
        };
        let password = match &self.password {
            Some(reference) => Some(reference.get_ref().resolve()?),
            None => None,
        };
        Ok(StoreLocation::Postgres(PgSettings {
            url: url.get_ref().clone(),
            password,
            ssl_mode: self.ssl_mode(),
            pool_size: self
                .pool_size
                .as_ref()
                .map(|size| *size.get_ref() as u32)
                .unwrap_or(DEFAULT_POOL_SIZE),
            connect_timeout: pick(&self.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
        }))
    }

    pub(super) fn validate(&self, issues: &mut Issues) {
        match &self.url {
            Some(url) => {
                if let Err(message) = check_url(url.get_ref()) {
                    issues.push(Some(url.span()), message);
                }
            }
            None => self.validate_sqlite(issues),
        }
        if let Some(password) = &self.password {
            if let Err(error) = password.get_ref().validate() {
                issues.push(Some(password.span()), format!("`store.password`: {error}"));
            }
        }
        if let Some(mode) = &self.sslmode {
            if PgSslMode::parse(mode.get_ref()).is_none() {
                issues.push(
                    Some(mode.span()),
                    format!(
                        "`store.sslmode` {:?} is not one of disable, prefer, require, verify-ca, verify-full",
                        mode.get_ref()
                    ),
                );
            }
        }
        if let Some(size) = &self.pool_size {
            if !(1..=i64::from(u32::MAX)).contains(size.get_ref()) {
                issues.push(
                    Some(size.span()),
                    "`store.pool_size` must be at least 1".into(),
                );
            }
        }
        if let Some(timeout) = &self.connect_timeout {
            if timeout.get_ref().0 < Duration::from_millis(100) {
                issues.push(
                    Some(timeout.span()),
                    "`store.connect_timeout` must be at least 100ms".into(),
                );
            }
        }
        self.validate_leader_timing(issues);
    }

    /// The PostgreSQL settings make no sense without `url`: say so rather than ignore them.
    fn validate_sqlite(&self, issues: &mut Issues) {
        let spans = [
            ("password", self.password.as_ref().map(Spanned::span)),
            ("sslmode", self.sslmode.as_ref().map(Spanned::span)),
            ("pool_size", self.pool_size.as_ref().map(Spanned::span)),
            (
                "connect_timeout",
                self.connect_timeout.as_ref().map(Spanned::span),
            ),
        ];
        for (name, span) in spans {
            if let Some(span) = span {
                issues.push(
                    Some(span),
                    format!("`store.{name}` applies to PostgreSQL only; set `store.url` too, or remove it"),
                );
            }
        }
    }

    /// renew_interval < renew_deadline < leader_lease: a leader renews several times before
    /// it gives up, and gives up before its lease can pass to another replica.
    fn validate_leader_timing(&self, issues: &mut Issues) {
        let timing = self.leader_timing();
        if let Some(lease) = &self.leader_lease {
            if lease.get_ref().0 < Duration::from_secs(2) {
                issues.push(
                    Some(lease.span()),
                    "`store.leader_lease` must be at least 2s".into(),
                );
            }
        }
        if let Some(interval) = &self.leader_renew_interval {
            if interval.get_ref().0 < Duration::from_millis(100) {
                issues.push(
                    Some(interval.span()),
                    "`store.leader_renew_interval` must be at least 100ms".into(),
                );
            }
        }
        if timing.renew_interval >= timing.renew_deadline {
            let span = self
                .leader_renew_interval
                .as_ref()
                .or(self.leader_renew_deadline.as_ref())
                .map(Spanned::span);
            issues.push(
                span,
                format!(
                    "`store.leader_renew_interval` ({}) must be shorter than `store.leader_renew_deadline` ({})",
                    HumanDuration(timing.renew_interval),
                    HumanDuration(timing.renew_deadline)
                ),
            );
        }
        if timing.renew_deadline >= timing.lease {
            let span = self
                .leader_renew_deadline
                .as_ref()
                .or(self.leader_lease.as_ref())
                .map(Spanned::span);
            issues.push(
                span,
                format!(
                    "`store.leader_renew_deadline` ({}) must be shorter than `store.leader_lease` ({}): a leader must stop acting before its lease can pass to another replica",
                    HumanDuration(timing.renew_deadline),
                    HumanDuration(timing.lease)
                ),
            );
        }
    }
}

/// The shape of a PostgreSQL URL, without connecting. Messages never repeat the URL: it
/// could hold a password.
fn check_url(text: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(text).map_err(|error| {
        format!("`store.url` is not a URL ({error}); expected postgres://user@host:5432/database")
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "`store.url` has scheme {:?}; expected postgres://user@host:5432/database",
            url.scheme()
        ));
    }
    let query_has = |name: &str| url.query_pairs().any(|(key, _)| key == name);
    if url.password().is_some() || query_has("password") {
        return Err(
            "`store.url` holds a password: remove it from the URL and set `store.password = { file = \"…\" }` (or `env`, or `credential`) instead".into(),
        );
    }
    if query_has("sslmode") {
        return Err("`store.url` sets sslmode in its query; use `store.sslmode` instead".into());
    }
    // A Unix socket directory may come as `?host=/run/postgresql` instead.
    if url.host_str().is_none_or(str::is_empty) && !query_has("host") {
        return Err(
            "`store.url` names no host; expected postgres://user@host:5432/database".into(),
        );
    }
    let database = url.path().trim_start_matches('/');
    if database.contains('/') {
        return Err(format!(
            "`store.url` path {:?} is not a database name",
            url.path()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::store::{PgSslMode, StoreLocation};
    use secrecy::ExposeSecret;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn errors(text: &str) -> String {
        Config::parse(Path::new("test.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn without_a_store_section_the_store_is_the_sqlite_file() {
        let config = Config::parse(Path::new("t.toml"), "").unwrap();
        let location = config.store.location(PathBuf::from("/x/k.db")).unwrap();
        assert!(matches!(location, StoreLocation::Sqlite(path) if path == Path::new("/x/k.db")));
        let timing = config.store.leader_timing();
        assert_eq!(timing.lease, Duration::from_secs(15));
        assert_eq!(timing.renew_interval, Duration::from_secs(5));
        assert_eq!(timing.renew_deadline, Duration::from_secs(10));
    }

    #[test]
    fn a_postgres_url_resolves_with_its_password_apart() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let text = format!(
            "[store]\nurl = \"postgres://keyrotd@db.example:5432/keyrotd\"\npassword = {{ file = \"{}\" }}\nsslmode = \"verify-full\"\npool_size = 3\nconnect_timeout = \"2s\"\n",
            secret.display()
        );
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let StoreLocation::Postgres(settings) = config.store.location(PathBuf::new()).unwrap()
        else {
            panic!("not postgres");
        };
        assert_eq!(settings.url, "postgres://keyrotd@db.example:5432/keyrotd");
        assert_eq!(settings.password.unwrap().expose_secret(), "s3cret");
        assert_eq!(settings.ssl_mode, PgSslMode::VerifyFull);
        assert_eq!(settings.pool_size, 3);
        assert_eq!(settings.connect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn the_defaults_of_a_postgres_store() {
        let config = Config::parse(
            Path::new("t.toml"),
            "[store]\nurl = \"postgres://u@h/db\"\n",
        )
        .unwrap();
        let StoreLocation::Postgres(settings) = config.store.location(PathBuf::new()).unwrap()
        else {
            panic!("not postgres");
        };
        assert_eq!(settings.ssl_mode, PgSslMode::Prefer);
        assert_eq!(settings.pool_size, 8);
        assert_eq!(settings.connect_timeout, Duration::from_secs(5));
        assert!(settings.password.is_none());
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_repeating_it() {
        let rendered = errors("[store]\nurl = \"postgres://u:hunter2@h/db\"\n");
        assert!(
            rendered.contains("test.toml:2:7: `store.url` holds a password")
                && rendered.contains("store.password"),
            "{rendered}"
        );
        assert!(!rendered.contains("hunter2"), "{rendered}");
        let rendered = errors("[store]\nurl = \"postgres://u@h/db?password=hunter2\"\n");
        assert!(rendered.contains("holds a password"), "{rendered}");
        assert!(!rendered.contains("hunter2"), "{rendered}");
    }

    #[test]
    fn bad_urls_are_reported_with_positions() {
        for (url, expected) in [
            ("mysql://u@h/db", "has scheme \"mysql\""),
            ("not a url", "is not a URL"),
            ("postgres:///db", "names no host"),
            ("postgres://u@h/db/x", "is not a database name"),
            ("postgres://u@h/db?sslmode=require", "use `store.sslmode`"),
        ] {
            let rendered = errors(&format!("\n[store]\nurl = \"{url}\"\n"));
            assert!(
                rendered.contains("test.toml:3:7: `store.url`") && rendered.contains(expected),
                "{url}: {rendered}"
            );
        }
        assert!(Config::parse(
            Path::new("t.toml"),
            "[store]\nurl = \"postgres:///db?host=/run/postgresql\"\n"
        )
        .is_ok());
    }

    #[test]
    fn every_store_problem_is_reported_at_once() {
        let text = "[store]\nurl = \"postgres://u@h/db\"\nsslmode = \"sometimes\"\npool_size = 0\npassword = { file = \"/a\", env = \"B\" }\nconnect_timeout = \"1ms\"\n";
        let rendered = errors(text);
        assert!(
            rendered.contains("test.toml:3:11: `store.sslmode` \"sometimes\" is not one of"),
            "{rendered}"
        );
        assert!(
            rendered.contains("test.toml:4:13: `store.pool_size` must be at least 1"),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                "test.toml:5:12: `store.password`: secret reference must set exactly one"
            ),
            "{rendered}"
        );
        assert!(
            rendered.contains("test.toml:6:19: `store.connect_timeout` must be at least 100ms"),
            "{rendered}"
        );
    }

    #[test]
    fn postgres_settings_without_a_url_are_refused() {
        let rendered = errors("[store]\npool_size = 4\n");
        assert!(
            rendered.contains("test.toml:2:13: `store.pool_size` applies to PostgreSQL only"),
            "{rendered}"
        );
    }

    #[test]
    fn leader_timing_must_renew_before_the_deadline_and_stop_before_the_lease() {
        let config = Config::parse(
            Path::new("t.toml"),
            "[store]\nleader_lease = \"3s\"\nleader_renew_interval = \"1s\"\nleader_renew_deadline = \"2s\"\n",
        )
        .unwrap();
        let timing = config.store.leader_timing();
        assert_eq!(timing.lease_seconds(), 3);
        assert_eq!(timing.renew_deadline, Duration::from_secs(2));
        let rendered = errors("[store]\nleader_renew_interval = \"10s\"\n");
        assert!(
            rendered.contains("test.toml:2:25: `store.leader_renew_interval` (10s) must be shorter than `store.leader_renew_deadline` (10s)"),
            "{rendered}"
        );
        let rendered = errors("[store]\nleader_renew_deadline = \"20s\"\n");
        assert!(
            rendered.contains("test.toml:2:25: `store.leader_renew_deadline` (20s) must be shorter than `store.leader_lease` (15s)"),
            "{rendered}"
        );
        let rendered = errors("[store]\nleader_lease = \"1s\"\nleader_renew_interval = \"200ms\"\nleader_renew_deadline = \"500ms\"\n");
        assert!(
            rendered.contains("test.toml:2:16: `store.leader_lease` must be at least 2s"),
            "{rendered}"
        );
    }
}
