//! Connecting: the pool, the password handed to the driver apart from the URL, TLS as the
//! settings say, the schema migrated, the installation row made. A server that does not
//! answer, or refuses us, is [`StoreError::Unavailable`] (the daemon retries it with
//! backoff); anything else is an error of its own.

use super::PgStore;
use crate::crypto::Sealer;
use crate::store::{PgSettings, PgSslMode, StoreError, StoreResult};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode as DriverSslMode};
use std::str::FromStr;
use std::sync::Arc;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

fn driver_ssl_mode(mode: PgSslMode) -> DriverSslMode {
    match mode {
        PgSslMode::Disable => DriverSslMode::Disable,
        PgSslMode::Prefer => DriverSslMode::Prefer,
        PgSslMode::Require => DriverSslMode::Require,
        PgSslMode::VerifyCa => DriverSslMode::VerifyCa,
        PgSslMode::VerifyFull => DriverSslMode::VerifyFull,
    }
}

impl PgStore {
    /// Connects to the database `settings` name, applies pending migrations and gives the
    /// database its identity at its first open.
    pub async fn connect(
        settings: &PgSettings,
        sealer: Option<Arc<Sealer>>,
    ) -> StoreResult<PgStore> {
        let target = settings.describe();
        let mut options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| unavailable(&target, e))?
            .ssl_mode(driver_ssl_mode(settings.ssl_mode))
            .application_name("keyrotd");
        if let Some(password) = &settings.password {
            options = options.password(password.expose_secret());
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size.max(1))
            .acquire_timeout(settings.connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| unavailable(&target, e))?;
        if let Err(error) = migrate(&pool).await {
            pool.close().await;
            return Err(match error {
                sqlx::migrate::MigrateError::VersionMissing(found) => StoreError::SchemaTooNew {
                    path: target.clone().into(),
                    found,
                    known: MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0),
                },
                other => StoreError::Migrate(other),
            });
        }
        super::installation::ensure_installation(&pool).await?;
        Ok(PgStore {
            target,
            pool,
            sealer,
        })
    }
}

/// A connection that could not be made, with a short cause. Errors that are not about
/// reaching or entering the server stay what they are.
fn unavailable(target: &str, error: sqlx::Error) -> StoreError {
    let reason = match &error {
        sqlx::Error::PoolTimedOut => "timeout".to_string(),
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::TimedOut => "timeout".to_string(),
            _ => format!("cannot reach the server: {}", io.kind()),
        },
        sqlx::Error::Tls(_) => "TLS handshake failed".to_string(),
        sqlx::Error::Configuration(_) => "invalid connection URL".to_string(),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("28P01") | Some("28000") => "authentication failed".to_string(),
            Some("3D000") => "database does not exist".to_string(),
            Some("57P03") => "the server is starting up or shutting down".to_string(),
            Some("53300") => "too many connections".to_string(),
            _ => return StoreError::Database(error),
        },
        _ => return StoreError::Database(error),
    };
    StoreError::Unavailable {
        target: target.to_string(),
        reason,
    }
}

/// Brings the schema up to date without sqlx's session-level advisory lock: behind
/// PgBouncer in transaction mode its lock and unlock can reach different server
/// connections and leave the lock held, so the next replica to start would wait forever.
/// Each migration is its own transaction; when replicas migrate an empty database at once,
/// all but one fail on the catalog (the table already exists), and their second run finds
/// the work done.
async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_locking(false);
    match migrator.run(pool).await {
        Err(MigrateError::Execute(_) | MigrateError::ExecuteMigration(..)) => {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            migrator.run(pool).await
        }
        other => other,
    }
}
