//! The client side of the relay benchmark: one HTTP/1.1 client (hyper, keep-alive) that
//! calls either the upstream directly or the relay, so both are measured with the same code
//! in the same run.
//!
//! - [`open_loop`]: requests started at a fixed rate whatever the answers do (a request late
//!   on its schedule is counted), each timed from its start to its last body byte;
//! - [`closed_loop`]: a fixed set of connections, each sending its next request as soon as
//!   the previous answer is read (the throughput);
//! - [`streams`]: SSE streams whose events carry their send time; the delay of each event is
//!   its receive time minus that, on the one process clock;
//! - [`hold_streams`]: many streams opened and kept open, for the relay's memory.

use super::upstream::COMPLETION;
use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The request body of every chat completion (small; buffered by the relay for retries).
const REQUEST: &str = r#"{"model":"bench","messages":[{"role":"user","content":"hi"}]}"#;

/// Where requests go: the upstream itself, or the relay's route in front of it.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) address: SocketAddr,
    /// The path in front of the upstream's `/v1/...`: empty for the upstream, the route's
    /// prefix without its `/v1` for the relay.
    pub(crate) prefix: String,
    /// The `Authorization` header: the relay client's token, or a dummy for the upstream.
    pub(crate) authorization: String,
}

impl Target {
    fn uri(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.address, self.prefix)
    }

    fn completion(&self) -> Request<Full<Bytes>> {
        Request::post(self.uri("/v1/chat/completions"))
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(REQUEST.as_bytes())))
            .unwrap()
    }

    fn get(&self, path: &str) -> Request<Full<Bytes>> {
        Request::get(self.uri(path))
            .header("authorization", &self.authorization)
            .header("accept", "text/event-stream")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }
}

/// Percentiles of a sample, in microseconds.
pub(crate) fn summary_us(mut samples: Vec<f64>) -> Value {
    if samples.is_empty() {
        return json!({ "count": 0 });
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    json!({
        "count": samples.len(),
        "mean_us": samples.iter().sum::<f64>() / samples.len() as f64,
        "p50_us": at(0.5),
        "p90_us": at(0.9),
        "p99_us": at(0.99),
        "p999_us": at(0.999),
        "max_us": samples[samples.len() - 1],
    })
}

/// Requests at `rate` per second for `count` requests, on a pooled keep-alive client;
/// returns each request's latency (µs) and how many failed or started over 1 ms late.
pub(crate) async fn open_loop(
    target: &Target,
    rate: f64,
    count: usize,
) -> anyhow::Result<(Vec<f64>, usize, usize)> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    // Warm the pool (and the relay's upstream pool) so connects are not measured.
    for _ in 0..50 {
        completion(&client, target).await?;
    }
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    let mut late = 0;
    // tokio's timer has a 1 ms resolution: each tick starts every request due by then.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while tasks.len() < count {
        ticks.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * rate) as usize + 1).min(count);
        while tasks.len() < due {
            let scheduled = tasks.len() as f64 / rate;
            if elapsed - scheduled > 1e-3 {
                late += 1;
            }
            let client = client.clone();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                completion(&client, &target).await?;
                anyhow::Ok(sent.elapsed().as_secs_f64() * 1e6)
            }));
        }
    }
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    for task in tasks {
        match task.await? {
            Ok(us) => latencies.push(us),
            Err(_) => failed += 1,
        }
    }
    Ok((latencies, failed, late))
}

async fn completion(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &Target,
) -> anyhow::Result<()> {
    let response = client.request(target.completion()).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() || body.len() != COMPLETION.len() {
        bail!("answer {status} of {} bytes", body.len());
    }
    Ok(())
}

/// A connection of its own (HTTP/1.1, keep-alive, `TCP_NODELAY`).
async fn connect(address: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `connections` connections sending requests back to back for `seconds`; returns the
/// answers per second and the failures.
pub(crate) async fn closed_loop(
    target: &Target,
    connections: usize,
    seconds: f64,
) -> anyhow::Result<(f64, usize)> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut sender = connect(target.address).await?;
        // One request first, so every connection (and the relay's upstream pool) is warm.
        sender.ready().await?;
        let response = sender.send_request(target.completion()).await?;
        response.into_body().collect().await?;
        senders.push(sender);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let target = target.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0usize, 0usize);
                while Instant::now() < deadline {
                    let answer = async {
                        sender.ready().await?;
                        let response = sender.send_request(target.completion()).await?;
                        let status = response.status();
                        response.into_body().collect().await?;
                        anyhow::Ok(status.is_success())
                    };
                    match answer.await {
                        Ok(true) => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for task in tasks {
        let (o, f) = task.await?;
        ok += o;
        failed += f;
    }
    Ok((ok as f64 / started.elapsed().as_secs_f64(), failed))
}

/// `streams` SSE streams at once, each of `chunks` events `interval_ms` apart; returns the
/// delay of every event (µs): its receive time minus its send time, both from `epoch`.
pub(crate) async fn streams(
    target: &Target,
    epoch: Instant,
    streams: usize,
    chunks: usize,
    interval_ms: u64,
) -> anyhow::Result<Vec<f64>> {
    let path = format!("/v1/stream?chunks={chunks}&interval_ms={interval_ms}");
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let target = target.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let mut sender = connect(target.address).await?;
                sender.ready().await?;
                let response = sender.send_request(target.get(&path)).await?;
                if !response.status().is_success() {
                    bail!("stream answered {}", response.status());
                }
                let mut body = response.into_body();
                let mut delays = Vec::with_capacity(chunks);
                let mut done = false;
                while let Some(frame) = body.frame().await {
                    let received = epoch.elapsed().as_nanos() as f64;
                    let Ok(data) = frame?.into_data() else {
                        continue;
                    };
                    // A lagging reader may get several events in one frame.
                    for line in std::str::from_utf8(&data)?.lines() {
                        if let Some(sent) = line
                            .strip_prefix("data: {\"t\":")
                            .and_then(|rest| rest.strip_suffix('}'))
                        {
                            delays.push((received - sent.parse::<f64>()?) / 1e3);
                        } else if line == "data: [DONE]" {
                            done = true;
                        }
                    }
                }
                if !done || delays.len() != chunks {
                    bail!("a stream ended after {} of {chunks} events", delays.len());
                }
                anyhow::Ok(delays)
            })
        })
        .collect();
    let mut delays = Vec::with_capacity(streams * chunks);
    for task in tasks {
        delays.extend(task.await??);
    }
    Ok(delays)
}

/// Streams held open at once: each has received its first event and waits for the rest.
pub(crate) struct HeldStreams {
    pub(crate) open: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Opens `count` `GET /v1/hold` streams, each on its own connection, and waits (up to
/// `deadline`) until every one has received its first event.
pub(crate) async fn hold_streams(
    target: &Target,
    count: usize,
    deadline: Duration,
) -> anyhow::Result<HeldStreams> {
    let open = Arc::new(AtomicUsize::new(0));
    // Connect in waves, so the listen backlog is not what is measured.
    let connecting = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks = (0..count)
        .map(|_| {
            let target = target.clone();
            let open = open.clone();
            let connecting = connecting.clone();
            tokio::spawn(async move {
                let permit = connecting.acquire_owned().await?;
                let mut sender = connect(target.address).await?;
                sender.ready().await?;
                let response = sender.send_request(target.get("/v1/hold")).await?;
                if !response.status().is_success() {
                    bail!("hold answered {}", response.status());
                }
                let mut body = response.into_body();
                body.frame().await.context("the stream ended at once")??;
                drop(permit);
                open.fetch_add(1, Ordering::SeqCst);
                while let Some(frame) = body.frame().await {
                    frame?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let held = HeldStreams { open, tasks };
    let until = Instant::now() + deadline;
    while held.open.load(Ordering::SeqCst) < count {
        if Instant::now() > until {
            bail!(
                "only {} of {count} streams open after {deadline:?}",
                held.open.load(Ordering::SeqCst)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(held)
}

impl HeldStreams {
    /// Waits for every stream to end (after the upstream released them); the failures.
    pub(crate) async fn finish(self) -> anyhow::Result<usize> {
        let mut failed = 0;
        for task in self.tasks {
            if task.await?.is_err() {
                failed += 1;
            }
        }
        Ok(failed)
    }
}
