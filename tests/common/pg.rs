//! A fresh PostgreSQL database per test: `keyrotd_t_<random>`, created through the
//! superuser connection at `KEYROTD_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the [`TestDb`] goes.
//! Where no server answers, the test skips through [`skip_or_fail`](super::skip_or_fail)
//! (a failure under `KEYROTD_REQUIRE_TOOLS`).

use keyrotd::store::{PgSettings, PgSslMode};
use rand::RngCore;
use sqlx::{Connection, PgConnection};
use std::time::Duration;

/// The server tests create their databases on, as a URL with a database to connect to for
/// `CREATE DATABASE`.
pub fn base_url() -> String {
    std::env::var("KEYROTD_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// `base`'s URL with another database in its path (and its query string kept).
fn with_database(base: &str, database: &str) -> String {
    let (url, query) = match base.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (base, None),
    };
    // The path starts at the first '/' after the authority ("scheme://authority/path").
    let authority_end = url
        .find("://")
        .map(|at| at + 3)
        .and_then(|from| url[from..].find('/').map(|i| from + i))
        .unwrap_or(url.len());
    let mut out = format!("{}/{database}", &url[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database made for one test, dropped (connections and all) when this is dropped.
pub struct TestDb {
    pub name: String,
    base: String,
}

impl TestDb {
    /// Creates a fresh database, or answers `None` after [`skip_or_fail`](super::skip_or_fail)
    /// when no server answers.
    pub async fn create() -> Option<TestDb> {
        let base = base_url();
        let mut conn =
            match tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(&base)).await
            {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => {
                    super::skip_or_fail(&format!(
                        "no PostgreSQL server answers at {base}: {error}"
                    ));
                    return None;
                }
                Err(_) => {
                    super::skip_or_fail(&format!(
                        "no PostgreSQL server answers at {base} (timeout)"
                    ));
                    return None;
                }
            };
        let mut bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let name = format!("keyrotd_t_{}", hex::encode(bytes));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = conn.close().await;
        Some(TestDb { name, base })
    }

    /// The URL of this database (no password in it).
    pub fn url(&self) -> String {
        with_database(&self.base, &self.name)
    }

    pub fn settings(&self) -> PgSettings {
        PgSettings {
            url: self.url(),
            password: None,
            ssl_mode: PgSslMode::Disable,
            pool_size: 4,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime: the database goes on a thread of its own.
        let base = self.base.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&base).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test database {}: {error}", self.name);
        }
    }
}
