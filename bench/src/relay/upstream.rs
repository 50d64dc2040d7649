//! The local upstream the relay benchmark forwards to: a minimal hyper HTTP/1.1 server on
//! loopback, in the harness's own process, so that an SSE chunk's send time and its receive
//! time are read from one clock.
//!
//! - `POST /v1/chat/completions`: a small JSON answer, the shape of an OpenAI chat completion;
//! - `GET /v1/stream?chunks=N&interval_ms=M`: N server-sent events, M ms apart, each carrying
//!   the nanoseconds since [`Upstream::epoch`] at which it was handed to hyper;
//! - `GET /v1/hold`: one event at once, then nothing until [`Upstream::release`] (the open
//!   streams of the memory measurement).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What a chat completion answers: small, as the throughput target asks, with the `usage`
/// the relay reads for its token counts.
pub(crate) const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1764460800,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8}}"#;

type Body = BoxBody<Bytes, Infallible>;

/// The running upstream; stopped when dropped.
pub(crate) struct Upstream {
    pub(crate) address: SocketAddr,
    /// The origin of the timestamps in streamed events.
    pub(crate) epoch: Instant,
    release: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Upstream {
    pub(crate) async fn start() -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let epoch = Instant::now();
        let (release, released) = watch::channel(false);
        let shared = Arc::new(Shared { epoch, released });
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // EMFILE and the like: the run reports the failed requests.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.answer(request)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream {
            address,
            epoch,
            release,
            accept,
        })
    }

    /// Ends every `/v1/hold` stream.
    pub(crate) fn release(&self) {
        let _ = self.release.send(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Shared {
    epoch: Instant,
    released: watch::Receiver<bool>,
}

impl Shared {
    fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        match request.uri().path() {
            "/v1/chat/completions" => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(COMPLETION.as_bytes())).boxed())
                .unwrap(),
            "/v1/stream" => {
                let query = request.uri().query().unwrap_or("");
                let chunks = query_number(query, "chunks").unwrap_or(10);
                let interval =
                    Duration::from_millis(query_number(query, "interval_ms").unwrap_or(10));
                let (sender, receiver) = mpsc::channel(4);
                let epoch = self.epoch;
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(interval);
                    for _ in 0..chunks {
                        ticks.tick().await;
                        let sent = epoch.elapsed().as_nanos();
                        let event = format!("data: {{\"t\":{sent}}}\n\n");
                        if sender.send(Bytes::from(event)).await.is_err() {
                            return;
                        }
                    }
                    let _ = sender.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                });
                event_stream(receiver)
            }
            "/v1/hold" => {
                let (sender, receiver) = mpsc::channel(1);
                let mut released = self.released.clone();
                tokio::spawn(async move {
                    if sender
                        .send(Bytes::from_static(b"data: {}\n\n"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = released.wait_for(|released| *released).await;
                    let _ = sender.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                });
                event_stream(receiver)
            }
            _ => Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"{}")).boxed())
                .unwrap(),
        }
    }
}

fn event_stream(receiver: mpsc::Receiver<Bytes>) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(ChannelBody(receiver).boxed())
        .unwrap()
}

fn query_number(query: &str, name: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// A response body fed chunk by chunk from a channel: each chunk is one frame, written as
/// soon as it is sent.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
