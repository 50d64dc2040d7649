//! A simulated key-issuing provider on loopback.
//!
//! Why it exists: `keyrotd demo` must show a full rotation (issue, verify, deliver, promote,
//! revoke) with no network and no vendor account, and the integration and fault-injection
//! tests need a provider they control: one that runs inside the test process while the real
//! daemon binary talks to it over HTTP, and that can be told to fail in exactly the ways real
//! vendors fail (5xx, hangs, HTML error pages, a freshly issued key that does not work, or
//! works only after a delay).
//!
//! The API is a small OpenRouter-like JSON API with Bearer auth:
//!
//! | request                         | auth           | answer                                        |
//! |---------------------------------|----------------|-----------------------------------------------|
//! | `GET /v1/key`                   | the key itself | 200 `{"data":{id,name,expires_at}}` or 401    |
//! | `POST /v1/keys` `{"name":..,"expires_at"?:..}` | management key | 201 `{id,name,key,expires_at}` |
//! | `GET /v1/keys`                  | management key | 200 `{"data":[{id,name,disabled,created_at}]}` |
//! | `DELETE /v1/keys/{id}`          | management key | 204, or 404 `{"error":{"code":"not_found"}}`   |
//! | `GET /v1/models`                | the key itself | 200 OpenAI's model list, or 401 (`openai.rs`) |
//!
//! State lives in memory. Keys are stored only as SHA-256 digests, and logs carry key ids and
//! fingerprints, never key material. Management requests with a wrong key get 401 before any
//! fault is consumed; an injected fault is consumed by the next authorised request of its
//! operation, before that request does anything.
//!
//! Hosting it from a test while a child process talks to it: use a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`) or wait for the child with `tokio::process`,
//! so the simulator keeps answering while the test waits.

use crate::clock::{Clock, SystemClock};
use crate::listener::{self, ServeOptions};
use crate::model::{fingerprint, UnixTime};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rand::Rng;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod latency;
mod openai;
pub(crate) use latency::HeldAnswers;
use latency::Latency;

/// How long a [`Fault::Timeout`] hangs: longer than any client timeout the daemon uses.
/// Public so a test can tell a hang cut short from one that ran its course.
pub const HANG: Duration = Duration::from_secs(60);
/// Largest request body accepted (the only body is `{"name": ...}`).
const MAX_BODY: usize = 64 * 1024;
/// How long `shutdown` waits for open connections to finish.
const DRAIN: Duration = Duration::from_secs(2);

/// One of the four things the API does; faults and counters are kept per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `GET /v1/key`: is this key live? (Also `GET /v1/models`, the key's own use.)
    Check,
    /// `POST /v1/keys`: issue a new key.
    Issue,
    /// `GET /v1/keys`: list keys (orphan recovery).
    List,
    /// `DELETE /v1/keys/{id}`: revoke a key.
    Revoke,
}

impl Op {
    fn index(self) -> usize {
        match self {
            Op::Check => 0,
            Op::Issue => 1,
            Op::List => 2,
            Op::Revoke => 3,
        }
    }
}

/// A way for the simulated provider to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 with a JSON error body.
    ServerError,
    /// Hang for a minute (longer than any client timeout); cut short by shutdown.
    Timeout,
    /// 200 with an HTML page instead of JSON.
    Garbage,
    /// Issue only: the key is issued and returned, but checks of it get 401.
    RejectNewKey,
    /// Issue only: the key is created (and live), then the request hangs like
    /// [`Fault::Timeout`], so the client never learns it. The crash window between the
    /// provider's effect and the store write, for orphan-recovery tests.
    HangAfterCreate,
}

/// One issued or seeded key. The secret itself is not kept: the record is indexed by the
/// SHA-256 digest of the secret.
#[derive(Debug, Clone)]
struct KeyRecord {
    seq: u64,
    id: String,
    name: String,
    created_at: UnixTime,
    expires_at: Option<UnixTime>,
    /// Issued under [`Fault::RejectNewKey`]: it exists, but never works.
    refused: bool,
    /// It works from then on (see [`Simulator::activate_after`]).
    active_from: UnixTime,
}

impl KeyRecord {
    fn is_live(&self, now: UnixTime) -> bool {
        !self.refused && now >= self.active_from && self.expires_at.is_none_or(|at| now < at)
    }
}

#[derive(Debug, Default)]
struct Accounts {
    /// Keyed by the hex SHA-256 of the secret.
    keys: HashMap<String, KeyRecord>,
    next_seq: u64,
    /// Lifetime given to keys created from now on.
    ttl: Option<Duration>,
    /// How long keys created from now on take to start working.
    activation: Option<Duration>,
}

#[derive(Debug, Default)]
struct Faults {
    queued: [VecDeque<Fault>; 4],
    /// Every n-th unfaulted request for the op fails (0: never).
    every: [u64; 4],
    /// Unfaulted requests seen per op since `every` was set.
    seen: [u64; 4],
}

impl Faults {
    /// The queued fault first; otherwise a 500 on every n-th request. Deterministic on
    /// purpose: the demo and its test must see the same sequence every run.
    fn take(&mut self, op: Op) -> Option<Fault> {
        let i = op.index();
        if let Some(fault) = self.queued[i].pop_front() {
            return Some(fault);
        }
        if self.every[i] == 0 {
            return None;
        }
        self.seen[i] += 1;
        self.seen[i]
            .is_multiple_of(self.every[i])
            .then_some(Fault::ServerError)
    }
}

/// Everything the request handlers share.
struct Shared {
    management_key: String,
    clock: Arc<dyn Clock>,
    accounts: Mutex<Accounts>,
    faults: Mutex<Faults>,
    counts: [AtomicU64; 4],
    /// Added to every answer (see [`Simulator::set_latency`]).
    latency: Latency,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn accounts(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new key and returns its record.
    fn create_key(
        &self,
        secret: &str,
        name: &str,
        requested_expiry: Option<UnixTime>,
        refused: bool,
    ) -> KeyRecord {
        let now = self.clock.now();
        let mut accounts = self.accounts();
        accounts.next_seq += 1;
        let record = KeyRecord {
            seq: accounts.next_seq,
            id: format!("k_{}", random_hex(8)),
            name: name.to_owned(),
            created_at: now,
            expires_at: [
                accounts.ttl.map(|ttl| now + ttl.as_secs() as i64),
                requested_expiry,
            ]
            .into_iter()
            .flatten()
            .min(),
            refused,
            active_from: now
                + accounts
                    .activation
                    .map_or(0, |delay| delay.as_secs() as i64),
        };
        accounts.keys.insert(digest(secret), record.clone());
        record
    }

    fn lookup(&self, secret: &str) -> Option<KeyRecord> {
        self.accounts().keys.get(&digest(secret)).cloned()
    }

    /// Removes the key with this id; false if there is none.
    fn remove_by_id(&self, id: &str) -> bool {
        let mut accounts = self.accounts();
        let before = accounts.keys.len();
        accounts.keys.retain(|_, record| record.id != id);
        accounts.keys.len() != before
    }

    /// All keys, oldest first.
    fn records(&self) -> Vec<KeyRecord> {
        let mut records: Vec<KeyRecord> = self.accounts().keys.values().cloned().collect();
        records.sort_by_key(|record| record.seq);
        records
    }
}

/// Stops the server when the last [`Simulator`] handle is dropped.
struct StopGuard {
    stop: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// A handle on a running simulated provider. Cheap to clone; the server stops on
/// [`Simulator::shutdown`] or when the last handle is dropped.
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
    guard: Arc<StopGuard>,
    addr: SocketAddr,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `addr` (use `127.0.0.1:0`) and serves on the wall clock.
    pub async fn start(addr: SocketAddr) -> std::io::Result<(Simulator, SocketAddr)> {
        Self::start_with_clock(addr, Arc::new(SystemClock)).await
    }

    /// Like [`Simulator::start`], with an injectable clock for expiry and `created_at`.
    pub async fn start_with_clock(
        addr: SocketAddr,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<(Simulator, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            management_key: format!("sim-mgmt-{}", random_hex(16)),
            clock,
            accounts: Mutex::default(),
            faults: Mutex::default(),
            counts: Default::default(),
            latency: Latency::default(),
            stop: stop_rx.clone(),
        });
        let release_timer = latency::release_timer()?;
        tokio::spawn(latency::release_held(
            shared.clone(),
            release_timer,
            stop_rx.clone(),
        ));
        let server = tokio::spawn(serve(listener, shared.clone(), stop_rx));
        let guard = Arc::new(StopGuard {
            stop: stop_tx,
            server: Mutex::new(Some(server)),
        });
        tracing::info!(%addr, "simulated provider listening");
        Ok((
            Simulator {
                shared,
                guard,
                addr,
            },
            addr,
        ))
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base URL to configure a provider with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The key that authorises issue, list and revoke.
    pub fn management_key(&self) -> String {
        self.shared.management_key.clone()
    }

    /// Seeds a live key (named `seeded`) and returns its id.
    pub fn add_key(&self, secret: &str) -> String {
        let record = self.shared.create_key(secret, "seeded", None, false);
        tracing::info!(key_id = %record.id, fingerprint = %fingerprint_of(secret), "simulator: seeded key");
        record.id
    }

    /// Seeds a live key named `name` (as another keyrotd would have issued it) and returns
    /// its id.
    pub fn add_named_key(&self, secret: &str, name: &str) -> String {
        self.shared.create_key(secret, name, None, false).id
    }

    /// Whether a check of `secret` would succeed now.
    pub fn is_live(&self, secret: &str) -> bool {
        let now = self.shared.clock.now();
        self.shared
            .lookup(secret)
            .is_some_and(|record| record.is_live(now))
    }

    /// `(id, name)` of every key a check would accept now, oldest first.
    pub fn live_keys(&self) -> Vec<(String, String)> {
        let now = self.shared.clock.now();
        self.shared
            .records()
            .into_iter()
            .filter(|record| record.is_live(now))
            .map(|record| (record.id, record.name))
            .collect()
    }

    /// How many requests for `op` arrived (including refused and faulted ones).
    pub fn request_count(&self, op: Op) -> u64 {
        self.shared.counts[op.index()].load(Ordering::SeqCst)
    }

    /// The next `count` authorised requests for `op` fail with `fault` (queued after any
    /// faults already waiting).
    ///
    /// # Panics
    /// If `fault` is [`Fault::RejectNewKey`] and `op` is not [`Op::Issue`].
    pub fn fail_next(&self, op: Op, fault: Fault, count: usize) {
        assert!(
            !matches!(fault, Fault::RejectNewKey | Fault::HangAfterCreate) || op == Op::Issue,
            "Fault::{fault:?} only applies to Op::Issue"
        );
        let mut faults = self.shared.faults();
        faults.queued[op.index()].extend(std::iter::repeat_n(fault, count));
    }

    /// From now on every `n`-th request for `op` with no queued fault fails with a 500
    /// (the n-th, 2n-th, ...; `0` turns it off). The demo uses this for "one failing now and
    /// then": a fixed rhythm rather than a coin, so a run of failures never starves a key.
    pub fn fail_every(&self, op: Op, n: u64) {
        let mut faults = self.shared.faults();
        faults.every[op.index()] = n;
        faults.seen[op.index()] = 0;
    }

    /// Every request waits `latency` before it is answered, like a provider across the
    /// internet (the benchmarks' check sweep sets one). Zero by default. Starts the
    /// counts of [`Simulator::held_answers`] over.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency.set(latency);
    }

    /// How long requests were held, from their arrival to their release, since the latency
    /// was last set: what the simulator really added.
    pub fn held_answers(&self) -> HeldAnswers {
        self.shared.latency.held()
    }

    /// Keys issued or seeded from now on expire `ttl` after creation (`None`: never).
    pub fn expire_after(&self, ttl: Option<Duration>) {
        self.shared.accounts().ttl = ttl;
    }

    /// Keys issued or seeded from now on answer 401 ("key not active yet") until `delay`
    /// after their creation, like a vendor whose key store is eventually consistent
    /// (`None`: they work at once).
    pub fn activate_after(&self, delay: Option<Duration>) {
        self.shared.accounts().activation = delay;
    }

    /// Stops accepting, cuts hanging requests short and waits (bounded) for the server task.
    pub async fn shutdown(&self) {
        self.guard.stop.send_replace(true);
        let server = self
            .guard
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(server) = server {
            let _ = server.await;
        }
    }
}

/// Serves the API on the shared accept loop until the simulator stops.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&shared, request).await) }
    });
    let options = ServeOptions {
        name: "simulator",
        drain: DRAIN,
    };
    let stop = async move { stopped(&mut stop).await };
    listener::serve(listener, None, service, stop, options).await
}

/// A request the API understands.
#[derive(Debug, PartialEq)]
enum Route {
    Check,
    Issue,
    List,
    Revoke(String),
    Models,
}

impl Route {
    fn parse(method: &Method, path: &str) -> Option<Route> {
        match (method, path) {
            (&Method::GET, "/v1/key") => Some(Route::Check),
            (&Method::POST, "/v1/keys") => Some(Route::Issue),
            (&Method::GET, "/v1/keys") => Some(Route::List),
            (&Method::GET, "/v1/models") => Some(Route::Models),
            (&Method::DELETE, _) => path
                .strip_prefix("/v1/keys/")
                .filter(|id| !id.is_empty())
                .map(|id| Route::Revoke(id.to_owned())),
            _ => None,
        }
    }

    fn op(&self) -> Op {
        match self {
            Route::Check | Route::Models => Op::Check,
            Route::Issue => Op::Issue,
            Route::List => Op::List,
            Route::Revoke(_) => Op::Revoke,
        }
    }
}

type Reply = Response<Full<Bytes>>;

async fn handle(shared: &Shared, request: Request<Incoming>) -> Reply {
    let Some(route) = Route::parse(request.method(), request.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
    };
    let op = route.op();
    shared.counts[op.index()].fetch_add(1, Ordering::SeqCst);
    shared.latency.hold(&shared.stop).await;
    let bearer = bearer(&request);
    if op != Op::Check && bearer.as_deref() != Some(shared.management_key.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid management key is required",
        );
    }
    let fault = shared.faults().take(op);
    if let Some(reply) = misbehave(shared, op, fault).await {
        return reply;
    }
    if let (Route::Issue, Some(Fault::HangAfterCreate)) = (&route, fault) {
        // The key exists at the provider, but the caller never hears of it.
        let _ = issue(shared, request, false).await;
        hang(shared.stop.clone()).await;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "simulator shutting down",
        );
    }
    match route {
        Route::Check => check(shared, bearer.as_deref()),
        Route::Models => openai::models(shared, bearer.as_deref()),
        Route::Issue => issue(shared, request, fault == Some(Fault::RejectNewKey)).await,
        Route::List => list(shared),
        Route::Revoke(id) => revoke(shared, &id),
    }
}

/// The reply for a fault that replaces the normal answer, if any.
async fn misbehave(shared: &Shared, op: Op, fault: Option<Fault>) -> Option<Reply> {
    let fault = fault?;
    tracing::debug!(?op, ?fault, "simulator: injecting fault");
    match fault {
        Fault::ServerError => Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "simulated provider failure",
        )),
        Fault::Garbage => Some(garbage()),
        Fault::Timeout => {
            hang(shared.stop.clone()).await;
            Some(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "simulator shutting down",
            ))
        }
        Fault::RejectNewKey | Fault::HangAfterCreate => None,
    }
}

/// Sleeps for [`HANG`] or until the simulator stops.
async fn hang(stop: watch::Receiver<bool>) {
    sleep_until_or_stop(tokio::time::Instant::now() + HANG, stop).await;
}

/// Sleeps until `deadline` or until the simulator stops, whichever comes first.
async fn sleep_until_or_stop(deadline: tokio::time::Instant, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep_until(deadline) => {}
        _ = stopped(&mut stop) => {}
    }
}

/// Resolves once the simulator is told to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

fn check(shared: &Shared, secret: Option<&str>) -> Reply {
    let now = shared.clock.now();
    let record = secret.and_then(|secret| shared.lookup(secret));
    match record {
        Some(record) if record.is_live(now) => json_reply(
            StatusCode::OK,
            json!({"data": {"id": record.id, "name": record.name, "expires_at": record.expires_at}}),
        ),
        Some(record) => {
            tracing::debug!(key_id = %record.id, "simulator: check of a dead key");
            let why = if record.refused {
                "key refused"
            } else if now < record.active_from {
                "key not active yet"
            } else {
                "key expired"
            };
            error(StatusCode::UNAUTHORIZED, "invalid_api_key", why)
        }
        None => error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "unknown or revoked key",
        ),
    }
}

#[derive(Deserialize)]
struct IssueRequest {
    name: String,
    /// A provider-side expiry the issuer asks for (epoch seconds); the account's TTL, if
    /// shorter, still wins.
    #[serde(default)]
    expires_at: Option<UnixTime>,
}

async fn issue(shared: &Shared, request: Request<Incoming>, refused: bool) -> Reply {
    let Some(body) = read_body(request).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unreadable body",
        );
    };
    let Ok(IssueRequest { name, expires_at }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected {\"name\": string, \"expires_at\"?: epoch seconds}",
        );
    };
    let secret = format!("sim-{}", random_hex(16));
    let record = shared.create_key(&secret, &name, expires_at, refused);
    tracing::info!(key_id = %record.id, fingerprint = %fingerprint_of(&secret), refused, "simulator: issued key");
    json_reply(
        StatusCode::CREATED,
        json!({"id": record.id, "name": record.name, "key": secret, "expires_at": record.expires_at}),
    )
}

fn list(shared: &Shared) -> Reply {
    let data: Vec<Value> = shared
        .records()
        .into_iter()
        .map(|record| {
            json!({
                "id": record.id,
                "name": record.name,
                "disabled": false,
                "created_at": record.created_at,
                "expires_at": record.expires_at,
            })
        })
        .collect();
    json_reply(StatusCode::OK, json!({ "data": data }))
}

fn revoke(shared: &Shared, id: &str) -> Reply {
    if !shared.remove_by_id(id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no key with this id");
    }
    tracing::info!(key_id = %id, "simulator: revoked key");
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

async fn read_body(request: Request<Incoming>) -> Option<Bytes> {
    let limited = Limited::new(request.into_body(), MAX_BODY);
    limited.collect().await.ok().map(|body| body.to_bytes())
}

fn bearer<B>(request: &Request<B>) -> Option<String> {
    let value = request
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value
        .strip_prefix("Bearer ")
        .map(|token| token.trim().to_owned())
}

fn json_reply(status: StatusCode, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    json_reply(status, json!({"error": {"code": code, "message": message}}))
}

/// What a misconfigured proxy or captive portal answers: 200 and HTML.
fn garbage() -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(Full::new(Bytes::from_static(
            b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>\n",
        )))
        .expect("static response parts are valid")
}

fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn fingerprint_of(secret: &str) -> String {
    fingerprint(&SecretString::from(secret.to_owned()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(Route::parse(&Method::GET, "/v1/key"), Some(Route::Check));
        assert_eq!(Route::parse(&Method::POST, "/v1/keys"), Some(Route::Issue));
        assert_eq!(Route::parse(&Method::GET, "/v1/keys"), Some(Route::List));
        assert_eq!(
            Route::parse(&Method::DELETE, "/v1/keys/k_1"),
            Some(Route::Revoke("k_1".into()))
        );
        assert_eq!(Route::parse(&Method::DELETE, "/v1/keys/"), None);
        assert_eq!(Route::parse(&Method::PUT, "/v1/keys"), None);
    }

    #[test]
    fn expired_refused_and_not_yet_active_keys_are_not_live() {
        let mut record = KeyRecord {
            seq: 1,
            id: "k_1".into(),
            name: "n".into(),
            created_at: 100,
            expires_at: Some(200),
            refused: false,
            active_from: 100,
        };
        assert!(record.is_live(199));
        assert!(!record.is_live(200));
        record.expires_at = None;
        assert!(record.is_live(i64::MAX));
        record.active_from = 130;
        assert!(!record.is_live(129));
        assert!(record.is_live(130));
        record.refused = true;
        assert!(!record.is_live(i64::MAX));
    }

    #[test]
    fn queued_faults_come_before_the_rhythm_and_do_not_count_in_it() {
        let mut faults = Faults::default();
        faults.every[Op::List.index()] = 2;
        faults.queued[Op::List.index()].push_back(Fault::Garbage);
        assert_eq!(faults.take(Op::List), Some(Fault::Garbage));
        assert_eq!(faults.take(Op::List), None);
        assert_eq!(faults.take(Op::List), Some(Fault::ServerError));
        assert_eq!(faults.take(Op::List), None);
        assert_eq!(faults.take(Op::Check), None);
    }
}
