//! A fake OpenRouter that keeps the truth: which keys it issued or was seeded with, which are
//! live, which were deleted and when, and what every consumer file held at each deletion.
//!
//! It answers as the vendor documents (providers.md): `GET /api/v1/key` with the key as
//! Bearer (200 `{data:{label, limit, ...}}`, 401 `{error:{code,message}}`), and with the
//! management key `POST /api/v1/keys` (201 `{data:{hash,name,...}, key}`), `GET
//! /api/v1/keys?offset=&include_disabled=` (pages of 100 under `data`) and `DELETE
//! /api/v1/keys/{hash}` (200, or 404 when already gone). Errors carry the vendor's
//! `{error:{code,message,metadata}}` body.
//!
//! It is a plain threaded HTTP/1.1 server (one thread per connection, `Connection: close`),
//! so it keeps answering whatever the test thread is blocked on, and the truth it records is
//! ordered by one mutex: a deletion and a poller's read are compared on one monotonic clock.

use super::consumer::Consumer;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::Digest;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One key the fake provider knows.
#[derive(Debug, Clone)]
pub struct FakeKey {
    pub hash: String,
    pub name: String,
    pub secret: String,
    pub created: Instant,
    /// When a `DELETE` removed it; `None` while live.
    pub deleted: Option<Instant>,
}

/// A deletion that took a key some consumer file still held at that moment.
#[derive(Debug, Clone)]
pub struct DeletedWhileHeld {
    pub hash: String,
    pub name: String,
    pub fingerprint: String,
    pub consumer: String,
}

#[derive(Default)]
struct Book {
    keys: Vec<FakeKey>,
    /// Issue requests that answer 500 before creating anything.
    failing_issues: usize,
    /// Upper bound of a random delay added to every answer (widens the race windows).
    max_delay: Duration,
    /// While set, checks of any key but the ones in `free` wait for [`FakeOpenRouter::release_checks`].
    hold_checks: bool,
    held_now: usize,
    held_total: usize,
    free: Vec<String>,
    consumers: Vec<Consumer>,
    deleted_while_held: Vec<DeletedWhileHeld>,
    next_id: u64,
}

struct Inner {
    book: Mutex<Book>,
    released: Condvar,
    management_key: String,
    base_url: String,
    rng: Mutex<StdRng>,
    stop: AtomicBool,
}

/// The fake provider; clones share it. Stops listening when the last handle is dropped.
#[derive(Clone)]
pub struct FakeOpenRouter {
    inner: Arc<Inner>,
    _guard: Arc<StopGuard>,
}

struct StopGuard {
    inner: Arc<Inner>,
    addr: std::net::SocketAddr,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        self.inner.released.notify_all();
    }
}

fn random_secret(rng: &mut StdRng) -> String {
    let mut bytes = [0u8; 24];
    rng.fill_bytes(&mut bytes);
    format!("sk-or-v1-fault-{}", hex::encode(bytes))
}

impl FakeOpenRouter {
    /// Listens on 127.0.0.1:0; `seed` drives its secrets and delays.
    pub fn start(seed: u64) -> FakeOpenRouter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake provider");
        let addr = listener.local_addr().unwrap();
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_f00d);
        let management_key = format!("sk-or-v1-mgmt-canary-{}", random_secret(&mut rng));
        let inner = Arc::new(Inner {
            book: Mutex::new(Book::default()),
            released: Condvar::new(),
            management_key,
            base_url: format!("http://{addr}/api/v1"),
            rng: Mutex::new(rng),
            stop: AtomicBool::new(false),
        });
        let serving = inner.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if serving.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let inner = serving.clone();
                std::thread::spawn(move || {
                    let _ = serve(&inner, stream);
                });
            }
        });
        FakeOpenRouter {
            _guard: Arc::new(StopGuard {
                inner: inner.clone(),
                addr,
            }),
            inner,
        }
    }

    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    pub fn management_key(&self) -> String {
        self.inner.management_key.clone()
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.inner.book.lock().unwrap()
    }

    /// Creates a live key as if someone made it in the vendor's dashboard (or an earlier
    /// installation issued it); returns its secret.
    pub fn add_key(&self, name: &str) -> String {
        let secret = random_secret(&mut self.inner.rng.lock().unwrap());
        self.book().insert(name, &secret);
        secret
    }

    /// The files consumers read; every deletion is checked against what they hold.
    pub fn watch_consumers(&self, consumers: Vec<Consumer>) {
        self.book().consumers = consumers;
    }

    /// The next `count` issue requests answer 500.
    pub fn fail_issues(&self, count: usize) {
        self.book().failing_issues += count;
    }

    pub fn set_max_delay(&self, delay: Duration) {
        self.book().max_delay = delay;
    }

    /// Holds every check of a key not in `free` until [`FakeOpenRouter::release_checks`].
    pub fn hold_checks(&self, free: &[&str]) {
        let mut book = self.book();
        book.hold_checks = true;
        book.free = free.iter().map(|s| s.to_string()).collect();
    }

    pub fn release_checks(&self) {
        self.book().hold_checks = false;
        self.inner.released.notify_all();
    }

    /// How many checks are waiting now, and how many waited in all.
    pub fn held(&self) -> (usize, usize) {
        let book = self.book();
        (book.held_now, book.held_total)
    }

    pub fn is_live(&self, secret: &str) -> bool {
        self.book()
            .keys
            .iter()
            .any(|k| k.secret == secret && k.deleted.is_none())
    }

    /// The key with this secret, live or deleted.
    pub fn key(&self, secret: &str) -> Option<FakeKey> {
        self.book()
            .keys
            .iter()
            .find(|k| k.secret == secret)
            .cloned()
    }

    pub fn keys(&self) -> Vec<FakeKey> {
        self.book().keys.clone()
    }

    pub fn live_keys(&self) -> Vec<FakeKey> {
        self.keys()
            .into_iter()
            .filter(|k| k.deleted.is_none())
            .collect()
    }

    pub fn deleted_while_held(&self) -> Vec<DeletedWhileHeld> {
        self.book().deleted_while_held.clone()
    }

    pub fn secrets(&self) -> Vec<String> {
        let mut all: Vec<String> = self.keys().into_iter().map(|k| k.secret).collect();
        all.push(self.management_key());
        all
    }
}

/// Sleeps a random time up to the configured bound, widening the windows between steps.
fn delay(inner: &Inner) {
    let max = inner.book.lock().unwrap().max_delay;
    if max > Duration::ZERO {
        let millis = inner
            .rng
            .lock()
            .unwrap()
            .gen_range(0..=max.as_millis() as u64);
        std::thread::sleep(Duration::from_millis(millis));
    }
}

impl Book {
    fn insert(&mut self, name: &str, secret: &str) -> FakeKey {
        self.next_id += 1;
        let key = FakeKey {
            // A hash as OpenRouter's are: 64 hex digits, unique per key.
            hash: hex::encode(sha2::Sha256::digest(format!("{}:{name}", self.next_id))),
            name: name.to_string(),
            secret: secret.to_string(),
            created: Instant::now(),
            deleted: None,
        };
        self.keys.push(key.clone());
        key
    }
}

struct Request {
    method: String,
    path: String,
    query: String,
    bearer: Option<String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target, String::new()),
    };
    let mut length = 0usize;
    let mut bearer = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            break;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "authorization" => {
                    bearer = value.strip_prefix("Bearer ").map(str::to_string);
                }
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(64 * 1024)];
    reader.read_exact(&mut body)?;
    Ok(Request {
        method,
        path,
        query,
        bearer,
        body,
    })
}

fn respond(stream: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let text = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    stream.flush()
}

fn error(code: u16, message: &str) -> (u16, Value) {
    (
        code,
        json!({"error": {"code": code, "message": message, "metadata": null}}),
    )
}

fn key_object(key: &FakeKey) -> Value {
    json!({
        "hash": key.hash,
        "name": key.name,
        "label": format!("sk-or-v1-...{}", &key.hash[..3]),
        "disabled": false,
        "limit": null,
        "limit_remaining": null,
        "limit_reset": null,
        "include_byok_in_limit": false,
        "usage": 0,
        "usage_daily": 0,
        "usage_weekly": 0,
        "usage_monthly": 0,
        "created_at": "2026-11-29T00:00:00Z",
        "updated_at": null,
        "expires_at": null,
    })
}

fn serve(inner: &Arc<Inner>, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let request = read_request(&mut stream)?;
    delay(inner);
    let (status, body) = answer(inner, &request);
    respond(&mut stream, status, &body)
}

fn answer(inner: &Arc<Inner>, request: &Request) -> (u16, Value) {
    let bearer = request.bearer.clone().unwrap_or_default();
    let managed = bearer == inner.management_key;
    let path = request.path.as_str();
    match (request.method.as_str(), path) {
        ("GET", "/api/v1/key") => check(inner, &bearer),
        (_, p) if p.starts_with("/api/v1/keys") && !managed => error(401, "Invalid management key"),
        ("POST", "/api/v1/keys") => issue(inner, &request.body),
        ("GET", "/api/v1/keys") => list(inner, &request.query),
        ("GET", p) if p.starts_with("/api/v1/keys/") => read(inner, &p["/api/v1/keys/".len()..]),
        ("DELETE", p) if p.starts_with("/api/v1/keys/") => {
            delete(inner, &p["/api/v1/keys/".len()..])
        }
        _ => error(404, "Not Found"),
    }
}

fn check(inner: &Arc<Inner>, bearer: &str) -> (u16, Value) {
    let mut book = inner.book.lock().unwrap();
    if book.hold_checks && !book.free.iter().any(|f| f == bearer) {
        book.held_now += 1;
        book.held_total += 1;
        while book.hold_checks && !inner.stop.load(Ordering::SeqCst) {
            book = inner.released.wait(book).unwrap();
        }
        book.held_now -= 1;
    }
    match book
        .keys
        .iter()
        .find(|k| k.secret == bearer && k.deleted.is_none())
    {
        Some(key) => (200, json!({ "data": key_object(key) })),
        None => error(401, "User not found."),
    }
}

fn issue(inner: &Arc<Inner>, body: &[u8]) -> (u16, Value) {
    let Some(name) = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
    else {
        return error(400, "name is required");
    };
    let secret = random_secret(&mut inner.rng.lock().unwrap());
    let mut book = inner.book.lock().unwrap();
    if book.failing_issues > 0 {
        book.failing_issues -= 1;
        return error(500, "Internal Server Error");
    }
    let key = book.insert(&name, &secret);
    (201, json!({ "data": key_object(&key), "key": secret }))
}

/// `GET /keys/{hash}`: the key object (the issuer reads the replaced key's cap with it).
fn read(inner: &Arc<Inner>, hash: &str) -> (u16, Value) {
    let book = inner.book.lock().unwrap();
    match book
        .keys
        .iter()
        .find(|k| k.hash == hash && k.deleted.is_none())
    {
        Some(key) => (200, json!({ "data": key_object(key) })),
        None => error(404, "Key not found"),
    }
}

fn list(inner: &Arc<Inner>, query: &str) -> (u16, Value) {
    let offset: usize = query
        .split('&')
        .find_map(|p| p.strip_prefix("offset="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let book = inner.book.lock().unwrap();
    let page: Vec<Value> = book
        .keys
        .iter()
        .filter(|k| k.deleted.is_none())
        .skip(offset)
        .take(100)
        .map(key_object)
        .collect();
    (200, json!({ "data": page }))
}

fn delete(inner: &Arc<Inner>, hash: &str) -> (u16, Value) {
    let mut book = inner.book.lock().unwrap();
    let now = Instant::now();
    let Some(index) = book
        .keys
        .iter()
        .position(|k| k.hash == hash && k.deleted.is_none())
    else {
        return error(404, "Key not found");
    };
    // What the consumers hold at this instant: the book's lock orders this against every
    // poller read, which takes the same lock to judge what it read.
    let key = book.keys[index].clone();
    for consumer in book.consumers.clone() {
        if consumer.read_key().as_deref() == Some(key.secret.as_str()) {
            book.deleted_while_held.push(DeletedWhileHeld {
                hash: key.hash.clone(),
                name: key.name.clone(),
                fingerprint: super::fp(&key.secret),
                consumer: consumer.describe(),
            });
        }
    }
    book.keys[index].deleted = Some(now);
    (200, json!({ "data": { "success": true } }))
}
