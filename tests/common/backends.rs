//! The store's conformance cases run on every backend: [`Scratch`] is an empty store of
//! either kind (an SQLite file in a temporary directory, or a fresh PostgreSQL database),
//! and [`on_both_backends!`] turns each `async fn case(scratch: Scratch)` into a test per
//! backend (`case::sqlite`, `case::postgres`).

use super::pg::TestDb;
use keyrotd::crypto::Sealer;
use keyrotd::store::{PgStore, SqliteStore, Store, StoreError};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

/// Where a test's store lives; opened (and reopened) with [`Scratch::open`].
pub struct Scratch {
    place: Place,
}

impl Scratch {
    /// An empty place for a store, or `None` when the backend cannot run here (the skip
    /// has been reported).
    pub async fn new(backend: Backend) -> Option<Scratch> {
        let place = match backend {
            Backend::Sqlite => Place::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres => Place::Postgres(TestDb::create().await?),
        };
        Some(Scratch { place })
    }

    pub fn backend(&self) -> Backend {
        match self.place {
            Place::Sqlite(_) => Backend::Sqlite,
            Place::Postgres(_) => Backend::Postgres,
        }
    }

    /// Opens the store here (again, if it was opened before: same database).
    pub async fn open(&self, sealer: Option<Arc<Sealer>>) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match &self.place {
            Place::Sqlite(dir) => {
                Arc::new(SqliteStore::open(&dir.path().join("keyrotd.db"), sealer).await?)
                    as Arc<dyn Store>
            }
            Place::Postgres(db) => Arc::new(PgStore::connect(&db.settings(), sealer).await?),
        })
    }
}

/// `on_both_backends!(case, ...)`: for each `async fn case(scratch: Scratch)`, a module
/// `case` with the tests `sqlite` and `postgres`.
// Every test file includes `common`; most use no macro of it.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use crate::common::backends::{Backend, Scratch};

                #[tokio::test]
                async fn sqlite() {
                    if let Some(scratch) = Scratch::new(Backend::Sqlite).await {
                        super::$case(scratch).await;
                    }
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(scratch) = Scratch::new(Backend::Postgres).await {
                        super::$case(scratch).await;
                    }
                }
            }
        )*
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;
