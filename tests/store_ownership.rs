//! The ownership contract of `RotationStore`, on every backend: every step is a
//! compare-and-set on (rotation, expected step, owner epoch), a rotation is taken over only
//! once its owner's lease expired (on the database's clock), a key bound to a rotation in
//! flight cannot be revoked, and a rollback is a persisted rotation of its own kind.

mod common;

use common::backends::{on_both_backends, Scratch};
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::store::{
    Claim, CredentialSpec, Lease, NewKey, RotationFailure, RotationKind, RotationStep, Store,
    StoreError,
};
use secrecy::SecretString;
use std::sync::Arc;

const CRED: &str = "app";
const START: i64 = 1_800_000_000;

fn claim(owner: &str, lease_seconds: i64) -> Claim {
    Claim {
        owner: owner.into(),
        lease_seconds,
        leader: None,
    }
}

fn key(secret: &str, rotation: Option<&str>) -> NewKey {
    NewKey {
        secret: SecretString::from(secret.to_string()),
        expires_at: None,
        provider_key_id: Some(format!("remote-{secret}")),
        rotation_id: rotation.map(String::from),
    }
}

on_both_backends!(
    a_step_is_refused_unless_the_rotation_is_at_the_expected_step,
    a_rotation_is_taken_over_only_once_its_lease_expired,
    the_previous_owner_is_fenced_after_a_takeover,
    a_version_bound_to_a_rotation_in_flight_cannot_be_revoked,
    a_rollback_is_a_persisted_rotation_bound_to_the_previous_key,
);

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

async fn advance(store: &dyn Store, lease: &Lease, from: RotationStep, to: RotationStep) {
    store
        .advance_rotation(lease, from, to, "test", START)
        .await
        .unwrap_or_else(|e| panic!("{from} → {to}: {e}"));
}

async fn a_step_is_refused_unless_the_rotation_is_at_the_expected_step(scratch: Scratch) {
    let store = store(&scratch).await;
    let (rotation, lease) = store
        .plan_rotation(CRED, "r1", "test", &claim("a", 60), START)
        .await
        .unwrap();
    assert_eq!(rotation.kind, RotationKind::Rotate);
    assert_eq!((rotation.owner.as_str(), rotation.owner_epoch), ("a", 1));
    // Not issued yet: nothing to verify.
    let error = store
        .advance_rotation(
            &lease,
            RotationStep::Issued,
            RotationStep::Verified,
            "test",
            START,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::RotationNotInStep {
                expected: RotationStep::Issued,
                ..
            }
        ),
        "{error}"
    );
    store
        .record_issued(&lease, key("sk-new", Some("r1")), START)
        .await
        .unwrap();
    advance(
        &*store,
        &lease,
        RotationStep::Issued,
        RotationStep::Verified,
    )
    .await;
    advance(
        &*store,
        &lease,
        RotationStep::Verified,
        RotationStep::Delivered,
    )
    .await;
    // A second driver that still believes the rotation is at `issued` cannot move it back.
    let error = store
        .advance_rotation(
            &lease,
            RotationStep::Issued,
            RotationStep::Verified,
            "test",
            START,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::RotationNotInStep { .. }),
        "{error}"
    );
    let in_flight = store.rotations_in_flight().await.unwrap();
    assert_eq!(in_flight[0].step, RotationStep::Delivered);
    store.promote(&lease, None, START).await.unwrap();
    assert!(store.rotations_in_flight().await.unwrap().is_empty());
}

async fn a_rotation_is_taken_over_only_once_its_lease_expired(scratch: Scratch) {
    let store = store(&scratch).await;
    store
        .plan_rotation(CRED, "live", "test", &claim("alive", 3600), START)
        .await
        .unwrap();
    let error = store
        .take_over("live", &claim("other", 60), START)
        .await
        .unwrap_err();
    match &error {
        StoreError::LeaseLive { owner, left, .. } => {
            assert_eq!(owner, "alive");
            assert!(*left > 3000, "{left}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(store.rotations_in_flight().await.unwrap()[0].owner_epoch, 1);

    // A lease of zero seconds has expired by the time anyone looks.
    let scratch = Scratch::new(scratch.backend()).await.unwrap();
    let store = self::store(&scratch).await;
    store
        .plan_rotation(CRED, "dead", "test", &claim("dead", 0), START)
        .await
        .unwrap();
    let (rotation, lease) = store
        .take_over("dead", &claim("heir", 3600), START)
        .await
        .unwrap();
    assert_eq!((rotation.owner.as_str(), rotation.owner_epoch), ("heir", 2));
    assert_eq!(lease.epoch, 2);
    // The new owner's lease is live: a third process cannot take it from the heir.
    let error = store
        .take_over("dead", &claim("third", 60), START)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::LeaseLive { owner, .. } if owner == "heir"),
        "{error}"
    );
}

async fn the_previous_owner_is_fenced_after_a_takeover(scratch: Scratch) {
    let store = store(&scratch).await;
    let (_, old) = store
        .plan_rotation(CRED, "r1", "test", &claim("paused", 0), START)
        .await
        .unwrap();
    let (_, new) = store
        .take_over("r1", &claim("heir", 3600), START)
        .await
        .unwrap();
    let fenced = |result: Result<(), StoreError>| match result {
        Err(StoreError::Fenced { epoch: 1, .. }) => {}
        other => panic!("not fenced: {other:?}"),
    };
    fenced(store.renew_lease(&old).await);
    fenced(
        store
            .record_issued(&old, key("sk-late", Some("r1")), START)
            .await
            .map(|_| ()),
    );
    fenced(
        store
            .fail_rotation(
                &old,
                &RotationFailure {
                    error: "late".into(),
                    discard_pending: true,
                    retry_at: None,
                },
                START,
            )
            .await,
    );
    // Nothing of the late writes landed; the heir drives on.
    assert!(store
        .versions(CRED)
        .await
        .unwrap()
        .iter()
        .all(|v| v.stage != Stage::Pending));
    store
        .record_issued(&new, key("sk-heir", Some("r1")), START)
        .await
        .unwrap();
    fenced(
        store
            .advance_rotation(
                &old,
                RotationStep::Issued,
                RotationStep::Verified,
                "late",
                START,
            )
            .await,
    );
    advance(&*store, &new, RotationStep::Issued, RotationStep::Verified).await;
    advance(
        &*store,
        &new,
        RotationStep::Verified,
        RotationStep::Delivered,
    )
    .await;
    fenced(store.promote(&old, None, START).await);
    store.promote(&new, None, START).await.unwrap();
}

async fn a_version_bound_to_a_rotation_in_flight_cannot_be_revoked(scratch: Scratch) {
    let store = store(&scratch).await;
    let (_, lease) = store
        .plan_rotation(CRED, "r1", "test", &claim("a", 60), START)
        .await
        .unwrap();
    let pending = store
        .record_issued(&lease, key("sk-new", Some("r1")), START)
        .await
        .unwrap();
    let error = store
        .mark_revoked(pending.id, "operator", "test", START)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::VersionInFlight { rotation, .. } if rotation == "r1"),
        "{error}"
    );
    assert!(
        store.secret(pending.id).await.is_ok(),
        "the secret was dropped"
    );
    store
        .fail_rotation(
            &lease,
            &RotationFailure {
                error: "test".into(),
                discard_pending: true,
                retry_at: None,
            },
            START,
        )
        .await
        .unwrap();
    // Once the rotation is finished, the discarded key can go.
    store
        .mark_revoked(pending.id, "rotation", "discarded", START)
        .await
        .unwrap();
}

async fn a_rollback_is_a_persisted_rotation_bound_to_the_previous_key(scratch: Scratch) {
    let store = store(&scratch).await;
    let first = store.versions(CRED).await.unwrap()[0].clone();
    let (_, lease) = store
        .plan_rotation(CRED, "r1", "test", &claim("a", 60), START)
        .await
        .unwrap();
    let second = store
        .record_issued(&lease, key("sk-second", Some("r1")), START)
        .await
        .unwrap();
    advance(
        &*store,
        &lease,
        RotationStep::Issued,
        RotationStep::Verified,
    )
    .await;
    advance(
        &*store,
        &lease,
        RotationStep::Verified,
        RotationStep::Delivered,
    )
    .await;
    store.promote(&lease, None, START).await.unwrap();

    let (rollback, lease) = store
        .plan_rollback(CRED, "back", START - 60, "operator", &claim("b", 60), START)
        .await
        .unwrap();
    assert_eq!(rollback.kind, RotationKind::Rollback);
    assert_eq!(rollback.new_version_id, Some(first.id));
    let in_flight = store.rotations_in_flight().await.unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].kind, RotationKind::Rollback);
    // No rotation starts while it is in flight, and its key cannot be revoked (grace ending).
    assert!(matches!(
        store
            .plan_rotation(CRED, "r2", "test", &claim("c", 60), START)
            .await,
        Err(StoreError::RotationInFlight { .. })
    ));
    assert!(matches!(
        store
            .mark_revoked(first.id, "rotation", "grace over", START)
            .await,
        Err(StoreError::VersionInFlight { .. })
    ));
    // The swap only from `delivered`.
    assert!(matches!(
        store.finish_rollback(&lease, "operator", 3600, START).await,
        Err(StoreError::RotationNotInStep { .. })
    ));
    advance(
        &*store,
        &lease,
        RotationStep::Planned,
        RotationStep::Verified,
    )
    .await;
    advance(
        &*store,
        &lease,
        RotationStep::Verified,
        RotationStep::Delivered,
    )
    .await;
    let restored = store
        .finish_rollback(&lease, "operator", 3600, START)
        .await
        .unwrap();
    assert_eq!(restored.id, first.id);
    let versions = store.versions(CRED).await.unwrap();
    let stage = |id| versions.iter().find(|v| v.id == id).unwrap().stage;
    assert_eq!(stage(first.id), Stage::Current);
    assert_eq!(stage(second.id), Stage::Previous);
    assert!(store.rotations_in_flight().await.unwrap().is_empty());
    // Past its grace period, the previous key cannot be rolled back to.
    assert!(matches!(
        store
            .plan_rollback(CRED, "late", START + 1, "operator", &claim("b", 60), START)
            .await,
        Err(StoreError::PastGracePeriod { .. })
    ));
}
