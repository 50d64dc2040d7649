//! The two backends hold the same tables with the same columns (`store copy` moves rows
//! between them by name), and PostgreSQL keeps the audit trail append-only as SQLite does:
//! an event is never updated, and deleted only by the retention prune, before its cutoff.

mod common;

use common::pg::TestDb;
use keyrotd::store::{AuditStore, EventKind, PgStore, SqliteStore};
use sqlx::{Connection, PgConnection, SqliteConnection};
use std::collections::BTreeSet;

/// (table, column) of every table but sqlx's own.
type Columns = BTreeSet<(String, String)>;

async fn sqlite_columns() -> Columns {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyrotd.db");
    SqliteStore::open(&path, None).await.unwrap();
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name NOT LIKE '\\_sqlx%' ESCAPE '\\'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

#[tokio::test]
async fn both_backends_have_the_same_tables_and_columns() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    PgStore::connect(&db.settings(), None).await.unwrap();
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    let postgres: Columns = sqlx::query_as(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let sqlite = sqlite_columns().await;
    assert!(sqlite.contains(&("rotations".into(), "owner_leader_epoch".into())));
    assert_eq!(
        sqlite.difference(&postgres).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "only on SQLite"
    );
    assert_eq!(
        postgres.difference(&sqlite).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "only on PostgreSQL"
    );
    // And the same schema version.
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 5);
}

#[tokio::test]
async fn postgres_events_are_append_only_but_for_the_prune() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.settings(), None).await.unwrap();
    for at in [100, 200] {
        store
            .append_event(Some("c"), None, EventKind::Imported, "test", "x", at)
            .await
            .unwrap();
    }
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    for statement in [
        "UPDATE events SET detail = 'forged'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let error = sqlx::query(statement).execute(&mut conn).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    // The prune deletes before its cutoff only; a stray delete after it is still refused.
    assert_eq!(store.prune_events(150, 10).await.unwrap(), 1);
    let error = sqlx::query("DELETE FROM events")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    assert_eq!(store.events("c").await.unwrap().len(), 1);
}
