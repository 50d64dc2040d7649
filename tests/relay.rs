//! The relay end to end: the real `keyrotd run` with a `[relay]` route over a pool of two
//! credentials, in front of a fake upstream on loopback that answers as OpenAI does (429
//! with `Retry-After`, 401 with the key echoed in its error, 500, SSE streams), and a real
//! HTTP client. Run with a multi-threaded runtime: the fake upstream answers while the
//! test body waits.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use keyrotd::simulator::Simulator;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// A scripted upstream answer.
#[derive(Clone)]
enum Script {
    /// A status, an optional `Retry-After`, and a JSON error body.
    Status(u16, Option<u64>),
    /// The usual answer, after this long (a slow upstream).
    Delay(Duration),
}

/// Which keys the fake accepts.
type Accepts = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The fake upstream's state, shared with the test.
struct UpstreamState {
    accepts: Accepts,
    /// Answers to give a key's next chat requests, in order; then the default (200 JSON).
    scripts: Mutex<HashMap<String, VecDeque<Script>>>,
    /// Every request: (path, key it carried, its URI and every header).
    seen: Mutex<Vec<(String, Option<String>, String)>>,
    /// Lets a stream send its next chunk.
    release: Notify,
    /// A stream's client (the relay) went away before the stream ended.
    stream_cancelled: AtomicBool,
    chats: AtomicU64,
    /// Bytes of the last request body received.
    last_body: AtomicU64,
}

#[derive(Clone)]
struct Upstream {
    url: String,
    state: Arc<UpstreamState>,
}

impl Upstream {
    async fn start(accepts: Accepts) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let state = Arc::new(UpstreamState {
            accepts,
            scripts: Mutex::default(),
            seen: Mutex::default(),
            release: Notify::new(),
            stream_cancelled: AtomicBool::new(false),
            chats: AtomicU64::new(0),
            last_body: AtomicU64::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(answer(&state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { url, state }
    }

    fn script(&self, key: &str, scripts: &[Script]) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .extend(scripts.iter().cloned());
    }

    /// The keys chat requests carried, in order.
    fn chat_keys(&self) -> Vec<String> {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, _, _)| path != "/v1/models")
            .map(|(_, key, _)| key.clone().unwrap_or_default())
            .collect()
    }

    fn checks_of(&self, key: &str) -> usize {
        self.state
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(path, k, _)| path == "/v1/models" && k.as_deref() == Some(key))
            .count()
    }
}

/// A body fed through a channel: a chunk at a time, or an error that cuts the connection.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|r| r.map(Frame::data)))
    }
}

fn reply(status: u16, body: String) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(Ok(Bytes::from(body))).unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(ChannelBody(rx))
        .unwrap()
}

async fn answer(state: &Arc<UpstreamState>, request: Request<Incoming>) -> Response<ChannelBody> {
    let path = request.uri().path().to_string();
    let key = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| {
            let value = request.headers().get("x-goog-api-key")?;
            value.to_str().ok()
        })
        .map(str::to_string);
    let headers = format!("{} {:?}", request.uri(), request.headers());
    state
        .seen
        .lock()
        .unwrap()
        .push((path.clone(), key.clone(), headers));
    if let Ok(body) = request.into_body().collect().await {
        let length = body.to_bytes().len() as u64;
        state.last_body.store(length, Ordering::SeqCst);
    }
    let key = key.unwrap_or_default();
    if !(state.accepts)(&key) {
        // As OpenAI does: the error names the key it refused.
        return reply(
            401,
            format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {key}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
            ),
        );
    }
    if path == "/v1/models" {
        return reply(200, r#"{"object":"list","data":[]}"#.into());
    }
    state.chats.fetch_add(1, Ordering::SeqCst);
    let scripted = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&key)
        .and_then(VecDeque::pop_front);
    if let Some(Script::Delay(delay)) = scripted {
        tokio::time::sleep(delay).await;
    } else if let Some(Script::Status(status, retry_after)) = scripted {
        let mut response = reply(
            status,
            format!(r#"{{"error":{{"message":"scripted {status} for {key}","type":"error"}}}}"#),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().unwrap());
        }
        return response;
    }
    match path.as_str() {
        "/v1/stream" | "/v1/stream-cut" => {
            let (tx, rx) = mpsc::channel(1);
            let state = state.clone();
            let cut = path == "/v1/stream-cut";
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b"data: one\n\n"))).await;
                tokio::select! {
                    _ = state.release.notified() => {}
                    _ = tx.closed() => {
                        state.stream_cancelled.store(true, Ordering::SeqCst);
                        return;
                    }
                }
                if cut {
                    let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                    return;
                }
                let _ = tx.send(Ok(Bytes::from_static(b"data: two\n\n"))).await;
                // OpenAI's final chunk with `stream_options.include_usage`, split mid-line.
                let _ = tx
                    .send(Ok(Bytes::from_static(b"data: {\"choices\":[],\"usa")))
                    .await;
                let _ = tx
                    .send(Ok(Bytes::from_static(
                        b"ge\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
                    )))
                    .await;
                let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(ChannelBody(rx))
                .unwrap()
        }
        _ => reply(
            200,
            r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}"#.into(),
        ),
    }
}

/// A relay client token made by `keyrotd relay token new`, and its config lines.
fn new_token(env: &Env, name: &str) -> (String, String) {
    let out = env.run(&["relay", "token", "new", name]);
    assert_success(&out, "relay token new");
    let token = stdout(&out).trim().to_string();
    let lines = stderr(&out);
    let at = lines.find("[[relay.client]]").expect("config lines");
    (token, lines[at..].to_string())
}

/// The relay's address from the daemon's log.
fn relay_url(daemon: &Daemon) -> String {
    let log = daemon.wait_for_log("relay listening", HANG_TIMEOUT);
    let line = log.lines().find(|l| l.contains("relay listening")).unwrap();
    let at = line.find("relay_address=").unwrap() + "relay_address=".len();
    let address = line[at..].split_whitespace().next().unwrap();
    format!("http://{address}")
}

const PREFIX: &str = "/openai/v1";

/// A daemon with a route over credentials `k1` and `k2` (keys `key1`, `key2`) on the fake
/// upstream, clients `app` (allowed) and `other` (not); answers the relay's URL and app's
/// token.
struct Setup {
    _env: Env,
    daemon: Daemon,
    relay: String,
    token: String,
    other_token: String,
    keys: [String; 2],
}

impl Setup {
    /// Waits until the start-up checks of both keys are recorded, so that a key's next
    /// check is the one a test causes.
    fn wait_for_start_up_checks(&self) {
        self.daemon
            .wait_for_metrics("start-up checks recorded", |m| {
                ["k1", "k2"]
                    .iter()
                    .all(|c| sample(m, "keyrotd_key_valid", c) == Some(1.0))
            });
    }
}

/// An upstream that refuses every key in the returned list (a key revoked at the vendor).
async fn refusing_upstream() -> (Upstream, Arc<Mutex<Vec<String>>>) {
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let list = refused.clone();
    let upstream = Upstream::start(Arc::new(move |key| {
        !list.lock().unwrap().iter().any(|k| k == key)
    }))
    .await;
    (upstream, refused)
}

fn setup(upstream: &Upstream, route_extra: &str) -> Setup {
    setup_with(upstream, "", route_extra)
}

/// [`setup`] with extra `[relay]` lines.
fn setup_with(upstream: &Upstream, relay_extra: &str, route_extra: &str) -> Setup {
    let env = Env::new();
    let (token, app) = new_token(&env, "app");
    let (other_token, other) = new_token(&env, "other");
    let body = format!(
        r#"[checks]
interval = "1h"
jitter = 0.0

[[provider]]
name = "up"
kind = "openai_compatible"
base_url = "{url}"

[[credential]]
name = "k1"
provider = "up"

[[credential]]
name = "k2"
provider = "up"

[relay]
listen = "127.0.0.1:0"
refresh_interval = "200ms"
max_cooldown = "60s"
{relay_extra}
{app}
{other}
[[relay.route]]
prefix = "{PREFIX}"
credentials = ["k1", "k2"]
clients = ["app"]
{route_extra}
"#,
        url = upstream.url
    );
    env.write_config(&body);
    let keys = [canary(), canary()];
    env.import("k1", &keys[0], &[]);
    env.import("k2", &keys[1], &[]);
    let daemon = env.start();
    let relay = relay_url(&daemon);
    Setup {
        _env: env,
        daemon,
        relay,
        token,
        other_token,
        keys,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HANG_TIMEOUT)
        .build()
        .unwrap()
}

/// A slow upstream: a key whose answer has not begun within `first_byte_timeout` is given
/// up on and the request retried on the other key; an answer slow but within it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_waited_for_up_to_first_byte_timeout_then_failed_over() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup_with(&upstream, "first_byte_timeout = \"2s\"", "");
    let served = |metrics: &str, credential| {
        series(
            metrics,
            "keyrotd_relay_requests_total",
            &[
                ("route", PREFIX),
                ("credential", credential),
                ("code", "200"),
            ],
        )
    };
    let timeouts = |metrics: &str| {
        series(
            metrics,
            "keyrotd_relay_retries_total",
            &[("route", PREFIX), ("reason", "connect_error")],
        )
    };

    // Slow, but within the timeout: k1 (first in failover order) answers, nothing retried.
    upstream.script(&setup.keys[0], &[Script::Delay(Duration::from_millis(300))]);
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    let metrics = setup.daemon.metrics();
    assert_eq!(served(&metrics, "k1"), Some(1.0), "{metrics}");
    assert_eq!(timeouts(&metrics), Some(0.0));

    // Past it: k1's attempt is given up and k2 answers the same request.
    upstream.script(&setup.keys[0], &[Script::Delay(Duration::from_secs(60))]);
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    let metrics = setup.daemon.metrics();
    assert_eq!(served(&metrics, "k2"), Some(1.0), "{metrics}");
    assert_eq!(timeouts(&metrics), Some(1.0), "{metrics}");
    assert_no_secret_leaked(&setup, &[body]);
    setup.daemon.stop();
}

async fn chat(setup: &Setup, token: Option<&str>) -> (u16, String, reqwest::header::HeaderMap) {
    let mut request = client()
        .post(format!("{}{PREFIX}/chat/completions", setup.relay))
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[]}"#);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.text().await.unwrap(), headers)
}

fn accept_all() -> Accepts {
    Arc::new(|_| true)
}

/// Neither a key nor the client token reaches the client, the log or /metrics.
fn assert_no_secret_leaked(setup: &Setup, answers: &[String]) {
    let metrics = setup.daemon.metrics();
    let log = setup.daemon.log();
    for secret in setup.keys.iter().chain([&setup.token]) {
        for answer in answers {
            assert!(
                !answer.contains(secret.as_str()),
                "secret in an answer: {answer}"
            );
        }
        assert!(!log.contains(secret.as_str()), "secret in the log:\n{log}");
        assert!(!metrics.contains(secret.as_str()), "secret in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_valid_token_or_not_allowed_are_refused_with_no_upstream_call() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "");
    let (status, body, _) = chat(&setup, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""code":"invalid_api_key""#), "{body}");
    let (status, _, _) = chat(&setup, Some("krr-not-a-token")).await;
    assert_eq!(status, 401);
    let (status, body, _) = chat(&setup, Some(&setup.other_token)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(upstream.state.chats.load(Ordering::SeqCst), 0);

    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    let seen = upstream.state.seen.lock().unwrap().clone();
    let (_, key, headers) = seen.iter().rfind(|(p, _, _)| p != "/v1/models").unwrap();
    assert_eq!(
        key.as_deref(),
        Some(setup.keys[0].as_str()),
        "failover order: k1 first"
    );
    assert!(
        !headers.contains(&setup.token),
        "the client token went upstream: {headers}"
    );
    let metrics = setup.daemon.wait_for_metrics("token usage", |m| {
        series(
            m,
            "keyrotd_relay_tokens_total",
            &[
                ("route", PREFIX),
                ("credential", "k1"),
                ("kind", "completion"),
            ],
        ) == Some(5.0)
    });
    let requests = |credential, code| {
        series(
            &metrics,
            "keyrotd_relay_requests_total",
            &[
                ("route", PREFIX),
                ("credential", credential),
                ("code", code),
            ],
        )
    };
    assert_eq!(requests("none", "401"), Some(2.0), "{metrics}");
    assert_eq!(requests("none", "403"), Some(1.0));
    assert_eq!(requests("k1", "200"), Some(1.0));
    assert_eq!(
        series(
            &metrics,
            "keyrotd_relay_tokens_total",
            &[
                ("route", PREFIX),
                ("credential", "k1"),
                ("kind", "completion")
            ]
        ),
        Some(5.0)
    );
    assert_no_secret_leaked(&setup, &[body]);
    setup.daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_cools_the_key_down_and_fails_over_until_every_key_cools() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "");
    let [k1, k2] = &setup.keys;
    upstream.script(k1, &[Script::Status(429, Some(30))]);
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.chat_keys(), [k1.clone(), k2.clone()]);
    // k1 cools for its Retry-After: the next request goes to k2 at once.
    let (status, _, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200);
    assert_eq!(upstream.chat_keys().last(), Some(k2));

    upstream.script(k2, &[Script::Status(429, Some(20))]);
    let (status, body, headers) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "soonest recovery is k2's: {retry_after}"
    );
    let calls = upstream.state.chats.load(Ordering::SeqCst);
    let (status, _, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 429);
    assert_eq!(
        upstream.state.chats.load(Ordering::SeqCst),
        calls,
        "no call while all cool"
    );

    let metrics = setup.daemon.metrics();
    let cooldown = |credential| {
        series(
            &metrics,
            "keyrotd_relay_key_cooldown_seconds",
            &[("credential", credential)],
        )
        .unwrap()
    };
    assert!(cooldown("k1") > 20.0 && cooldown("k2") > 0.0, "{metrics}");
    let keys = |state| {
        series(
            &metrics,
            "keyrotd_relay_route_keys",
            &[("route", PREFIX), ("state", state)],
        )
    };
    assert_eq!(
        (keys("usable"), keys("cooling"), keys("out")),
        (Some(0.0), Some(2.0), Some(0.0)),
        "{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            "keyrotd_relay_retries_total",
            &[("route", PREFIX), ("reason", "rate_limited")]
        ),
        Some(2.0)
    );
    setup.daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_leaves_the_pool_is_checked_and_never_reaches_the_client() {
    let (upstream, refused) = refusing_upstream().await;
    let setup = setup(&upstream, "max_attempts = 1");
    let [k1, k2] = &setup.keys;
    // The start-up checks of both keys are done and recorded, so that k1's next check is
    // the one its refusal asks for.
    setup.wait_for_start_up_checks();
    // k1 is revoked at the provider. With one attempt per request, the refusal itself is
    // forwarded, with the key the vendor echoed masked.
    refused.lock().unwrap().push(k1.clone());
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Incorrect API key provided"), "{body}");
    assert!(
        !body.contains(k1.as_str()),
        "the key reached the client: {body}"
    );
    // Out of the pool: the next request goes to k2.
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.chat_keys().last(), Some(k2));
    let metrics = setup.daemon.metrics();
    let keys = |state| {
        series(
            &metrics,
            "keyrotd_relay_route_keys",
            &[("route", PREFIX), ("state", state)],
        )
    };
    // k1 counts as out until its immediate check is recorded invalid; then the pool
    // follows the store and drops it.
    assert_eq!(keys("usable"), Some(1.0), "{metrics}");
    assert!(
        keys("out") == Some(1.0) || sample(&metrics, "keyrotd_key_valid", "k1") == Some(0.0),
        "{metrics}"
    );
    // And the daemon checked k1 a second later instead of in an hour.
    wait_for(HANG_TIMEOUT, || (upstream.checks_of(k1) >= 2).then_some(()))
        .expect("an immediate check of the refused key");
    assert_no_secret_leaked(&setup, &[body]);
    setup.daemon.stop();
}

/// A key refused once (a vendor blip, or a key re-enabled at once) is back in the pool as
/// soon as the check the refusal asked for finds it valid: that check begins in a later
/// second than the refusal, so its result counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refused_once_is_back_in_the_pool_when_its_check_finds_it_valid() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "");
    let [k1, k2] = &setup.keys;
    setup.wait_for_start_up_checks();
    let checks_before = upstream.checks_of(k1);
    upstream.script(k1, &[Script::Status(401, None)]);
    // Failover: k1 first, refused, then k2.
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.chat_keys(), [k1.clone(), k2.clone()]);
    let keys = |metrics: &str, state| {
        series(
            metrics,
            "keyrotd_relay_route_keys",
            &[("route", PREFIX), ("state", state)],
        )
    };
    setup
        .daemon
        .wait_for_metrics("k1 checked and back in the pool", |m| {
            keys(m, "usable") == Some(2.0) && keys(m, "out") == Some(0.0)
        });
    assert_eq!(
        upstream.checks_of(k1),
        checks_before + 1,
        "one check for the refusal"
    );
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(upstream.chat_keys().last(), Some(k1), "k1 serves again");
    setup.daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_fails_over_and_a_500_is_retried() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "strategy = \"round_robin\"");
    let [k1, k2] = &setup.keys;
    upstream.script(k1, &[Script::Status(401, None)]);
    upstream.script(k2, &[Script::Status(500, None)]);
    // Whichever key goes first, the request ends on k2 after a 401 or a 500.
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = chat(&setup, Some(&setup.token)).await;
    assert_eq!(status, 200, "{body}");
    let metrics = setup.daemon.metrics();
    for reason in ["unauthorized", "server_error"] {
        assert_eq!(
            series(
                &metrics,
                "keyrotd_relay_retries_total",
                &[("route", PREFIX), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}: {metrics}"
        );
    }
    setup.daemon.stop();
}

/// Reads the next chunk of a streamed answer, bounded.
async fn next_chunk(response: &mut reqwest::Response) -> Result<Option<Bytes>, String> {
    match tokio::time::timeout(HANG_TIMEOUT, response.chunk()).await {
        Ok(Ok(chunk)) => Ok(chunk),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => panic!("no chunk within {HANG_TIMEOUT:?}"),
    }
}

async fn stream(setup: &Setup, path: &str) -> reqwest::Response {
    let response = client()
        .post(format!("{}{PREFIX}/{path}", setup.relay))
        .bearer_auth(&setup.token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_chunk_by_chunk_and_end_as_the_upstream_ends_them() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "");

    // The first chunk arrives while the upstream still holds the second.
    let mut response = stream(&setup, "stream").await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        next_chunk(&mut response).await.unwrap().unwrap(),
        "data: one\n\n"
    );
    upstream.state.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = next_chunk(&mut response).await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(
        rest,
        b"data: two\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n"
    );
    // The stream's usage is counted from its final chunk, with nothing held back.
    setup.daemon.wait_for_metrics("streamed token usage", |m| {
        ["prompt", "completion"]
            .iter()
            .zip([3.0, 2.0])
            .all(|(kind, count)| {
                series(
                    m,
                    "keyrotd_relay_tokens_total",
                    &[("route", PREFIX), ("credential", "k1"), ("kind", kind)],
                ) == Some(count)
            })
    });

    // An upstream that breaks off mid-stream: the client sees the break, not a clean end.
    let mut response = stream(&setup, "stream-cut").await;
    assert_eq!(
        next_chunk(&mut response).await.unwrap().unwrap(),
        "data: one\n\n"
    );
    upstream.state.release.notify_one();
    let mut ended = next_chunk(&mut response).await;
    while let Ok(Some(_)) = ended {
        ended = next_chunk(&mut response).await;
    }
    assert!(ended.is_err(), "a cut stream must not look complete");

    // A client that goes away cancels the upstream request.
    let mut response = stream(&setup, "stream").await;
    assert_eq!(
        next_chunk(&mut response).await.unwrap().unwrap(),
        "data: one\n\n"
    );
    assert!(!upstream.state.stream_cancelled.load(Ordering::SeqCst));
    drop(response);
    wait_for(HANG_TIMEOUT, || {
        upstream
            .state
            .stream_cancelled
            .load(Ordering::SeqCst)
            .then_some(())
    })
    .expect("the upstream sees the relay's request go away");
    setup.daemon.stop();
}

/// A relay route over one credential of the simulated provider (which can issue and
/// revoke), to an upstream that accepts the keys the simulator holds live; the credential
/// seeded with an imported key.
struct SimRoute {
    sim: Simulator,
    upstream: Upstream,
    env: Env,
    token: String,
    seeded: String,
}

async fn sim_route() -> SimRoute {
    let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let live = sim.clone();
    let upstream = Upstream::start(Arc::new(move |key| live.is_live(key))).await;
    let env = Env::new();
    let (token, app) = new_token(&env, "app");
    let management = env.path().join("mgmt");
    std::fs::write(&management, sim.management_key()).unwrap();
    env.write_config(&format!(
        r#"[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt:?} }}

[[credential]]
name = "{CREDENTIAL}"
provider = "sim"

[relay]
listen = "127.0.0.1:0"
refresh_interval = "100ms"

{app}
[[relay.route]]
prefix = "{PREFIX}"
upstream = "{url}"
credentials = ["{CREDENTIAL}"]
clients = ["app"]
"#,
        base = sim.base_url(),
        mgmt = management.display().to_string(),
        url = upstream.url,
    ));
    let seeded = canary();
    sim.add_key(&seeded);
    env.import(CREDENTIAL, &seeded, &[]);
    SimRoute {
        sim,
        upstream,
        env,
        token,
        seeded,
    }
}

/// `keyrotd key rotate` from the CLI beside the daemon while clients keep calling, then
/// the old key revoked at the provider: no client request fails, and the new key serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_by_the_cli_under_load_fails_no_request() {
    let SimRoute {
        sim,
        upstream,
        env,
        token,
        seeded,
    } = sim_route().await;
    // A key the provider issued (version 2), so that the provider can revoke it later.
    assert_success(&env.run(&["key", "rotate", CREDENTIAL]), "first key rotate");
    let daemon = env.start();
    let relay = relay_url(&daemon);

    let load = Load::start(&relay, &token, 4);
    load.serve_more(20);
    let old = upstream.chat_keys().last().cloned().unwrap();
    assert_ne!(old, seeded);
    let out = env.run(&["key", "rotate", CREDENTIAL]);
    assert_success(&out, "key rotate");
    // The relay picks the new key up from the store.
    wait_for(HANG_TIMEOUT, || {
        upstream
            .chat_keys()
            .last()
            .filter(|key| **key != old)
            .cloned()
    })
    .expect("the new key in use");
    // The old key is revoked at the provider while requests keep coming.
    let out = env.run(&["key", "revoke", CREDENTIAL, "--version", "2"]);
    assert_success(&out, "key revoke");
    assert!(!sim.is_live(&old), "{}", stdout(&out));
    load.serve_more(20);
    let failures = load.finish().await;
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\n{}",
        daemon.log()
    );
    let log = daemon.stop();
    for key in [&old, &seeded] {
        assert!(!log.contains(key.as_str()), "a key in the log");
    }
}

/// On a Unix socket, a client listed by uid needs no token; the socket file is the
/// relay's and is gone after a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_unix_socket_a_listed_peer_uid_is_a_client() {
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let socket = env.path().join("relay.sock");
    let uid = nix::unistd::getuid().as_raw();
    env.write_config(&format!(
        r#"[[provider]]
name = "up"
kind = "openai_compatible"
base_url = "{url}"

[[credential]]
name = "k1"
provider = "up"

[relay]
socket = "{socket}"

[[relay.client]]
name = "local"
peer_uids = [{uid}]

[[relay.client]]
name = "elsewhere"
peer_uids = [{other}]

[[relay.route]]
prefix = "{PREFIX}"
credentials = ["k1"]
clients = ["local"]
"#,
        url = upstream.url,
        socket = socket.display(),
        other = uid + 1,
    ));
    let key = canary();
    env.import("k1", &key, &[]);
    let daemon = env.start();
    daemon.wait_for_log("relay listening", HANG_TIMEOUT);

    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("{PREFIX}/chat/completions"))
        .header("host", "relay")
        .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains(&key));
    assert_eq!(upstream.chat_keys(), [key]);
    daemon.stop();
    assert!(!socket.exists(), "the socket is removed at stop");
}

/// `command` run through `prefix`, a command that execs its arguments (`sh -c '...; exec
/// "$0" "$@"'`, `setpriv ...`, `unshare ...`): same program, arguments and environment.
fn through(prefix: &[&str], command: &std::process::Command) -> std::process::Command {
    let mut wrapped = std::process::Command::new(prefix[0]);
    wrapped
        .args(&prefix[1..])
        .arg(command.get_program())
        .args(command.get_args());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(name, value),
            None => wrapped.env_remove(name),
        };
    }
    wrapped
}

/// Runs the program with this umask (tests may not use `unsafe`, so no `pre_exec`).
fn with_umask(umask: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("umask {umask}; exec \"$0\" \"$@\""),
    ]
}

/// A relay on the Unix socket `socket` in front of `upstream` (credential `k1`), with the
/// `[relay]` lines `relay_extra` and one client per `(name, peer uid)`, all allowed.
fn socket_config(
    upstream: &Upstream,
    socket: &Path,
    relay_extra: &str,
    clients: &[(&str, u32)],
) -> String {
    let mut text = format!(
        r#"[[provider]]
name = "up"
kind = "openai_compatible"
base_url = "{url}"

[[credential]]
name = "k1"
provider = "up"

[relay]
socket = "{socket}"
{relay_extra}
"#,
        url = upstream.url,
        socket = socket.display(),
    );
    for (name, uid) in clients {
        text.push_str(&format!(
            "\n[[relay.client]]\nname = \"{name}\"\npeer_uids = [{uid}]\n"
        ));
    }
    let names: Vec<String> = clients
        .iter()
        .map(|(name, _)| format!("{name:?}"))
        .collect();
    text.push_str(&format!(
        "\n[[relay.route]]\nprefix = \"{PREFIX}\"\ncredentials = [\"k1\"]\nclients = [{}]\n",
        names.join(", ")
    ));
    text
}

/// The permission bits of the relay's socket.
fn socket_mode(socket: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The socket gets `socket_mode` (default 0660) whatever the umask the daemon runs under:
/// wider than the unit's `UMask=0077` leaves it, narrower than a umask of 0 would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_has_its_configured_mode_whatever_the_umask() {
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let socket = env.path().join("relay.sock");
    let uid = nix::unistd::getuid().as_raw();
    env.write_config(&socket_config(&upstream, &socket, "", &[("local", uid)]));
    env.import("k1", &canary(), &[]);
    for (umask, relay_extra, expected) in [
        ("077", "", 0o660),
        ("000", "socket_mode = \"0600\"", 0o600),
        ("077", "socket_mode = \"0666\"", 0o666),
    ] {
        env.write_config(&socket_config(
            &upstream,
            &socket,
            relay_extra,
            &[("local", uid)],
        ));
        let prefix = with_umask(umask);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let daemon = Daemon::start(through(&prefix, &env.command()));
        daemon.wait_for_log("relay listening", HANG_TIMEOUT);
        assert_eq!(
            socket_mode(&socket),
            expected,
            "umask {umask}, {relay_extra:?}: mode {:o}",
            socket_mode(&socket)
        );
        daemon.stop();
    }
}

/// A POST through the relay's socket by `curl`, as `uid` with the supplementary `groups`;
/// answers curl's exit status and the HTTP status it printed ("000" when it could not
/// connect).
async fn curl_as(uid: u32, groups: Option<u32>, socket: &Path) -> (Option<i32>, String) {
    let mut command = tokio::process::Command::new("setpriv");
    command
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    match groups {
        Some(gid) => command.arg(format!("--groups={gid}")),
        None => command.arg("--clear-groups"),
    };
    let out = command
        .args([
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--unix-socket")
        .arg(socket)
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(format!("http://relay{PREFIX}/chat/completions"))
        .output()
        .await
        .expect("run setpriv curl");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

/// Whether the test can act as other users: root, with `setpriv` and `curl`. Otherwise it
/// says why (a failure under `KEYROTD_REQUIRE_TOOLS`).
fn can_switch_users() -> bool {
    if !is_root() {
        skip_or_fail("needs root to connect to the relay as other uids (setpriv)");
        return false;
    }
    tool_available("setpriv") && tool_available("curl")
}

/// A directory other users can reach a socket in (a temp dir is 0700).
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

const MEMBER: u32 = 4243;
const STRANGER: u32 = 4244;
const SOCKET_GID: u32 = 4242;

/// Another local user reaches the relay through the socket's group and mode: a member of
/// `socket_group` connects and is the client its uid names; a user outside the group cannot
/// even connect, though it is listed as a client too (the file's mode is what stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_connects_through_the_socket_group_and_is_known_by_uid() {
    if !can_switch_users() {
        return;
    }
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let dir = shared_dir();
    let socket = dir.path().join("relay.sock");
    env.write_config(&socket_config(
        &upstream,
        &socket,
        &format!("socket_group = \"{SOCKET_GID}\""),
        &[("member", MEMBER), ("stranger", STRANGER)],
    ));
    let key = canary();
    env.import("k1", &key, &[]);
    let prefix = with_umask("077");
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let daemon = Daemon::start(through(&prefix, &env.command()));
    daemon.wait_for_log("relay listening", HANG_TIMEOUT);
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&socket).unwrap();
        assert_eq!(meta.gid(), SOCKET_GID);
        assert_eq!(meta.mode() & 0o7777, 0o660);
    }

    assert_eq!(
        curl_as(MEMBER, Some(SOCKET_GID), &socket).await,
        (Some(0), "200".to_string())
    );
    assert_eq!(upstream.chat_keys(), std::slice::from_ref(&key));
    let (status, http) = curl_as(STRANGER, None, &socket).await;
    // curl's 7: could not connect (EACCES on the socket file).
    assert_eq!((status, http.as_str()), (Some(7), "000"));
    assert_eq!(
        upstream.chat_keys(),
        [key],
        "the stranger reached no upstream"
    );
    daemon.stop();
}

/// A `socket_group` the daemon may not hand its socket to stops it at start-up with the
/// reason and what to do instead, and leaves no socket behind. As root, the daemon runs
/// without CAP_CHOWN, which is what the shipped unit withholds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_group_the_daemon_is_not_in_stops_it_with_the_reason() {
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let socket = env.path().join("relay.sock");
    let uid = nix::unistd::getuid().as_raw();
    let mine: Vec<u32> = nix::unistd::getgroups()
        .unwrap()
        .iter()
        .map(|g| g.as_raw())
        .chain([nix::unistd::getegid().as_raw()])
        .collect();
    let foreign = (SOCKET_GID..).find(|gid| !mine.contains(gid)).unwrap();
    env.write_config(&socket_config(
        &upstream,
        &socket,
        &format!("socket_group = \"{foreign}\""),
        &[("local", uid)],
    ));
    env.import("k1", &canary(), &[]);
    let mut command = env.command();
    if is_root() {
        if !tool_available("setpriv") {
            return;
        }
        command = through(
            &["setpriv", "--inh-caps=-chown", "--bounding-set=-chown"],
            &command,
        );
    }
    let out = run_command(command.arg("run"), "");
    assert!(!out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    for needle in [
        &format!(
            "relay: cannot give the socket {} to group \"{foreign}\"",
            socket.display()
        ),
        "a process may only hand a file to a group it is a member of",
        "leave `socket_group` unset",
    ] {
        assert!(log.contains(needle), "{needle}: {log}");
    }
    assert!(!socket.exists(), "the socket is removed");
}

/// systemd's `PrivateUsers=yes` maps only root and the service's user: any other user's
/// connection arrives as the overflow uid. A daemon in such a user namespace warns about
/// the peer uids it cannot see, and a listed user is indeed not its client (a 401, not the
/// key). Root only (a user namespace mapping root alone, and `setpriv`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_user_namespace_without_the_peer_uid_the_daemon_warns_and_refuses_it() {
    if !can_switch_users() || !tool_available("unshare") {
        return;
    }
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let dir = shared_dir();
    let socket = dir.path().join("relay.sock");
    env.write_config(&socket_config(
        &upstream,
        &socket,
        "socket_mode = \"0666\"",
        &[("member", MEMBER)],
    ));
    env.import("k1", &canary(), &[]);
    let daemon = Daemon::start(through(
        &["unshare", "--user", "--map-root-user"],
        &env.command(),
    ));
    let log = daemon.wait_for_log("relay listening", HANG_TIMEOUT);
    assert!(
        log.contains("this peer uid is not mapped in the daemon's user namespace")
            && log.contains(&format!("uid={MEMBER}")),
        "{log}"
    );
    assert_eq!(
        curl_as(MEMBER, None, &socket).await,
        (Some(0), "401".to_string())
    );
    assert!(upstream.chat_keys().is_empty());
    daemon.stop();
}

/// `check-config` warns (and passes) when the socket's mode lets every local user connect.
#[test]
fn check_config_warns_about_a_socket_every_user_may_connect_to() {
    let env = Env::new();
    let socket = env.path().join("relay.sock");
    for (mode, warned) in [("0666", true), ("0660", false)] {
        env.write_config(&format!(
            "[relay]\nsocket = \"{}\"\nsocket_mode = \"{mode}\"\n\n[[relay.client]]\nname = \"app\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
            socket.display()
        ));
        let out = env.run(&["check-config"]);
        assert_success(&out, "check-config");
        let warning = format!(
            "warning: relay `socket_mode` 0666 lets every local user connect to {}",
            socket.display()
        );
        assert_eq!(
            stderr(&out).contains(&warning),
            warned,
            "{mode}: {}",
            stderr(&out)
        );
    }
}

/// `check-config` refuses a relay on a non-loopback address (it has no TLS), with the
/// position, and `relay token new` refuses a name that could not be a client's.
#[test]
fn check_config_refuses_a_relay_off_loopback_and_token_names_are_checked() {
    let env = Env::new();
    env.write_config(
        "[relay]\nlisten = \"0.0.0.0:9878\"\n\n[[relay.client]]\nname = \"app\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
    );
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(":12:10: `listen` 0.0.0.0:9878 is not a loopback address"),
        "{}",
        stderr(&out)
    );
    let out = env.run(&["relay", "token", "new", "no spaces"]);
    assert!(!out.status.success());
    assert!(
        stdout(&out).is_empty(),
        "no token printed for a refused name"
    );
}

/// A Gemini route: the SDK's `?key=` parameter carries the relay token, which never goes
/// upstream; the pool's key goes in `x-goog-api-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_route_takes_the_token_from_the_key_parameter_and_sends_the_key_in_its_header() {
    let upstream = Upstream::start(accept_all()).await;
    let env = Env::new();
    let (token, app) = new_token(&env, "app");
    env.write_config(&format!(
        r#"[[provider]]
name = "g"
kind = "gemini"
base_url = "{url}"

[[credential]]
name = "g1"
provider = "g"

[relay]
listen = "127.0.0.1:0"

{app}
[[relay.route]]
prefix = "/gemini/v1beta"
credentials = ["g1"]
clients = ["app"]
"#,
        url = upstream.url,
    ));
    let key = canary();
    env.import("g1", &key, &[]);
    let daemon = env.start();
    let relay = relay_url(&daemon);
    let response = client()
        .post(format!(
            "{relay}/gemini/v1beta/models/m:generateContent?key={token}&alt=json"
        ))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.state.seen.lock().unwrap().clone();
    let (path, sent_key, request) = seen
        .iter()
        .rfind(|(p, _, _)| p.ends_with(":generateContent"))
        .expect("the request upstream");
    assert_eq!(path, "/v1/models/m:generateContent");
    assert_eq!(sent_key.as_deref(), Some(key.as_str()));
    assert!(request.contains("?alt=json "), "{request}");
    assert!(
        !request.contains(&token),
        "the relay token went upstream: {request}"
    );
    daemon.stop();
}

/// A body larger than the retry buffer streams through once: a 500 is forwarded, not
/// retried, and the upstream got the whole body. A small body is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_retry_buffer_is_sent_once_without_retry() {
    let upstream = Upstream::start(accept_all()).await;
    let setup = setup(&upstream, "");
    let config = std::fs::read_to_string(&setup._env.config).unwrap();
    let config = config.replace("[relay]\n", "[relay]\nmax_retry_body_bytes = 1024\n");
    setup.daemon.stop();
    write_atomically(&setup._env.config, &config);
    let daemon = setup._env.start();
    let relay = relay_url(&daemon);
    let [k1, _] = &setup.keys;
    upstream.script(k1, &[Script::Status(500, None)]);
    let big = "x".repeat(4096);
    let response = client()
        .post(format!("{relay}{PREFIX}/chat/completions"))
        .bearer_auth(&setup.token)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(
        upstream.state.chats.load(Ordering::SeqCst),
        1,
        "not retried"
    );
    assert_eq!(upstream.state.last_body.load(Ordering::SeqCst), 4096);
    upstream.script(k1, &[Script::Status(500, None)]);
    let response = client()
        .post(format!("{relay}{PREFIX}/chat/completions"))
        .bearer_auth(&setup.token)
        .body("x".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "a body that fits is retried");
    assert_eq!(upstream.state.last_body.load(Ordering::SeqCst), 1024);
    daemon.stop();
}

/// Clients that post chat requests through the relay back to back until stopped, counting
/// what was served and keeping every failure (status and body, or the transport error).
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(relay: &str, token: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..clients)
            .map(|_| {
                let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
                let (url, token) = (
                    format!("{relay}{PREFIX}/chat/completions"),
                    token.to_string(),
                );
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::SeqCst) {
                        match client
                            .post(&url)
                            .bearer_auth(&token)
                            .body("{}")
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == StatusCode::OK => {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(r) => {
                                let failure = format!(
                                    "{}: {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                );
                                failures.lock().unwrap().push(failure);
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            served,
            failures,
            tasks,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until `more` requests past the count now were served.
    fn serve_more(&self, more: u64) {
        let until = self.served() + more;
        wait_for(HANG_TIMEOUT, || (self.served() >= until).then_some(()))
            .expect("requests served through the relay");
    }

    /// Stops the clients and answers the failures they saw.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        failures
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_at_the_provider_under_load_fails_no_request_while_another_key_is_healthy() {
    let (upstream, refused) = refusing_upstream().await;
    // Round robin, so that k1 carries half the load when it is revoked.
    let setup = setup(&upstream, "strategy = \"round_robin\"");
    let [k1, k2] = &setup.keys;
    setup.wait_for_start_up_checks();
    let load = Load::start(&setup.relay, &setup.token, 4);
    load.serve_more(40);
    assert!(
        upstream.chat_keys().contains(k1),
        "k1 served before it was revoked"
    );
    refused.lock().unwrap().push(k1.clone());
    load.serve_more(100);
    // The relay asked for a check of k1; once it is recorded invalid, the pool follows the
    // store and holds k2 alone.
    let metrics = setup
        .daemon
        .wait_for_metrics("k1 found invalid and out of the pool", |m| {
            let keys = |state| {
                series(
                    m,
                    "keyrotd_relay_route_keys",
                    &[("route", PREFIX), ("state", state)],
                )
            };
            sample(m, "keyrotd_key_valid", "k1") == Some(0.0)
                && keys("usable") == Some(1.0)
                && keys("out") == Some(0.0)
        });
    let settled_from = upstream.chat_keys().len();
    load.serve_more(50);
    let failures = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests after k1 was revoked: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(5)],
        setup.daemon.log()
    );
    // Only requests already in flight when k1 left may still have reached it.
    let settled = &upstream.chat_keys()[settled_from + 10..];
    assert!(
        settled.len() >= 40 && settled.iter().all(|k| k == k2),
        "k1 still in the pool: {} of {} attempts",
        settled.iter().filter(|k| *k == k1).count(),
        settled.len()
    );
    assert!(
        series(
            &metrics,
            "keyrotd_relay_retries_total",
            &[("route", PREFIX), ("reason", "unauthorized")]
        )
        .is_some_and(|n| n >= 1.0),
        "the load never met the revoked key: {metrics}"
    );
    assert_no_secret_leaked(&setup, &[]);
    setup.daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_every_second_under_load_fails_no_request() {
    let SimRoute {
        sim,
        upstream,
        env,
        token,
        seeded,
    } = sim_route().await;
    let daemon = env.start();
    let relay = relay_url(&daemon);
    let load = Load::start(&relay, &token, 4);
    load.serve_more(20);

    // Every second: a new key through `keyrotd key rotate`, and as soon as the relay uses
    // it, the key before it revoked at the provider, so nothing can lean on an old key.
    const ROTATIONS: i64 = 5;
    let mut pace = tokio::time::interval(std::time::Duration::from_secs(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut old = seeded.clone();
    for version in 2..2 + ROTATIONS {
        pace.tick().await;
        let out = env.run(&["key", "rotate", CREDENTIAL]);
        assert_success(&out, "key rotate");
        let new = wait_for(HANG_TIMEOUT, || {
            upstream
                .chat_keys()
                .last()
                .filter(|key| **key != old)
                .cloned()
        })
        .expect("the new key in use");
        if version > 2 {
            // The imported key (version 1) is not the simulator's to revoke by id.
            let previous = (version - 1).to_string();
            let out = env.run(&["key", "revoke", CREDENTIAL, "--version", &previous]);
            assert_success(&out, "key revoke");
            assert!(!sim.is_live(&old), "{}", stdout(&out));
        }
        old = new;
    }
    load.serve_more(20);
    let served = load.served();
    let failures = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failures.len(),
        served + failures.len() as u64,
        &failures[..failures.len().min(5)],
        daemon.log()
    );
    let distinct: std::collections::HashSet<String> = upstream.chat_keys().into_iter().collect();
    assert!(
        distinct.len() as i64 > ROTATIONS,
        "every rotated key served: {} keys",
        distinct.len()
    );
    let log = daemon.stop();
    for key in &distinct {
        assert!(!log.contains(key.as_str()), "a key in the log");
    }
}
