//! Leadership among replicas and the leader fence, on every backend: the lease row changes
//! hands only when free or expired (raising the epoch), a rotation write made for a leader
//! is refused once its term is over, and a new leader takes over a rotation owned in an
//! earlier term without waiting out the rotation lease. The PostgreSQL backend's own
//! promises (a kept identity, a clear "unavailable") follow.

mod common;

use common::backends::{on_both_backends, Backend, Scratch};
use common::pg::TestDb;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::store::{
    Claim, CredentialSpec, LeaderClaim, LeaderToken, Lease, NewKey, PgSettings, PgSslMode, PgStore,
    RotationFailure, RotationStep, Store, StoreError,
};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

const CRED: &str = "app";
const START: i64 = 1_800_000_000;

on_both_backends!(
    the_lease_changes_hands_only_when_free_or_expired,
    every_rotation_write_of_a_deposed_leader_is_fenced,
    a_leader_whose_lease_ran_out_is_fenced_though_nobody_took_over,
    a_new_leader_takes_over_a_rotation_of_an_earlier_term_at_once,
    a_key_goes_through_its_whole_life,
    renewing_the_lease_leaves_the_metrics_cache_alone,
);

fn key(secret: &str, rotation: Option<&str>) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: None,
        rotation_id: rotation.map(String::from),
    }
}

async fn store(scratch: &Scratch) -> Arc<dyn Store> {
    let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
    let store = scratch.open(Some(sealer)).await.unwrap();
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
    store
        .import_key(CRED, key("sk-first", None), "test", START)
        .await
        .unwrap();
    store
}

async fn lead(store: &dyn Store, holder: &str, ttl: i64) -> LeaderToken {
    match store.claim_leadership(holder, ttl).await.unwrap() {
        LeaderClaim::Leading(lease) => lease.token(),
        other => panic!("{holder} does not lead: {other:?}"),
    }
}

fn claim(owner: &str, lease_seconds: i64, leader: Option<&LeaderToken>) -> Claim {
    Claim {
        owner: owner.into(),
        lease_seconds,
        leader: leader.cloned(),
    }
}

fn assert_fenced<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Fenced { .. })),
        "{what}: not fenced: {result:?}"
    );
}

async fn the_lease_changes_hands_only_when_free_or_expired(scratch: Scratch) {
    let store = store(&scratch).await;
    assert_eq!(store.leadership().await.unwrap(), None);
    let a = lead(&*store, "a", 60).await;
    assert_eq!(a.epoch, 1);
    // A live lease: b follows and is told who leads.
    match store.claim_leadership("b", 60).await.unwrap() {
        LeaderClaim::Following(Some(lease)) => {
            assert_eq!((lease.holder.as_str(), lease.epoch), ("a", 1));
            assert!(lease.left > 50, "{}", lease.left);
        }
        other => panic!("{other:?}"),
    }
    // Renewing keeps the term.
    assert_eq!(lead(&*store, "a", 60).await, a);
    // Released: b takes a new term at once.
    store.release_leadership(&a).await.unwrap();
    let b = lead(&*store, "b", 0).await;
    assert_eq!(b.epoch, 2);
    // b's lease (zero seconds) has run out: a takes a third term, and b, claiming again,
    // follows.
    let a3 = lead(&*store, "a", 60).await;
    assert_eq!(a3.epoch, 3);
    assert!(matches!(
        store.claim_leadership("b", 60).await.unwrap(),
        LeaderClaim::Following(Some(_))
    ));
    // Releasing a term that is over changes nothing.
    store.release_leadership(&b).await.unwrap();
    assert_eq!(store.leadership().await.unwrap().unwrap().token(), a3);
}

async fn every_rotation_write_of_a_deposed_leader_is_fenced(scratch: Scratch) {
    let store = store(&scratch).await;
    let a = lead(&*store, "a", 60).await;
    let (rotation, lease) = store
        .plan_rotation(
            CRED,
            "r1",
            "test",
            &claim("daemon-a", 3600, Some(&a)),
            START,
        )
        .await
        .unwrap();
    assert_eq!(lease.leader.as_ref(), Some(&a));
    assert_eq!(rotation.owner_epoch, 1);
    store
        .record_issued(&lease, key("sk-new", Some("r1")), START)
        .await
        .unwrap();
    // b leads now; a, paused through it, wakes up and writes.
    store.release_leadership(&a).await.unwrap();
    let _b = lead(&*store, "b", 60).await;
    assert_fenced("renew", store.renew_lease(&lease).await);
    assert_fenced(
        "advance",
        store
            .advance_rotation(
                &lease,
                RotationStep::Issued,
                RotationStep::Verified,
                "late",
                START,
            )
            .await,
    );
    assert_fenced(
        "fail",
        store
            .fail_rotation(
                &lease,
                &RotationFailure {
                    error: "late".into(),
                    discard_pending: true,
                    retry_at: None,
                },
                START,
            )
            .await,
    );
    assert_fenced(
        "hold",
        store.hold_for_attention(&lease, "late", 60, START).await,
    );
    assert_fenced("promote", store.promote(&lease, None, START).await);
    assert_fenced(
        "finish rollback",
        store.finish_rollback(&lease, "late", 60, START).await,
    );
    assert_fenced(
        "take over",
        store
            .take_over("r1", &claim("daemon-a", 60, Some(&a)), START)
            .await,
    );
    // Nothing moved: the rotation is where a left it, its key still pending.
    let in_flight = store.rotations_in_flight().await.unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].step, RotationStep::Issued);
    assert_eq!(in_flight[0].owner_epoch, 1);
    assert!(in_flight[0].error.is_none());
    // Planning is fenced too (on another credential's behalf it would be the same).
    store
        .fail_rotation(
            &Lease {
                leader: None,
                ..lease.clone()
            },
            &RotationFailure {
                error: "cleared by the test".into(),
                discard_pending: true,
                retry_at: None,
            },
            START,
        )
        .await
        .unwrap();
    assert_fenced(
        "plan",
        store
            .plan_rotation(CRED, "r2", "test", &claim("daemon-a", 60, Some(&a)), START)
            .await,
    );
    assert!(store.rotations_in_flight().await.unwrap().is_empty());
}

async fn a_leader_whose_lease_ran_out_is_fenced_though_nobody_took_over(scratch: Scratch) {
    let store = store(&scratch).await;
    let live = lead(&*store, "a", 60).await;
    let (_, lease) = store
        .plan_rotation(
            CRED,
            "r1",
            "test",
            &claim("daemon-a", 3600, Some(&live)),
            START,
        )
        .await
        .unwrap();
    // The same holder renews with a zero TTL: its term is over at once on the database's
    // clock, and nobody else claimed it.
    let expired = lead(&*store, "a", 0).await;
    assert_eq!(expired, live);
    assert_fenced("renew", store.renew_lease(&lease).await);
    // Claiming again starts a new term; the old lease carries the old epoch and stays
    // fenced, while a lease under the new term may write.
    let renewed = lead(&*store, "a", 60).await;
    assert_eq!(renewed.epoch, live.epoch + 1);
    assert_fenced("renew", store.renew_lease(&lease).await);
    let (rotation, lease) = store
        .take_over("r1", &claim("daemon-a", 3600, Some(&renewed)), START)
        .await
        .unwrap();
    assert_eq!(rotation.owner_epoch, 2);
    store.renew_lease(&lease).await.unwrap();
}

async fn a_new_leader_takes_over_a_rotation_of_an_earlier_term_at_once(scratch: Scratch) {
    let store = store(&scratch).await;
    let a = lead(&*store, "a", 60).await;
    let (_, old) = store
        .plan_rotation(
            CRED,
            "r1",
            "test",
            &claim("daemon-a", 3600, Some(&a)),
            START,
        )
        .await
        .unwrap();
    // Another process of the same term must wait out the rotation lease, as must the CLI.
    assert!(matches!(
        store
            .take_over("r1", &claim("daemon-a2", 60, Some(&a)), START)
            .await,
        Err(StoreError::LeaseLive { .. })
    ));
    assert!(matches!(
        store.take_over("r1", &claim("cli", 60, None), START).await,
        Err(StoreError::LeaseLive { .. })
    ));
    let lease_left = |store: Arc<dyn Store>| async move {
        store.rotation_outlooks().await.unwrap()[0]
            .in_flight_lease_left
            .unwrap()
    };
    assert!(lease_left(store.clone()).await > 3000);
    store.release_leadership(&a).await.unwrap();
    let b = lead(&*store, "b", 60).await;
    // The schedule sees it as free to take now.
    assert!(lease_left(store.clone()).await <= 0);
    // b's term is later: the rotation is its at once, its lease an hour from ending.
    let (rotation, new) = store
        .take_over("r1", &claim("daemon-b", 3600, Some(&b)), START)
        .await
        .unwrap();
    assert_eq!(
        (rotation.owner.as_str(), rotation.owner_epoch),
        ("daemon-b", 2)
    );
    assert!(matches!(
        store.renew_lease(&old).await,
        Err(StoreError::Fenced { epoch: 1, .. })
    ));
    // Now owned in b's term: a second process of that term waits like anyone else.
    assert!(matches!(
        store
            .take_over("r1", &claim("daemon-b2", 60, Some(&b)), START)
            .await,
        Err(StoreError::LeaseLive { .. })
    ));
    // A rotation the CLI owns (no term) is never taken early, even by a leader.
    store
        .fail_rotation(
            &new,
            &RotationFailure {
                error: "test".into(),
                discard_pending: true,
                retry_at: None,
            },
            START,
        )
        .await
        .unwrap();
    store
        .plan_rotation(CRED, "r2", "operator", &claim("cli", 3600, None), START)
        .await
        .unwrap();
    assert!(matches!(
        store
            .take_over("r2", &claim("daemon-b", 60, Some(&b)), START)
            .await,
        Err(StoreError::LeaseLive { .. })
    ));
}

/// Import, check, rotate, promote, roll back, revoke: a key's life, through a leader.
async fn a_key_goes_through_its_whole_life(scratch: Scratch) {
    let store = store(&scratch).await;
    let leader = lead(&*store, "a", 60).await;
    let first = store.versions(CRED).await.unwrap()[0].clone();
    let (_, lease) = store
        .plan_rotation(
            CRED,
            "r1",
            "test",
            &claim("daemon-a", 60, Some(&leader)),
            START,
        )
        .await
        .unwrap();
    let second = store
        .record_issued(&lease, key("sk-second", Some("r1")), START)
        .await
        .unwrap();
    for (from, to) in [
        (RotationStep::Issued, RotationStep::Verified),
        (RotationStep::Verified, RotationStep::Delivered),
    ] {
        store
            .advance_rotation(&lease, from, to, "test", START)
            .await
            .unwrap();
    }
    store
        .promote(&lease, Some(START + 86_400), START)
        .await
        .unwrap();
    let (current, secret) = store.current_key(CRED).await.unwrap().unwrap();
    assert_eq!(current.id, second.id);
    assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), "sk-second");
    let credential = store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.next_rotation_at, Some(START + 86_400));

    let (_, lease) = store
        .plan_rollback(
            CRED,
            "back",
            START - 60,
            "operator",
            &claim("cli", 60, None),
            START,
        )
        .await
        .unwrap();
    for (from, to) in [
        (RotationStep::Planned, RotationStep::Verified),
        (RotationStep::Verified, RotationStep::Delivered),
    ] {
        store
            .advance_rotation(&lease, from, to, "test", START)
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .finish_rollback(&lease, "operator", 3600, START)
            .await
            .unwrap()
            .id,
        first.id
    );
    store
        .mark_revoked(second.id, "rotation", "grace over", START + 10)
        .await
        .unwrap();
    assert!(matches!(
        store.secret(second.id).await,
        Err(StoreError::NoSecret(_))
    ));
    let kinds: Vec<String> = store
        .events(CRED)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for kind in [
        "imported",
        "rotation_planned",
        "issued",
        "promoted",
        "rolled_back",
        "revoked",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "no {kind} in {kinds:?}");
    }
    // The running totals and the snapshot agree with what happened.
    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.credentials.len(), 1);
    let state = &snapshot.credentials[0];
    assert_eq!(state.current.as_ref().unwrap().id, first.id);
    assert_eq!(
        (state.rotations_succeeded, state.revocations.succeeded),
        (1, 1)
    );
    // The audit trail is append-only: only the prune deletes, and only before its cutoff.
    assert_eq!(
        store.prune_events(START + 5, 100).await.unwrap(),
        kinds.len() as u64 - 1
    );
    assert_eq!(store.events(CRED).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_postgres_database_keeps_its_identity_and_refuses_a_wrong_master_key() {
    let Some(scratch) = Scratch::new(Backend::Postgres).await else {
        return;
    };
    let store = store(&scratch).await;
    let id = store.installation_id().await.unwrap();
    assert_eq!(id.len(), 12);
    store.close().await;
    let again = scratch.open(None).await.unwrap();
    assert_eq!(again.installation_id().await.unwrap(), id);
    assert!(again.holds_secrets().await.unwrap());
    again.close().await;
    let wrong = Arc::new(Sealer::new(&MasterKey::generate()));
    let other = scratch.open(Some(wrong)).await.unwrap();
    assert!(matches!(
        other
            .claim_master_key(std::path::Path::new("/tmp/wrong-key"))
            .await,
        Err(StoreError::SealedUnderOtherKey { rows: 1, .. })
    ));
    assert!(other.verify_master_key().await.is_err());
}

#[tokio::test]
async fn an_unreachable_or_missing_postgres_database_is_unavailable_with_its_cause() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let settings = |url: String| PgSettings {
        url,
        password: Some(SecretString::from("not-in-any-message".to_string())),
        ssl_mode: PgSslMode::Disable,
        pool_size: 1,
        connect_timeout: Duration::from_secs(5),
    };
    // Port 9 (discard): nothing listens there.
    let refused = PgStore::connect(
        &settings("postgres://postgres@127.0.0.1:9/x?sslmode=disable".into()),
        None,
    )
    .await
    .unwrap_err();
    match &refused {
        StoreError::Unavailable { target, reason } => {
            assert_eq!(target, "postgres://postgres@127.0.0.1:9/x");
            assert!(
                reason.contains("refused") || reason.contains("timeout"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    }
    let missing = db.url().replace(&db.name, &format!("{}_missing", db.name));
    let error = PgStore::connect(&settings(missing), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::Unavailable { reason, .. } if reason == "database does not exist"),
        "{error}"
    );
    for error in [refused, error] {
        assert!(!format!("{error} {error:?}").contains("not-in-any-message"));
    }
}

/// The store's generation tells the metrics endpoint to re-render every per-key series; the
/// lease, renewed every few seconds by every replica, is not such state. A rotation write
/// still moves it.
async fn renewing_the_lease_leaves_the_metrics_cache_alone(scratch: Scratch) {
    let store = store(&scratch).await;
    let before = store.generation().await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            store.claim_leadership("replica-a", 15).await.unwrap(),
            LeaderClaim::Leading(_)
        ));
        assert!(matches!(
            store.claim_leadership("replica-b", 15).await.unwrap(),
            LeaderClaim::Following(_)
        ));
    }
    let lease = match store.claim_leadership("replica-a", 15).await.unwrap() {
        LeaderClaim::Leading(lease) => lease,
        other => panic!("replica-a should lead: {other:?}"),
    };
    store.release_leadership(&lease.token()).await.unwrap();
    assert_eq!(store.generation().await.unwrap(), before);
    store
        .import_key(CRED, key("sk-second", None), "test", START + 1)
        .await
        .unwrap();
    assert!(store.generation().await.unwrap() > before);
}

/// Replicas started at once on an empty database all come up: the schema is made once, and
/// without a session-level advisory lock (which PgBouncer in transaction mode breaks).
#[tokio::test]
async fn replicas_opening_an_empty_postgres_database_at_once_all_start() {
    use keyrotd::store::InstallationStore;
    let Some(db) = TestDb::create().await else {
        return;
    };
    let settings = db.settings();
    let opens = (0..4).map(|_| PgStore::connect(&settings, None));
    let stores = futures::future::join_all(opens).await;
    let mut ids = Vec::new();
    for store in stores {
        let store = store.expect("every replica opens the database");
        ids.push(store.installation_id().await.unwrap());
        store.close().await;
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one installation identity: {ids:?}");
}
