//! The store locations `store copy` takes on its command line: `sqlite:PATH` or
//! `postgres://user@host:port/database`. A scheme is required, so a mistyped URL never
//! becomes a new SQLite file. A password is never accepted inside the URL (argv is visible
//! in `ps` and shell history): it comes from a file or `PGPASSWORD`, and no error repeats
//! the text that held one.

use crate::store::{PgSettings, PgSslMode, StoreLocation};
use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Connections a copy opens to a PostgreSQL database: it runs one transaction at a time.
const PG_POOL_SIZE: u32 = 2;
const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// libpq's default port, for telling two URLs of one database apart.
const PG_DEFAULT_PORT: u16 = 5432;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LocationError {
    #[error("{flag}: a store location is sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE")]
    UnknownScheme { flag: &'static str },
    #[error("{flag}: sqlite: needs a path to the database file")]
    NoPath { flag: &'static str },
    #[error("{flag}: the URL holds a password; give it with {flag}-password-file or PGPASSWORD instead, never on the command line (and change it, since it was on one)")]
    PasswordInUrl { flag: &'static str },
    #[error(
        "{flag}: the URL must name a host and a database (postgres://USER@HOST[:PORT]/DATABASE)"
    )]
    Incomplete { flag: &'static str },
    #[error("{flag}: the port is not a number")]
    BadPort { flag: &'static str },
    #[error("{flag}: sslmode must be disable, prefer, require, verify-ca or verify-full")]
    BadSslMode { flag: &'static str },
    #[error("{flag}-password-file is for a PostgreSQL location")]
    PasswordForSqlite { flag: &'static str },
}

/// Parses the location given to `flag`. `password` is the one read for it (its password
/// file, else `PGPASSWORD`); it goes with a PostgreSQL location and must not come with an
/// SQLite one when it came from a file (`from_file`).
pub(crate) fn parse(
    flag: &'static str,
    text: &str,
    password: Option<SecretString>,
    from_file: bool,
) -> Result<StoreLocation, LocationError> {
    if let Some(rest) = text.strip_prefix("sqlite:") {
        if from_file {
            return Err(LocationError::PasswordForSqlite { flag });
        }
        // `sqlite://PATH` as sqlx writes it, or `sqlite:PATH`.
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(LocationError::NoPath { flag });
        }
        return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
    }
    let rest = text
        .strip_prefix("postgres://")
        .or_else(|| text.strip_prefix("postgresql://"))
        .ok_or(LocationError::UnknownScheme { flag })?;
    let parts = PgUrl::parse(flag, rest)?;
    Ok(StoreLocation::Postgres(PgSettings {
        url: text.to_string(),
        password,
        ssl_mode: parts.ssl_mode,
        pool_size: PG_POOL_SIZE,
        connect_timeout: PG_CONNECT_TIMEOUT,
    }))
}

/// What a PostgreSQL URL names, checked.
struct PgUrl {
    host: String,
    port: u16,
    database: String,
    ssl_mode: PgSslMode,
}

impl PgUrl {
    /// `rest` is the URL after its scheme: `[user@]host[:port]/database[?query]`.
    fn parse(flag: &'static str, rest: &str) -> Result<PgUrl, LocationError> {
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = before_query.split_once('/').unwrap_or((before_query, ""));
        let host_port = match authority.rsplit_once('@') {
            Some((user, host_port)) => {
                if user.contains(':') {
                    return Err(LocationError::PasswordInUrl { flag });
                }
                host_port
            }
            None => authority,
        };
        let mut ssl_mode = PgSslMode::Prefer;
        // A Unix socket directory comes as `?host=/run/postgresql`, the authority empty.
        let mut query_host = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "password" => return Err(LocationError::PasswordInUrl { flag }),
                "sslmode" => {
                    ssl_mode = PgSslMode::parse(value).ok_or(LocationError::BadSslMode { flag })?;
                }
                "host" => query_host = Some(value),
                _ => {}
            }
        }
        // An IPv6 host is bracketed: its port follows the bracket.
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => (
                host,
                port.parse().map_err(|_| LocationError::BadPort { flag })?,
            ),
            _ => (host_port, PG_DEFAULT_PORT),
        };
        let host = match query_host {
            Some(socket) if host.is_empty() => socket,
            _ => host,
        };
        if host.is_empty() || database.is_empty() {
            return Err(LocationError::Incomplete { flag });
        }
        Ok(PgUrl {
            host: host.to_ascii_lowercase(),
            port,
            database: database.to_string(),
            ssl_mode,
        })
    }
}

/// Whether two locations name the same store, as far as can be told without opening them:
/// one SQLite file (by inode when both exist, else by absolute path), or one database on
/// one host and port. Two names of one server (`localhost`, `127.0.0.1`) are not told
/// apart here; the copy still refuses then, because its target is not empty.
pub(crate) fn same_store(a: &StoreLocation, b: &StoreLocation) -> bool {
    match (a, b) {
        (StoreLocation::Sqlite(a), StoreLocation::Sqlite(b)) => same_file(a, b),
        (StoreLocation::Postgres(a), StoreLocation::Postgres(b)) => {
            match (pg_identity(&a.url), pg_identity(&b.url)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
        _ => false,
    }
}

fn pg_identity(url: &str) -> Option<(String, u16, String)> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))?;
    let parts = PgUrl::parse("", rest).ok()?;
    Some((parts.host, parts.port, parts.database))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(a), Ok(b)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return a.dev() == b.dev() && a.ino() == b.ino();
    }
    absolute(a) == absolute(b)
}

/// The path with its directory resolved (links and `..`), for a file that may not exist.
fn absolute(path: &Path) -> PathBuf {
    let name = path.file_name().map(PathBuf::from).unwrap_or_default();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::canonicalize(&dir)
        .unwrap_or_else(|_| std::path::absolute(&dir).unwrap_or(dir))
        .join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn pg(text: &str) -> PgSettings {
        match parse("--to", text, None, false) {
            Ok(StoreLocation::Postgres(settings)) => settings,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn sqlite_locations_are_paths_after_the_scheme() {
        for (text, path) in [
            (
                "sqlite:/var/lib/keyrotd/keyrotd.db",
                "/var/lib/keyrotd/keyrotd.db",
            ),
            ("sqlite:///var/lib/k.db", "/var/lib/k.db"),
            ("sqlite:k.db", "k.db"),
        ] {
            match parse("--from", text, None, false) {
                Ok(StoreLocation::Sqlite(p)) => assert_eq!(p, PathBuf::from(path)),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            parse("--from", "sqlite:", None, false).unwrap_err(),
            LocationError::NoPath { flag: "--from" }
        );
    }

    #[test]
    fn a_location_needs_a_known_scheme() {
        for text in [
            "/var/lib/keyrotd/keyrotd.db",
            "mysql://u@h/db",
            "postgres:/x",
        ] {
            assert_eq!(
                parse("--from", text, None, false).unwrap_err(),
                LocationError::UnknownScheme { flag: "--from" },
                "{text}"
            );
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_repeated() {
        for text in [
            "postgres://keyrotd:hunter2-canary@db:5432/keyrotd",
            "postgresql://keyrotd@db/keyrotd?password=hunter2-canary",
            "postgres://keyrotd@db/keyrotd?sslmode=require&password=hunter2-canary",
        ] {
            let error = parse("--to", text, None, false).unwrap_err();
            assert_eq!(
                error,
                LocationError::PasswordInUrl { flag: "--to" },
                "{text}"
            );
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn a_postgres_url_carries_its_sslmode_and_the_password_given_apart() {
        let settings = match parse(
            "--to",
            "postgres://keyrotd@db.example:6432/keyrotd?sslmode=verify-full",
            Some(SecretString::from("s3cret".to_string())),
            true,
        ) {
            Ok(StoreLocation::Postgres(settings)) => settings,
            other => panic!("{other:?}"),
        };
        assert_eq!(settings.ssl_mode, PgSslMode::VerifyFull);
        assert_eq!(settings.password.unwrap().expose_secret(), "s3cret");
        assert_eq!(pg("postgres://u@h/db").ssl_mode, PgSslMode::Prefer);
        pg("postgres://keyrotd@/keyrotd?host=/run/postgresql");
        for (text, error) in [
            (
                "postgres://u@h/db?sslmode=maybe",
                LocationError::BadSslMode { flag: "--to" },
            ),
            (
                "postgres://u@h:port/db",
                LocationError::BadPort { flag: "--to" },
            ),
            ("postgres://u@h", LocationError::Incomplete { flag: "--to" }),
            (
                "postgres://u@/db",
                LocationError::Incomplete { flag: "--to" },
            ),
        ] {
            assert_eq!(
                parse("--to", text, None, false).unwrap_err(),
                error,
                "{text}"
            );
        }
    }

    #[test]
    fn a_password_file_for_an_sqlite_location_is_a_mistake() {
        assert_eq!(
            parse("--from", "sqlite:/k.db", None, true).unwrap_err(),
            LocationError::PasswordForSqlite { flag: "--from" }
        );
    }

    #[test]
    fn one_database_under_two_spellings_is_the_same_store() {
        let a = StoreLocation::Postgres(pg("postgres://keyrotd@DB.example/keyrotd"));
        let b = StoreLocation::Postgres(pg(
            "postgresql://admin@db.example:5432/keyrotd?sslmode=require",
        ));
        let c = StoreLocation::Postgres(pg("postgres://keyrotd@db.example:5433/keyrotd"));
        let d = StoreLocation::Postgres(pg("postgres://keyrotd@[::1]:5432/keyrotd"));
        let e = StoreLocation::Postgres(pg("postgres://keyrotd@[::1]/keyrotd"));
        assert!(same_store(&a, &b));
        assert!(!same_store(&a, &c));
        assert!(same_store(&d, &e));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.db");
        std::fs::write(&file, b"").unwrap();
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dotted = dir.path().join("sub/../k.db");
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let sqlite = |p: &Path| StoreLocation::Sqlite(p.to_path_buf());
        assert!(same_store(&sqlite(&file), &sqlite(&link)));
        assert!(same_store(&sqlite(&file), &sqlite(&dotted)));
        let absent = dir.path().join("new.db");
        let absent_dotted = dir.path().join("sub/../new.db");
        assert!(same_store(&sqlite(&absent), &sqlite(&absent_dotted)));
        assert!(!same_store(&sqlite(&file), &sqlite(&absent)));
        assert!(!same_store(&sqlite(&file), &a));
    }
}
