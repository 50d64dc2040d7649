//! Where the store lives: an SQLite file (the embedded default) or a PostgreSQL database
//! shared by several replicas. The config's `[store]` section resolves to one of these;
//! the backends take it as given.

use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;

/// The backend a command opens.
#[derive(Debug)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(PgSettings),
}

/// How to reach a PostgreSQL database. The password never sits in the URL: it comes from a
/// secret reference and is handed to the driver apart.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user@host:port/database`, with no password in it.
    pub url: String,
    pub password: Option<SecretString>,
    pub ssl_mode: PgSslMode,
    /// Connections in the pool.
    pub pool_size: u32,
    /// Bound on establishing one connection.
    pub connect_timeout: Duration,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgSslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl PgSslMode {
    pub fn parse(text: &str) -> Option<PgSslMode> {
        Some(match text {
            "disable" => PgSslMode::Disable,
            "prefer" => PgSslMode::Prefer,
            "require" => PgSslMode::Require,
            "verify-ca" => PgSslMode::VerifyCa,
            "verify-full" => PgSslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PgSslMode::Disable => "disable",
            PgSslMode::Prefer => "prefer",
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            PgSslMode::VerifyFull => "verify-full",
        }
    }
}

impl PgSettings {
    /// The URL as it may be logged: no password (there is none in it) and no query string.
    pub fn describe(&self) -> String {
        self.url.split('?').next().unwrap_or_default().to_string()
    }
}
