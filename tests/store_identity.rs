//! The installation on every backend: an identity made at the first open and kept, and the
//! master-key fence (rows sealed under another key are named at open, and a process whose
//! key was rotated away under it cannot seal another row). The same promises with real
//! processes and a provider, on SQLite, are `installation_identity.rs`.

mod common;

use common::backends::{on_both_backends, Scratch};
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::store::{Claim, CredentialSpec, NewKey, Store, StoreError};
use secrecy::SecretString;
use std::path::Path;
use std::sync::Arc;

const CRED: &str = "app";
const START: i64 = 1_800_000_000;

on_both_backends!(
    the_identity_is_made_once_and_kept,
    a_process_whose_master_key_was_rotated_away_cannot_seal,
);

fn key(secret: &str) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: None,
        rotation_id: None,
    }
}

fn sealer() -> Arc<Sealer> {
    Arc::new(Sealer::new(&MasterKey::generate()))
}

async fn synced(store: &dyn Store) {
    store
        .sync_credentials(
            &[CredentialSpec {
                name: CRED.into(),
                provider: "sim".into(),
                provider_kind: "simulated".into(),
            }],
            START,
        )
        .await
        .unwrap();
}

async fn the_identity_is_made_once_and_kept(scratch: Scratch) {
    let store = scratch.open(Some(sealer())).await.unwrap();
    let id = store.installation_id().await.unwrap();
    assert_eq!(id.len(), 12);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    synced(&*store).await;
    assert!(!store.holds_secrets().await.unwrap());
    store
        .import_key(CRED, key("sk-1"), "test", START)
        .await
        .unwrap();
    assert!(store.holds_secrets().await.unwrap());
    assert!(!store.rotation_planned(CRED, "r1").await.unwrap());
    let claim = Claim {
        owner: "a".into(),
        lease_seconds: 60,
        leader: None,
    };
    store
        .plan_rotation(CRED, "r1", "test", &claim, START)
        .await
        .unwrap();
    assert!(store.rotation_planned(CRED, "r1").await.unwrap());
    assert!(!store.rotation_planned("other", "r1").await.unwrap());
    store.close().await;
    // Opened again: the same database, the same identity.
    let again = scratch.open(None).await.unwrap();
    assert_eq!(again.installation_id().await.unwrap(), id);
    again.close().await;
    // Another database is another installation.
    let other = Scratch::new(scratch.backend()).await.unwrap();
    let other = other.open(None).await.unwrap();
    assert_ne!(other.installation_id().await.unwrap(), id);
}

async fn a_process_whose_master_key_was_rotated_away_cannot_seal(scratch: Scratch) {
    let old = sealer();
    let stale = scratch.open(Some(old.clone())).await.unwrap();
    synced(&*stale).await;
    stale.claim_master_key(Path::new("old.key")).await.unwrap();
    stale
        .import_key(CRED, key("sk-1"), "test", START)
        .await
        .unwrap();
    // A wrong key is refused at open, by key id, naming the rows.
    let wrong = scratch.open(Some(sealer())).await.unwrap();
    assert!(matches!(
        wrong.claim_master_key(Path::new("wrong.key")).await,
        Err(StoreError::SealedUnderOtherKey { rows: 1, .. })
    ));
    assert!(wrong.verify_master_key().await.is_err());
    // `master-key rotate` from another process: everything re-sealed under the new key.
    let rotating = scratch.open(Some(old)).await.unwrap();
    let new = sealer();
    assert_eq!(rotating.reseal(&new, "operator", START).await.unwrap(), 1);
    // The process still holding the old key cannot seal anything now.
    assert!(stale.master_key_replaced().await.unwrap());
    assert!(matches!(
        stale.import_key(CRED, key("sk-2"), "test", START).await,
        Err(StoreError::MasterKeyChanged { .. })
    ));
    // The new key opens everything and seals on.
    let fresh = scratch.open(Some(new)).await.unwrap();
    fresh.claim_master_key(Path::new("new.key")).await.unwrap();
    fresh.verify_master_key().await.unwrap();
    assert!(!fresh.master_key_replaced().await.unwrap());
    fresh
        .import_key(CRED, key("sk-3"), "test", START)
        .await
        .unwrap();
    assert_eq!(fresh.versions(CRED).await.unwrap().len(), 2);
}
