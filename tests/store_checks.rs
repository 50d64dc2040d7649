//! Check results written together (one batch, one transaction) must leave the store exactly
//! as the same results written one at a time: statuses, validity (only conclusive results
//! change it), expiry, balances, and one `check_status_changed` event per change. On every
//! backend.

mod common;

use common::backends::{on_both_backends, Scratch};
use futures::TryStreamExt;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::CheckStatus;
use keyrotd::store::{CheckRecord, CheckToRecord, CredentialSpec, NewKey, Store};
use secrecy::SecretString;
use std::sync::Arc;

const CREDENTIALS: usize = 60;
const START: i64 = 1_800_000_000;

on_both_backends!(
    results_written_together_equal_results_written_one_by_one,
    a_bad_record_in_a_batch_fails_only_its_own_caller,
    a_sweep_s_results_are_written_together_and_a_bad_one_fails_alone,
    keys_read_ahead_for_a_sweep_are_the_current_ones,
    visiting_the_states_hands_over_each_active_credential_with_its_own_key,
    a_result_comes_back_exactly_as_recorded_whatever_its_text,
);

async fn store_with_keys(scratch: &Scratch) -> (Arc<dyn Store>, Vec<i64>) {
    let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
    let store = scratch.open(Some(sealer)).await.unwrap();
    let specs: Vec<_> = (0..CREDENTIALS)
        .map(|i| CredentialSpec {
            name: format!("tenant-{i:03}"),
            provider: "sim".into(),
            provider_kind: "simulated".into(),
        })
        .collect();
    store.sync_credentials(&specs, START).await.unwrap();
    let mut versions = Vec::new();
    for spec in &specs {
        let key = NewKey {
            secret: SecretString::from(format!("sk-test-{}", spec.name)),
            expires_at: None,
            provider_key_id: None,
            rotation_id: None,
        };
        versions.push(
            store
                .import_key(&spec.name, key, "test", START)
                .await
                .unwrap()
                .id,
        );
    }
    (store, versions)
}

/// Round `round` of results: varied statuses, some with an expiry or balances.
fn record(round: i64, i: usize) -> CheckRecord {
    let status = match (round + i as i64) % 5 {
        0 => CheckStatus::Valid,
        1 => CheckStatus::Invalid,
        2 => CheckStatus::RateLimited,
        3 => CheckStatus::Exhausted,
        _ => CheckStatus::Unreachable,
    };
    CheckRecord {
        status,
        detail: format!("round {round} says {status}"),
        at: START + 100 * round,
        credits: if i.is_multiple_of(7) {
            vec![("usd".into(), (round * 10 + i as i64) as f64)]
        } else {
            Vec::new()
        },
        expires_at: i.is_multiple_of(4).then_some(START + 86_400 * (round + 1)),
    }
}

/// Everything a check result touches, per credential, in a comparable form.
async fn state(store: &dyn Store) -> Vec<String> {
    let snapshot = store.snapshot().await.unwrap();
    let mut out = Vec::new();
    for s in snapshot.credentials {
        let c = &s.credential;
        let current = s.current.as_ref().unwrap();
        let events: Vec<_> = store
            .events(&c.name)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "check_status_changed")
            .map(|e| format!("{}@{} v{:?}: {}", e.actor, e.at, e.version_id, e.detail))
            .collect();
        out.push(format!(
            "{} status={:?} valid={:?} at={:?} detail={:?} | version at={:?} status={:?} expires={:?} | credits={:?} | events={events:?}",
            c.name,
            c.check_status,
            c.valid,
            c.last_check_at,
            c.check_detail,
            current.last_check_at,
            current.last_check_status,
            current.expires_at,
            s.credits,
        ));
    }
    out.sort();
    out
}

async fn results_written_together_equal_results_written_one_by_one(scratch: Scratch) {
    let other = Scratch::new(scratch.backend()).await.unwrap();
    let (one, one_versions) = store_with_keys(&scratch).await;
    let (together, together_versions) = store_with_keys(&other).await;
    for round in 0..4 {
        for (i, version) in one_versions.iter().enumerate() {
            one.record_check(&format!("tenant-{i:03}"), *version, &record(round, i))
                .await
                .unwrap();
        }
        let before = together.generation().await.unwrap();
        let batch = together_versions
            .iter()
            .enumerate()
            .map(|(i, version)| CheckToRecord {
                credential: format!("tenant-{i:03}"),
                version_id: *version,
                check: record(round, i),
            })
            .collect();
        for result in together.record_checks(batch).await {
            result.unwrap();
        }
        let commits = together.generation().await.unwrap() - before;
        assert_eq!(
            commits, 1,
            "round {round}: {commits} commits for a batch of {CREDENTIALS} results: not one write"
        );
        assert_eq!(state(&*one).await, state(&*together).await, "round {round}");
    }
    // The states are not trivially equal: every kind of change happened.
    let text = state(&*together).await.join("\n");
    for needle in [
        "valid=Some(false)",
        "valid=Some(true)",
        "credits=[(\"usd\"",
        "unchecked -> ",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
}

async fn a_bad_record_in_a_batch_fails_only_its_own_caller(scratch: Scratch) {
    let (store, versions) = store_with_keys(&scratch).await;
    let results = futures::future::join_all((0..CREDENTIALS + 1).map(|i| {
        let store = store.clone();
        let version = versions.get(i).copied().unwrap_or(versions[0]);
        async move {
            // The last one names a credential the store does not know.
            let name = if i == CREDENTIALS {
                "no-such-credential".to_string()
            } else {
                format!("tenant-{i:03}")
            };
            (i, store.record_check(&name, version, &record(0, i)).await)
        }
    }))
    .await;
    for (i, result) in results {
        if i == CREDENTIALS {
            assert!(result.is_err(), "the unknown credential was accepted");
        } else {
            result.unwrap_or_else(|e| panic!("tenant-{i:03} failed with the bad record: {e}"));
        }
    }
    let snapshot = store.snapshot().await.unwrap();
    assert!(snapshot
        .credentials
        .iter()
        .all(|s| s.credential.last_check_at == Some(START)));
}

/// A sweep's results, written in one call: one transaction for the lot, each answered in
/// its place, and a bad one fails alone.
async fn a_sweep_s_results_are_written_together_and_a_bad_one_fails_alone(scratch: Scratch) {
    let (store, versions) = store_with_keys(&scratch).await;
    let checks = |round: i64, bad: Option<usize>| -> Vec<CheckToRecord> {
        (0..CREDENTIALS)
            .map(|i| CheckToRecord {
                credential: if Some(i) == bad {
                    "no-such-credential".to_string()
                } else {
                    format!("tenant-{i:03}")
                },
                version_id: versions[i],
                check: record(round, i),
            })
            .collect()
    };
    let last_checks = || async {
        let snapshot = store.snapshot().await.unwrap();
        snapshot
            .credentials
            .iter()
            .map(|s| (s.credential.name.clone(), s.credential.last_check_at))
            .collect::<Vec<_>>()
    };

    let generation = store.generation().await.unwrap();
    let results = store.record_checks(checks(0, None)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(
        store.generation().await.unwrap(),
        generation + 1,
        "one write"
    );
    assert!(last_checks().await.iter().all(|(_, at)| *at == Some(START)));

    let bad = 3;
    let results = store.record_checks(checks(1, Some(bad))).await;
    assert_eq!(results.len(), CREDENTIALS);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.is_err(), i == bad, "record {i}: {result:?}");
    }
    for (name, at) in last_checks().await {
        let expected = if name == format!("tenant-{bad:03}") {
            START
        } else {
            START + 100
        };
        assert_eq!(at, Some(expected), "{name}");
    }
    assert!(store.record_checks(Vec::new()).await.is_empty());
}

async fn keys_read_ahead_for_a_sweep_are_the_current_ones(scratch: Scratch) {
    use secrecy::ExposeSecret;
    let (store, _) = store_with_keys(&scratch).await;
    // A replacement imported for one credential waits as pending: the sweep checks the
    // current key, not the pending one.
    let replacement = NewKey {
        secret: SecretString::from("sk-test-replacement".to_string()),
        expires_at: None,
        provider_key_id: None,
        rotation_id: None,
    };
    store
        .import_key("tenant-005", replacement, "test", START + 10)
        .await
        .unwrap();
    let keys: Vec<_> = store.current_keys_sealed().try_collect().await.unwrap();
    assert_eq!(keys.len(), CREDENTIALS);
    for key in &keys {
        let (version, secret) = store
            .current_key(&key.version.credential)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(key.version, version);
        let opened = store.open_sealed(key).unwrap();
        assert_eq!(opened.expose_secret(), secret.expose_secret());
        let expected = format!("sk-test-{}", key.version.credential);
        assert_eq!(opened.expose_secret(), expected);
    }
}

/// `/metrics` reads the store through `visit_states`, one credential at a time: every active
/// credential, in name order, with its own current key (none for one never given a key, none
/// of a removed one), its balances, and the same generation and records as `snapshot`.
async fn visiting_the_states_hands_over_each_active_credential_with_its_own_key(scratch: Scratch) {
    let (store, versions) = store_with_keys(&scratch).await;
    for (i, version) in versions.iter().enumerate() {
        store
            .record_check(&format!("tenant-{i:03}"), *version, &record(0, i))
            .await
            .unwrap();
    }
    // One credential without a key, and one removed (the last), in a different order.
    let mut specs: Vec<CredentialSpec> = (0..CREDENTIALS - 1)
        .rev()
        .map(|i| CredentialSpec {
            name: format!("tenant-{i:03}"),
            provider: "sim".into(),
            provider_kind: "simulated".into(),
        })
        .collect();
    specs.push(CredentialSpec {
        name: "keyless".into(),
        provider: "sim".into(),
        provider_kind: "simulated".into(),
    });
    store.sync_credentials(&specs, START + 1).await.unwrap();

    let mut visited = Vec::new();
    let generation = store
        .visit_states(&mut |state| visited.push(state))
        .await
        .unwrap();
    let names: Vec<&str> = visited.iter().map(|s| s.credential.name.as_str()).collect();
    let mut expected: Vec<String> = (0..CREDENTIALS - 1)
        .map(|i| format!("tenant-{i:03}"))
        .chain(["keyless".to_string()])
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    for state in &visited {
        let name = &state.credential.name;
        if name == "keyless" {
            assert!(state.current.is_none(), "{name} has no key");
            assert!(state.credits.is_empty());
            continue;
        }
        let i: usize = name["tenant-".len()..].parse().unwrap();
        let current = state.current.as_ref().expect("a current key");
        assert_eq!(current.id, versions[i], "{name}'s own key");
        assert_eq!(&current.credential, name);
        assert_eq!(state.credential.check_status, Some(record(0, i).status));
        assert_eq!(state.credits, record(0, i).credits, "{name}'s balances");
    }

    let snapshot = store.snapshot().await.unwrap();
    assert_eq!(snapshot.generation, generation);
    let snapshot_names: Vec<&str> = snapshot
        .credentials
        .iter()
        .map(|s| s.credential.name.as_str())
        .collect();
    assert_eq!(snapshot_names, names);
}

async fn a_result_comes_back_exactly_as_recorded_whatever_its_text(scratch: Scratch) {
    // Results travel as one JSON text (SQLite) or as arrays (PostgreSQL) per batch: quotes, backslashes, control
    // characters and non-ASCII text in a provider's detail, and large times, must survive.
    let (store, versions) = store_with_keys(&scratch).await;
    let detail = "HTTP 401: {\"error\": \"bad \\\\ key\"}\n\tü → 🔑 '; DROP TABLE events; --";
    let at = 4_102_444_800_123; // far beyond 2^32
    let expires_at = Some(i64::MAX / 2);
    let record = CheckRecord {
        status: CheckStatus::Invalid,
        detail: detail.to_string(),
        at,
        credits: Vec::new(),
        expires_at,
    };
    store
        .record_check("tenant-001", versions[1], &record)
        .await
        .unwrap();
    let credential = store.credential("tenant-001").await.unwrap().unwrap();
    assert_eq!(credential.check_detail.as_deref(), Some(detail));
    assert_eq!(credential.last_check_at, Some(at));
    assert_eq!(credential.valid, Some(false));
    let version = store
        .versions("tenant-001")
        .await
        .unwrap()
        .into_iter()
        .find(|v| v.id == versions[1])
        .unwrap();
    assert_eq!(version.last_check_at, Some(at));
    assert_eq!(version.expires_at, expires_at);
    let event = store
        .events("tenant-001")
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "check_status_changed")
        .expect("the first result is a change of status");
    assert_eq!(event.detail, format!("unchecked -> invalid: {detail}"));
    assert_eq!(event.at, at);
    // Its neighbours are untouched.
    let other = store.credential("tenant-002").await.unwrap().unwrap();
    assert_eq!(other.last_check_at, None);
}
