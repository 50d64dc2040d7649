//! The HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` (the process answers),
//! `/readyz` (the store is open and the scheduler's heartbeat is fresh).
//!
//! A dedicated listener, never shared with anything that takes input from consumers. The
//! accept loop never dies on an accept error (EMFILE would otherwise take metrics down with
//! it): it logs, backs off and goes on.
//!
//! TLS and basic auth come from a node_exporter-style web config ([`crate::web_config`]).

use crate::clock::Clock;
use crate::metrics::{Exposition, Metrics};
use crate::store::Store;
use crate::web_config::WebConfig;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Liveness of the scheduler, shared by the scheduler (writer) and `/readyz` and the
/// watchdog (readers).
#[derive(Debug, Default)]
pub struct Heartbeat {
    last: AtomicI64,
}

impl Heartbeat {
    pub fn beat(&self, now: i64) {
        self.last.store(now, Ordering::SeqCst);
    }
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::SeqCst)
    }
    pub fn is_fresh(&self, now: i64, max_age: Duration) -> bool {
        let last = self.last();
        last > 0 && now - last <= max_age.as_secs() as i64
    }
}

/// How stale the heartbeat may be before the daemon reports itself not ready.
pub const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(60);

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub heartbeat: Arc<Heartbeat>,
    pub clock: Arc<dyn Clock>,
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves plain HTTP without auth until `shutdown` completes, then drains open connections
/// (bounded wait).
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, state, None, shutdown).await
}

/// Like [`serve`], with TLS and basic auth from a web config when one is given. The TLS
/// handshake runs in the connection's own task, so a slow client never stalls the accept
/// loop; basic auth guards every path.
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<HttpState>,
    web: Option<Arc<WebConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let state = state.clone();
                let web = web.clone();
                let builder = builder.clone();
                // Taken before the handshake so a shutdown waits for (or ends) this connection.
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let acceptor = web.as_ref().and_then(|w| w.tls_acceptor().cloned());
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        let web = web.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(&state, web.as_ref(), request).await)
                        }
                    });
                    let result = match acceptor {
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder.serve_connection(TokioIo::new(tls), service).into_owned();
                            watcher.watch(connection).await
                        }
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            watcher.watch(connection).await
                        }
                    };
                    if let Err(error) = result {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5s; closing them");
    }
}

/// Basic auth (when configured) in front of every route.
async fn handle(
    state: &HttpState,
    web: Option<&Arc<WebConfig>>,
    request: Request<Incoming>,
) -> Response<Chunks> {
    if let Some(web) = web {
        let header = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if web.requires_auth() && !web.authorize(header).await {
            let mut response = text(
                StatusCode::UNAUTHORIZED,
                "text/plain; charset=utf-8",
                "Unauthorized\n",
            );
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Basic realm=\"keyrotd\""),
            );
            return response;
        }
    }
    route(state, request).await
}

/// A response body sent as a few shared chunks: `/metrics` hands over the cached per-key
/// text without copying it into one buffer. The exact length is known, so hyper sends a
/// `Content-Length`.
pub struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: std::collections::VecDeque<Bytes> =
            chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, remaining }
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Chunks> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Chunks::new([body.into()]))
        .expect("static response parts are valid")
}

fn exposition(body: Exposition) -> Response<Chunks> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Chunks::new(body.chunks))
        .expect("static response parts are valid")
}

async fn route(state: &HttpState, request: Request<Incoming>) -> Response<Chunks> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n",
        );
    }
    match request.uri().path() {
        "/metrics" => match state.metrics.refresh(state.store.as_ref()).await {
            Ok(()) => exposition(state.metrics.exposition()),
            Err(error) => {
                tracing::error!(%error, "cannot read the store for /metrics");
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "store unavailable\n")
            }
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            let now = state.clock.now();
            if !state.heartbeat.is_fresh(now, HEARTBEAT_MAX_AGE) {
                return text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "scheduler heartbeat stale\n");
            }
            match state.store.generation().await {
                Ok(_) => text(StatusCode::OK, PLAIN, "ready\n"),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "store unavailable\n"),
            }
        }
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "<html><head><title>keyrotd</title></head><body><h1>keyrotd</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n",
        ),
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n"),
    }
}
