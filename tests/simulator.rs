//! The simulated provider over real HTTP: the API contract the daemon and the demo rely on,
//! management auth, and every injectable fault.

use keyrotd::clock::ManualClock;
use keyrotd::simulator::{Fault, Op, Simulator, HANG};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a test waits for something that must happen before it calls it a hang: far
/// shorter than anything it is told apart from (the simulator's minute-long [`HANG`] is cut
/// in half where that is the alternative; a held answer's latency is ten minutes), far longer
/// than a busy machine needs to answer on loopback.
const HANG_BOUND: Duration = Duration::from_secs(30);
const _: () = assert!(HANG_BOUND.as_secs() * 2 <= HANG.as_secs());

/// The client of a request that must be answered: its timeout only bounds a hang, and is
/// longer than [`HANG_BOUND`] so that a test's own bound (with its message) ends it first.
fn patient_client() -> Client {
    Client::builder().timeout(2 * HANG_BOUND).build().unwrap()
}

/// Polls `done` until it holds; panics with `what` after [`HANG_BOUND`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG_BOUND;
    while !done() {
        assert!(Instant::now() < deadline, "no {what} within {HANG_BOUND:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start() -> (Simulator, String) {
    let (sim, addr) = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    (sim, format!("http://{addr}"))
}

async fn check(base: &str, key: &str) -> reqwest::Response {
    Client::new()
        .get(format!("{base}/v1/key"))
        .bearer_auth(key)
        .send()
        .await
        .expect("check request")
}

async fn issue_raw(sim: &Simulator, base: &str, name: &str) -> reqwest::Response {
    Client::new()
        .post(format!("{base}/v1/keys"))
        .bearer_auth(sim.management_key())
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("issue request")
}

/// Issues a key and returns `(id, secret)`.
async fn issue(sim: &Simulator, base: &str, name: &str) -> (String, String) {
    let response = issue_raw(sim, base, name).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], name);
    let id = body["id"].as_str().unwrap().to_owned();
    let key = body["key"].as_str().unwrap().to_owned();
    assert!(id.starts_with("k_"), "{id}");
    assert!(key.starts_with("sim-") && key.len() == 4 + 32, "{key}");
    (id, key)
}

async fn revoke(sim: &Simulator, base: &str, id: &str) -> reqwest::Response {
    Client::new()
        .delete(format!("{base}/v1/keys/{id}"))
        .bearer_auth(sim.management_key())
        .send()
        .await
        .expect("revoke request")
}

async fn list(sim: &Simulator, base: &str) -> Value {
    let response = Client::new()
        .get(format!("{base}/v1/keys"))
        .bearer_auth(sim.management_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

async fn error_code(response: reqwest::Response) -> String {
    let body: Value = response.json().await.expect("JSON error body");
    body["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn issue_check_revoke_check() {
    let (sim, base) = start().await;
    let (id, key) = issue(&sim, &base, "keyrotd/demo/r1").await;
    assert!(sim.is_live(&key));

    let response = check(&base, &key).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["name"], "keyrotd/demo/r1");
    assert!(body["data"]["expires_at"].is_null());

    assert_eq!(
        revoke(&sim, &base, &id).await.status(),
        StatusCode::NO_CONTENT
    );
    let response = check(&base, &key).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_api_key");
    assert!(!sim.is_live(&key));

    let again = revoke(&sim, &base, &id).await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(again).await, "not_found");
}

#[tokio::test]
async fn list_shows_issued_names_even_duplicates() {
    let (sim, base) = start().await;
    let seeded = sim.add_key("sk-seeded-0001");
    let (a, _) = issue(&sim, &base, "keyrotd/c1/r1").await;
    let (b, _) = issue(&sim, &base, "keyrotd/c1/r1").await;
    assert_ne!(a, b);

    let body = list(&sim, &base).await;
    let data = body["data"].as_array().unwrap();
    let pairs: Vec<(&str, &str)> = data
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            (seeded.as_str(), "seeded"),
            (a.as_str(), "keyrotd/c1/r1"),
            (b.as_str(), "keyrotd/c1/r1")
        ]
    );
    for key in data {
        assert_eq!(key["disabled"], false);
        assert!(key["created_at"].as_i64().unwrap() > 0);
    }
    assert_eq!(sim.live_keys().len(), 3);
    assert!(!body.to_string().contains("sk-seeded"));
}

#[tokio::test]
async fn management_key_is_required_and_checked() {
    let (sim, base) = start().await;
    let (id, key) = issue(&sim, &base, "n").await;
    let client = Client::new();
    for auth in [None, Some("wrong"), Some(key.as_str())] {
        let requests = [
            client
                .post(format!("{base}/v1/keys"))
                .json(&json!({"name": "x"})),
            client.get(format!("{base}/v1/keys")),
            client.delete(format!("{base}/v1/keys/{id}")),
        ];
        for request in requests {
            let request = match auth {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "auth {auth:?}");
        }
    }
    assert_eq!(sim.live_keys(), vec![(id, "n".to_owned())]);

    let unknown = check(&base, "sim-not-a-key").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(unknown).await, "invalid_api_key");
    let missing = client.get(format!("{base}/v1/key")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn seeded_key_checks_valid() {
    let (sim, base) = start().await;
    let id = sim.add_key("sk-live-1234");
    let response = check(&base, "sk-live-1234").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["id"], id.as_str());
}

#[tokio::test]
async fn server_error_fault_answers_500_json_then_recovers() {
    let (sim, base) = start().await;
    sim.fail_next(Op::Issue, Fault::ServerError, 2);
    for _ in 0..2 {
        let response = issue_raw(&sim, &base, "n").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error_code(response).await, "internal_error");
    }
    assert!(sim.live_keys().is_empty(), "a failed issue creates nothing");
    issue(&sim, &base, "n").await;
    assert_eq!(sim.request_count(Op::Issue), 3);
}

#[tokio::test]
async fn timeout_fault_outlasts_the_client_timeout() {
    let (sim, base) = start().await;
    let key = "sk-live-timeout";
    sim.add_key(key);
    sim.fail_next(Op::Check, Fault::Timeout, 1);
    // A short timeout on purpose: the fault hangs for a minute, so this client gives up
    // first. Nothing is judged by how long that took.
    let impatient = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let result = impatient
        .get(format!("{base}/v1/key"))
        .bearer_auth(key)
        .send()
        .await;
    let error = result.expect_err("the request must time out");
    assert!(error.is_timeout(), "{error}");
    // The hanging request took the fault (the client may have given up before the
    // simulator read it): only then is the next request's answer the recovery.
    wait_until("hanging request at the simulator", || {
        sim.request_count(Op::Check) == 1
    })
    .await;

    let response = patient_client()
        .get(format!("{base}/v1/key"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(sim.request_count(Op::Check), 2);
}

#[tokio::test]
async fn shutdown_cuts_a_hanging_request_short() {
    let (sim, base) = start().await;
    sim.fail_next(Op::List, Fault::Timeout, 1);
    let management = sim.management_key();
    let pending = tokio::spawn(async move {
        Client::new()
            .get(format!("{base}/v1/keys"))
            .bearer_auth(management)
            .send()
            .await
            .map(|r| r.status())
    });
    wait_until("hanging request", || sim.request_count(Op::List) == 1).await;
    sim.shutdown().await;
    // Left alone the request would hang for HANG: ending within half of it, it was cut
    // short by the shutdown (which it follows by milliseconds).
    let outcome = tokio::time::timeout(HANG_BOUND, pending)
        .await
        .expect("the hanging request ends with the simulator")
        .unwrap();
    if let Ok(status) = outcome {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let after = Client::new()
        .get(format!("http://{}/v1/key", sim.addr()))
        .send()
        .await;
    assert!(after.is_err(), "no longer listening");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency_holds_every_answer_at_least_that_long_and_counts_it() {
    let (sim, base) = start().await;
    let key = "sk-live-latency";
    sim.add_key(key);
    let latency = Duration::from_millis(40);
    sim.set_latency(latency);
    // Staggered, so requests arrive while others are held. Each is judged only by a lower
    // bound ("not before its latency"), which a slow machine cannot break.
    let mut requests = Vec::new();
    for i in 0..12u64 {
        let base = base.clone();
        requests.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            let sent = Instant::now();
            let status = check(&base, key).await.status();
            (status, sent.elapsed())
        }));
    }
    for request in requests {
        let (status, took) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            took >= latency,
            "answered after {took:?}, before the added {latency:?}"
        );
    }
    let held = sim.held_answers();
    assert_eq!(held.count, 12);
    assert!(held.mean() >= latency, "{held:?}");
    assert!(held.max >= held.mean(), "{held:?}");

    // Zero turns it off and starts the counts over.
    sim.set_latency(Duration::ZERO);
    assert_eq!(check(&base, key).await.status(), StatusCode::OK);
    assert_eq!(sim.held_answers().count, 0);
    assert_eq!(sim.request_count(Op::Check), 13);
}

/// Sends a check with `key` in a task: (status, how long the answer took).
fn spawn_check(base: &str, key: &'static str) -> tokio::task::JoinHandle<(StatusCode, Duration)> {
    let base = base.to_owned();
    tokio::spawn(async move {
        let sent = Instant::now();
        let status = patient_client()
            .get(format!("{base}/v1/key"))
            .bearer_auth(key)
            .send()
            .await
            .expect("check request")
            .status();
        (status, sent.elapsed())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_hold_arriving_later_is_released_first() {
    // Told apart by events, not by timing: a far hold (ten minutes) can only be over early
    // if released early, and a near hold queued behind it is answered at all only if its
    // arrival re-armed the timer. Every duration is judged only from below.
    let (sim, base) = start().await;
    let key = "sk-live-order";
    sim.add_key(key);
    let far_latency = Duration::from_secs(600);
    sim.set_latency(far_latency);
    let far = spawn_check(&base, key);
    wait_until("far request", || sim.request_count(Op::Check) == 1).await;

    // The timer is armed for the far hold's deadline; a nearer one must re-arm it.
    let short_latency = Duration::from_millis(50);
    sim.set_latency(short_latency);
    let (status, short) = tokio::time::timeout(HANG_BOUND, spawn_check(&base, key))
        .await
        .expect("the nearer deadline waited behind the farther one")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(short >= short_latency, "answered after {short:?}");
    assert!(!far.is_finished(), "the far hold was released early");

    // Two holds queued in the order of their deadlines: once the first is released, the
    // timer must be armed for the second, not left for the far one.
    let long_latency = Duration::from_secs(2);
    sim.set_latency(long_latency);
    let long = spawn_check(&base, key);
    wait_until("long request", || sim.request_count(Op::Check) == 3).await;
    let longer_latency = Duration::from_secs(3);
    sim.set_latency(longer_latency);
    let longer = spawn_check(&base, key);
    for (request, latency) in [(long, long_latency), (longer, longer_latency)] {
        let (status, took) = tokio::time::timeout(HANG_BOUND, request)
            .await
            .expect("a hold waited behind the far one")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            took >= latency,
            "answered after {took:?}, before {latency:?}"
        );
    }
    assert!(!far.is_finished(), "the far hold was released early");

    sim.shutdown().await;
    let (status, _) = tokio::time::timeout(HANG_BOUND, far)
        .await
        .expect("the far hold ends with the simulator")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "released, then answered");
}

#[tokio::test]
async fn shutdown_releases_answers_held_for_latency() {
    let (sim, base) = start().await;
    sim.add_key("sk-live-held");
    sim.set_latency(Duration::from_secs(600));
    let pending = tokio::spawn(async move { check(&base, "sk-live-held").await.status() });
    wait_until("held request", || sim.request_count(Op::Check) == 1).await;
    sim.shutdown().await;
    // Ten minutes of latency against a bound of a few seconds' hang.
    let status = tokio::time::timeout(HANG_BOUND, pending)
        .await
        .expect("a held request ends with the simulator, not after the latency")
        .unwrap();
    assert_eq!(status, StatusCode::OK, "released, then answered");
    assert_eq!(sim.held_answers().count, 1);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let (sim, base) = start().await;
    let clone = sim.clone();
    drop(sim);
    assert_eq!(
        check(&base, "x").await.status(),
        StatusCode::UNAUTHORIZED,
        "a clone keeps it running"
    );
    drop(clone);
    let deadline = Instant::now() + HANG_BOUND;
    loop {
        let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let sent = tokio::time::timeout(HANG_BOUND, client.get(format!("{base}/v1/key")).send())
            .await
            .expect("a request hung instead of being answered or refused");
        if sent.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still serving {HANG_BOUND:?} after drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn garbage_fault_answers_200_html() {
    let (sim, base) = start().await;
    sim.fail_next(Op::List, Fault::Garbage, 1);
    let response = Client::new()
        .get(format!("{base}/v1/keys"))
        .bearer_auth(sim.management_key())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert!(text.contains("<html>"));
    assert!(list(&sim, &base).await["data"].is_array());
}

#[tokio::test]
async fn reject_new_key_issues_a_key_that_does_not_work() {
    let (sim, base) = start().await;
    sim.fail_next(Op::Issue, Fault::RejectNewKey, 1);
    let (id, refused) = issue(&sim, &base, "keyrotd/c/r1").await;
    let response = check(&base, &refused).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_api_key");
    assert!(!sim.is_live(&refused));
    assert!(sim.live_keys().is_empty());

    // It exists at the provider, so recovery can find and delete it.
    let listed = list(&sim, &base).await;
    assert_eq!(listed["data"][0]["id"], id.as_str());
    assert_eq!(
        revoke(&sim, &base, &id).await.status(),
        StatusCode::NO_CONTENT
    );

    let (_, good) = issue(&sim, &base, "keyrotd/c/r2").await;
    assert_eq!(check(&base, &good).await.status(), StatusCode::OK);
}

#[tokio::test]
#[should_panic(expected = "RejectNewKey")]
async fn reject_new_key_is_only_for_issue() {
    let (sim, _) = start().await;
    sim.fail_next(Op::Check, Fault::RejectNewKey, 1);
}

#[tokio::test]
async fn fail_every_fails_exactly_every_nth_request_and_zero_never() {
    let (sim, base) = start().await;
    sim.add_key("sk-live-rhythm");
    sim.fail_every(Op::Check, 3);
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(check(&base, "sk-live-rhythm").await.status());
    }
    let failed: Vec<usize> = (0..9)
        .filter(|&i| statuses[i] == StatusCode::INTERNAL_SERVER_ERROR)
        .collect();
    assert_eq!(failed, [2, 5, 8], "{statuses:?}");
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::INTERNAL_SERVER_ERROR));

    sim.fail_every(Op::Check, 1);
    for _ in 0..5 {
        let response = check(&base, "sk-live-rhythm").await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    sim.fail_every(Op::Check, 0);
    for _ in 0..20 {
        assert_eq!(
            check(&base, "sk-live-rhythm").await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(sim.request_count(Op::Check), 34);
    assert_eq!(sim.request_count(Op::Issue), 0);
}

#[tokio::test]
async fn keys_expire_after_the_configured_lifetime() {
    let clock = ManualClock::new(1_000_000);
    let (sim, addr) =
        Simulator::start_with_clock("127.0.0.1:0".parse().unwrap(), Arc::new(clock.clone()))
            .await
            .unwrap();
    let base = format!("http://{addr}");
    let forever = sim.add_key("sk-forever");
    sim.expire_after(Some(Duration::from_secs(60)));
    let (_, key) = issue(&sim, &base, "n").await;

    let body: Value = check(&base, &key).await.json().await.unwrap();
    assert_eq!(body["data"]["expires_at"], 1_000_060);
    clock.advance(59);
    assert!(sim.is_live(&key));
    clock.advance(1);
    assert!(!sim.is_live(&key));
    let response = check(&base, &key).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_api_key");
    assert_eq!(sim.live_keys(), vec![(forever, "seeded".to_owned())]);
}

#[tokio::test]
async fn unknown_endpoints_and_bad_bodies() {
    let (sim, base) = start().await;
    let client = Client::new();
    let response = client
        .get(format!("{base}/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = client
        .post(format!("{base}/v1/keys"))
        .bearer_auth(sim.management_key())
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(response).await, "invalid_request");
    assert!(sim.live_keys().is_empty());
}

#[tokio::test]
async fn a_live_key_lists_models_as_openai_does_and_a_revoked_one_gets_401() {
    let (sim, base) = start().await;
    let (id, key) = issue(&sim, &base, "keyrotd/demo/r1").await;
    let models = |key: String| {
        let url = format!("{base}/v1/models");
        async move {
            Client::new()
                .get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("models request")
        }
    };
    let response = models(key.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["object"], "model");
    let checks = sim.request_count(Op::Check);
    assert!(checks >= 1, "counted as the key's own use");

    revoke(&sim, &base, &id).await;
    let response = models(key).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(response).await, "invalid_api_key");
    let response = models(sim.management_key()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
