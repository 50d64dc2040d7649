//! `keyrotd store copy` from SQLite to PostgreSQL and back, through the real binary, on a
//! fresh PostgreSQL database (`common::pg::TestDb`; skipped where no server answers, a
//! failure under `KEYROTD_REQUIRE_TOOLS`): every row arrives on PostgreSQL as it was, its
//! secrets open there with the same master key, the identity sequences continue past the
//! copied ids, a second copy into it is refused with nothing written, and the copy back
//! to a new SQLite file reads back row for row and lists the same as the original.

mod common;
mod copy_support;

use common::pg::TestDb;
use common::*;
use copy_support::*;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::store::prelude::*;
use keyrotd::store::{Dump, EventKind, LeaderClaim, PgStore, StoreCopy};
use secrecy::ExposeSecret;
use std::sync::Arc;

async fn pg_export(db: &TestDb) -> Dump {
    let store = PgStore::connect(&db.settings(), None).await.unwrap();
    let dump = store.export().await.unwrap();
    store.close().await;
    dump
}

/// `dump` with `source`'s generation: a copy moves the generation past the source's.
fn same_but_generation(mut dump: Dump, source: &Dump) -> Dump {
    assert!(
        dump.generation > source.generation,
        "the generation went back"
    );
    dump.generation = source.generation;
    dump
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_to_postgres_and_back_keeps_every_row_and_every_secret() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let sim = simulator().await;
    let env = env_on(&sim);
    let secrets = seed(&env, &sim).await;
    let source = export(&env.database).await;
    let sqlite = format!("sqlite:{}", env.database.display());
    // The password travels in a file (trust authentication ignores it): never printed.
    let password_file = env.path().join("pg-password");
    std::fs::write(&password_file, "pg-password-canary\n").unwrap();
    let password_flag = password_file.to_str().unwrap();

    let out = copy_between(&sqlite, &db.url(), &["--to-password-file", password_flag]);
    assert_success(&out, "store copy to PostgreSQL");
    let printed = stdout(&out) + &stderr(&out);
    assert!(
        printed.contains(&source.installation.installation_id),
        "{printed}"
    );
    assert!(!printed.contains("pg-password-canary"), "{printed}");
    assert_no_secret(&secrets, "the copy to PostgreSQL", &printed);
    let on_pg = pg_export(&db).await;
    assert_eq!(same_but_generation(on_pg.clone(), &source), source);

    // The secrets open on PostgreSQL with the same master key, and new rows get new ids.
    let sealer = Arc::new(Sealer::new(&MasterKey::load(&env.master_key).unwrap()));
    let store = PgStore::connect(&db.settings(), Some(sealer))
        .await
        .unwrap();
    store.claim_master_key(&env.master_key).await.unwrap();
    store.verify_master_key().await.unwrap();
    for version in source
        .key_versions
        .iter()
        .filter(|v| v.sealed_secret.is_some())
    {
        let secret = store.secret(version.id).await.unwrap();
        assert_eq!(secret.expose_secret(), secrets[&version.id]);
    }
    // An event of the store's own (no credential, so the listings below stay comparable).
    store
        .append_event(
            None,
            None,
            EventKind::Imported,
            "test",
            "after the copy",
            now(),
        )
        .await
        .unwrap();
    store.close().await;
    let last_copied = source.events.iter().map(|e| e.id).max().unwrap();
    let after = pg_export(&db).await;
    assert_eq!(after.events.last().unwrap().id, last_copied + 1);

    // A second copy into it is refused, and changes nothing.
    let before = after;
    let out = copy_between(&sqlite, &db.url(), &[]);
    assert_refused(
        &out,
        "a copy into PostgreSQL with data",
        "the target store is not empty",
    );
    assert_eq!(pg_export(&db).await, before, "the refused target changed");

    // Not while a replica leads on it: it could go on writing after the snapshot.
    let back = env.path().join("back").join("keyrotd.db");
    let back_location = format!("sqlite:{}", back.display());
    let replica = PgStore::connect(&db.settings(), None).await.unwrap();
    let LeaderClaim::Leading(lease) = replica.claim_leadership("replica-a", 60).await.unwrap()
    else {
        panic!("a fresh database has no leader");
    };
    let out = copy_between(&db.url(), &back_location, &[]);
    assert_refused(&out, "a copy from a led database", "replica-a leads on");
    assert!(!back.exists(), "a refused copy made its target");
    replica.release_leadership(&lease.token()).await.unwrap();
    replica.close().await;

    // Back to a new SQLite file once no replica leads (the event added on PostgreSQL comes
    // along).
    let out = copy_between(&db.url(), &back_location, &[]);
    assert_success(&out, "store copy back to SQLite");
    assert_no_secret(&secrets, "the copy back", &(stdout(&out) + &stderr(&out)));
    let returned = export(&back).await;
    assert_eq!(same_but_generation(returned, &before), before);
    // Without the one event added on PostgreSQL, the round trip is the original.
    let mut original = before.clone();
    original.events.retain(|e| e.id <= last_copied);
    original.generation = source.generation;
    assert_eq!(
        original.counters, source.counters,
        "an Imported event counts nothing"
    );
    assert_eq!(original, source);
    assert_same_listings(&env, &env.database, &back, &secrets);
}
