//! The one accept loop behind every HTTP listener the crate runs (the metrics endpoint, the
//! simulated provider), so the rules hyper 1 leaves to its users are kept once:
//!
//! - one task per connection: awaiting a connection inside the loop would serve one client
//!   at a time, and a TLS handshake in its own task means a slow client never stalls the
//!   loop;
//! - an accept error is logged and backed off, never returned: EMFILE would otherwise take
//!   the listener down for good;
//! - hyper's header-read timeout needs a timer (`TokioTimer`), or it panics;
//! - on shutdown the listener closes, open connections are asked to finish (idle ones close
//!   at once) and are waited for, for a bounded time.
//!
//! It is generic over the service, so any handler can sit behind it.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after an accept error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What tells one listener from another.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// Names the listener in its log lines.
    pub(crate) name: &'static str,
    /// How long shutdown waits for open connections before closing them.
    pub(crate) drain: Duration,
}

/// Accepts connections on `listener` (through `tls` when given) and serves each with a
/// clone of `service`, until `shutdown` completes; then drains open connections for at most
/// `options.drain`.
pub(crate) async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(listener = options.name, %error, "accept failed; backing off");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                };
                // Taken before the handshake, so a shutdown waits for (or ends) this
                // connection too.
                let watcher = graceful.watcher();
                let connection = Connection {
                    builder: builder.clone(),
                    service: service.clone(),
                    watcher,
                    peer,
                    name: options.name,
                };
                tokio::spawn(connection.serve(tls.clone(), stream));
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(options.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = options.name,
            "connections still open after the drain period; closing them"
        );
    }
}

/// One accepted connection and what it is served with.
struct Connection<S> {
    builder: auto::Builder<TokioExecutor>,
    service: S,
    watcher: Watcher,
    peer: SocketAddr,
    name: &'static str,
}

impl<S, B> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Completes the TLS handshake (bounded) when there is one, then serves requests until
    /// the client or a shutdown ends the connection.
    async fn serve(self, tls: Option<TlsAcceptor>, stream: tokio::net::TcpStream) {
        let (peer, name) = (self.peer, self.name);
        let Some(acceptor) = tls else {
            return self.serve_io(stream).await;
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => self.serve_io(tls).await,
            Ok(Err(error)) => {
                tracing::debug!(listener = name, %peer, %error, "TLS handshake failed")
            }
            Err(_) => tracing::debug!(listener = name, %peer, "TLS handshake timed out"),
        }
    }

    async fn serve_io(self, io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) {
        let connection = self
            .builder
            .serve_connection(TokioIo::new(io), self.service)
            .into_owned();
        if let Err(error) = self.watcher.watch(connection).await {
            tracing::debug!(
                listener = self.name,
                peer = %self.peer,
                %error,
                "connection ended with an error"
            );
        }
    }
}
