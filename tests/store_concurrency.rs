//! Replicas racing on one database, on every backend: two processes (two stores opened on
//! the same database) planning, taking over, importing and claiming leadership at the same
//! moment. SQLite serialises them with its single writer; PostgreSQL with row locks (see
//! `store/postgres/mod.rs`): either way exactly one wins each race and the others get the
//! refusal a caller branches on, never a raw database error.

mod common;

use common::backends::{on_both_backends, Scratch};
use futures::future::join_all;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::store::{Claim, CredentialSpec, LeaderClaim, LeaderToken, NewKey, Store, StoreError};
use secrecy::SecretString;
use std::sync::Arc;

const CRED: &str = "app";
const START: i64 = 1_800_000_000;
const RACERS: usize = 8;

on_both_backends!(
    one_of_many_concurrent_plans_wins,
    one_of_many_concurrent_takeovers_wins,
    concurrent_imports_leave_exactly_one_current_key,
    one_of_many_concurrent_claims_of_leadership_wins,
    a_change_of_leader_amid_rotation_writes_is_clean,
);

fn key(secret: &str) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: None,
        rotation_id: None,
    }
}

fn claim(owner: String, lease_seconds: i64) -> Claim {
    Claim {
        owner,
        lease_seconds,
        leader: None,
    }
}

/// Two replicas on one database, sharing its master key, with the credential synced.
async fn replicas(scratch: &Scratch) -> [Arc<dyn Store>; 2] {
    let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
    let first = scratch.open(Some(sealer.clone())).await.unwrap();
    let second = scratch.open(Some(sealer)).await.unwrap();
    first
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
    [first, second]
}

async fn one_of_many_concurrent_plans_wins(scratch: Scratch) {
    let stores = replicas(&scratch).await;
    let results = join_all((0..RACERS).map(|i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .plan_rotation(
                    CRED,
                    &format!("r{i}"),
                    "test",
                    &claim(format!("p{i}"), 60),
                    START,
                )
                .await
        }
    }))
    .await;
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for result in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(result, Err(StoreError::RotationInFlight { .. })),
            "{result:?}"
        );
    }
    assert_eq!(stores[0].rotations_in_flight().await.unwrap().len(), 1);
}

async fn one_of_many_concurrent_takeovers_wins(scratch: Scratch) {
    let stores = replicas(&scratch).await;
    stores[0]
        .plan_rotation(CRED, "r1", "test", &claim("dead".into(), 0), START)
        .await
        .unwrap();
    let results = join_all((0..RACERS).map(|i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .take_over("r1", &claim(format!("heir{i}"), 3600), START)
                .await
        }
    }))
    .await;
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].0.owner_epoch, 2);
    for result in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(result, Err(StoreError::LeaseLive { .. })),
            "{result:?}"
        );
    }
    let in_flight = stores[1].rotations_in_flight().await.unwrap();
    assert_eq!(in_flight[0].owner, winners[0].0.owner);
}

async fn concurrent_imports_leave_exactly_one_current_key(scratch: Scratch) {
    let stores = replicas(&scratch).await;
    let results = join_all((0..RACERS).map(|i| {
        let store = stores[i % 2].clone();
        async move {
            store
                .import_key(CRED, key(&format!("sk-{i}")), "test", START)
                .await
        }
    }))
    .await;
    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    let versions = stores[0].versions(CRED).await.unwrap();
    assert_eq!(versions.len(), RACERS);
    let current = versions
        .iter()
        .filter(|v| v.stage == Stage::Current)
        .count();
    assert_eq!(current, 1, "{versions:?}");
    // The same key imported twice at once: one is stored, the other is a duplicate.
    let results = join_all((0..2).map(|i| {
        let store = stores[i].clone();
        async move { store.import_key(CRED, key("sk-same"), "test", START).await }
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results
        .iter()
        .any(|r| matches!(r, Err(StoreError::DuplicateKey(_)))));
}

async fn one_of_many_concurrent_claims_of_leadership_wins(scratch: Scratch) {
    let stores = replicas(&scratch).await;
    let results = join_all((0..RACERS).map(|i| {
        let store = stores[i % 2].clone();
        async move { store.claim_leadership(&format!("replica-{i}"), 60).await }
    }))
    .await;
    let leading: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            Ok(LeaderClaim::Leading(lease)) => Some(lease.clone()),
            Ok(LeaderClaim::Following(_)) => None,
            Err(error) => panic!("{error}"),
        })
        .collect();
    assert_eq!(leading.len(), 1, "{results:?}");
    assert_eq!(leading[0].epoch, 1);
    assert_eq!(
        stores[1].leadership().await.unwrap().unwrap().holder,
        leading[0].holder
    );
}

async fn lead(store: &dyn Store, holder: &str) -> LeaderToken {
    match store.claim_leadership(holder, 60).await.unwrap() {
        LeaderClaim::Leading(lease) => lease.token(),
        other => panic!("{holder} does not lead: {other:?}"),
    }
}

/// Leader a's rotations keep renewing while a hands over to b and b takes them over: every
/// write is either done or fenced (never a deadlock or another database error), and b owns
/// every rotation at the end.
async fn a_change_of_leader_amid_rotation_writes_is_clean(scratch: Scratch) {
    let stores = replicas(&scratch).await;
    let names: Vec<String> = (0..4).map(|i| format!("cred-{i}")).collect();
    let specs: Vec<_> = names
        .iter()
        .map(|name| CredentialSpec {
            name: name.clone(),
            provider: "sim".into(),
            provider_kind: "simulated".into(),
        })
        .collect();
    stores[0].sync_credentials(&specs, START).await.unwrap();
    let a = lead(&*stores[0], "a").await;
    let mut leases = Vec::new();
    for name in &names {
        let claim = Claim {
            owner: "daemon-a".into(),
            lease_seconds: 3600,
            leader: Some(a.clone()),
        };
        let (_, lease) = stores[0]
            .plan_rotation(name, &format!("r-{name}"), "test", &claim, START)
            .await
            .unwrap();
        leases.push(lease);
    }
    let renewals = join_all(leases.iter().flat_map(|lease| {
        let store = stores[0].clone();
        (0..3).map(move |_| {
            let store = store.clone();
            async move { store.renew_lease(lease).await }
        })
    }));
    let b_side = async {
        stores[0].release_leadership(&a).await.unwrap();
        let b = lead(&*stores[1], "b").await;
        let claim = Claim {
            owner: "daemon-b".into(),
            lease_seconds: 3600,
            leader: Some(b),
        };
        join_all(names.iter().map(|name| {
            let store = stores[1].clone();
            let claim = claim.clone();
            async move { store.take_over(&format!("r-{name}"), &claim, START).await }
        }))
        .await
    };
    let (renewed, taken) = futures::join!(renewals, b_side);
    for result in &renewed {
        assert!(
            matches!(result, Ok(()) | Err(StoreError::Fenced { .. })),
            "{result:?}"
        );
    }
    for result in &taken {
        assert!(result.is_ok(), "{result:?}");
    }
    for rotation in stores[0].rotations_in_flight().await.unwrap() {
        assert_eq!(
            (rotation.owner.as_str(), rotation.owner_epoch),
            ("daemon-b", 2)
        );
    }
    for lease in &leases {
        assert!(matches!(
            stores[0].renew_lease(lease).await,
            Err(StoreError::Fenced { .. })
        ));
    }
}
