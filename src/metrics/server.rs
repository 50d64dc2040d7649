//! The metrics endpoint: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers), `/readyz` (the store is open and the heartbeat is fresh).
//!
//! A dedicated listener, never shared with anything that takes input from consumers, run by
//! the shared accept loop ([`crate::listener`]). TLS and basic auth come from a
//! node_exporter-style web config ([`crate::web_config`]).
//!
//! `/metrics` is cached as compressed chunks ([`crate::metrics`]). A client whose
//! `Accept-Encoding` allows gzip (Prometheus sends `Accept-Encoding: gzip`) gets them as one
//! gzip member, with `Content-Encoding: gzip`. Any other client gets the text, decompressed
//! while it is sent in bounded frames, never as one buffer. Both carry an exact
//! `Content-Length` and `Vary: Accept-Encoding`.

use super::{Exposition, Metrics, TextReader};
use crate::heartbeat::Heartbeat;
use crate::listener::{self, ServeOptions};
use crate::store::Store;
use crate::web_config::WebConfig;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// What the endpoint answers from.
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub heartbeat: Arc<Heartbeat>,
}

/// How long a shutdown waits for open scrapes to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the endpoint until `shutdown` completes, then drains open connections (bounded
/// wait). With a web config, TLS and basic auth apply as it says; basic auth guards every
/// path.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    web: Option<Arc<WebConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    let tls = web.as_ref().and_then(|w| w.tls_acceptor().cloned());
    let service = hyper::service::service_fn(move |request| {
        let state = state.clone();
        let web = web.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, web.as_ref(), request).await) }
    });
    let options = ServeOptions {
        name: "metrics",
        drain: DRAIN,
    };
    listener::serve(listener, tls, service, shutdown, options).await
}

/// Basic auth (when configured) in front of every route.
async fn handle(
    state: &HttpState,
    web: Option<&Arc<WebConfig>>,
    request: Request<Incoming>,
) -> Response<Payload> {
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

/// A response body with an exact length, so hyper sends a `Content-Length`: either a few
/// shared chunks (`/metrics` hands over the cached compressed chunks without copying them
/// into one buffer), or text decompressed from such chunks while it is sent.
pub(crate) struct Payload {
    source: Source,
    remaining: u64,
}

enum Source {
    Chunks(std::collections::VecDeque<Bytes>),
    Inflate(Box<TextReader>),
}

/// The largest frame of decompressed text.
pub(crate) const INFLATE_FRAME: usize = 64 * 1024;

impl Payload {
    fn chunks(chunks: impl IntoIterator<Item = Bytes>) -> Payload {
        let chunks: std::collections::VecDeque<Bytes> =
            chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Payload {
            source: Source::Chunks(chunks),
            remaining,
        }
    }

    /// The text of `reader`, which must be `len` bytes long.
    fn inflate(reader: TextReader, len: u64) -> Payload {
        Payload {
            source: Source::Inflate(Box::new(reader)),
            remaining: len,
        }
    }
}

impl Body for Payload {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let next = match &mut this.source {
            Source::Chunks(chunks) => chunks.pop_front().map(Ok),
            Source::Inflate(reader) => next_frame(reader, this.remaining).transpose(),
        };
        if let Some(Ok(chunk)) = &next {
            this.remaining -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| chunk.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Chunks(chunks) => chunks.is_empty(),
            Source::Inflate(_) => self.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Up to [`INFLATE_FRAME`] bytes of decompressed text; `None` at the end. The text must end
/// exactly after `remaining` bytes.
fn next_frame(reader: &mut TextReader, remaining: u64) -> std::io::Result<Option<Bytes>> {
    let want = remaining.min(INFLATE_FRAME as u64) as usize;
    if want == 0 {
        let mut probe = [0u8; 1];
        return match reader.read(&mut probe)? {
            0 => Ok(None),
            _ => Err(std::io::Error::other("the text is longer than announced")),
        };
    }
    let mut frame = BytesMut::zeroed(want);
    let mut filled = 0;
    while filled < want {
        match reader.read(&mut frame[filled..])? {
            0 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the text is shorter than announced",
                ))
            }
            n => filled += n,
        }
    }
    Ok(Some(frame.freeze()))
}

/// Whether an `Accept-Encoding` request header (all its values, in order) allows `gzip`
/// (RFC 9110 §12.5.3): `gzip` (or `x-gzip`) or `*` with a non-zero q-value, where an
/// explicit `gzip` entry overrides `*`. `gzip;q=0` means no; no header means identity.
/// Entries with a malformed q-value are ignored.
pub(crate) fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let mut gzip: Option<u16> = None;
    let mut any: Option<u16> = None;
    for value in values {
        let Ok(value) = value.to_str() else { continue };
        for entry in value.split(',') {
            let mut parts = entry.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut weight = Some(1000);
            for parameter in parts {
                let Some((name, v)) = parameter.split_once('=') else {
                    weight = None;
                    break;
                };
                if name.trim().eq_ignore_ascii_case("q") {
                    weight = qvalue(v.trim());
                }
            }
            let Some(weight) = weight else { continue };
            let slot =
                if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                    &mut gzip
                } else if coding == "*" {
                    &mut any
                } else {
                    continue;
                };
            *slot = Some(slot.map_or(weight, |w| w.max(weight)));
        }
    }
    gzip.or(any).is_some_and(|weight| weight > 0)
}

/// A q-value in thousandths: `0`, `0.5`, `0.001`, `1`, `1.000` (at most three decimals).
fn qvalue(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Payload> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Payload::chunks([body.into()]))
        .expect("static response parts are valid")
}

/// The exposition as gzip when the client takes it, else as text decompressed on the way.
fn exposition(body: Exposition, gzip: bool) -> Response<Payload> {
    let response = Response::builder()
        .status(StatusCode::OK)
        .header(
            hyper::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .header(hyper::header::VARY, "Accept-Encoding");
    if gzip {
        response
            .header(hyper::header::CONTENT_ENCODING, "gzip")
            .body(Payload::chunks(body.gzip_parts()))
    } else {
        response.body(Payload::inflate(body.text_reader(), body.text_len()))
    }
    .expect("static response parts are valid")
}

async fn route(state: &HttpState, request: Request<Incoming>) -> Response<Payload> {
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
            Ok(()) => {
                let gzip = accepts_gzip(request.headers().get_all(hyper::header::ACCEPT_ENCODING));
                exposition(state.metrics.exposition(), gzip)
            }
            Err(error) => {
                tracing::error!(%error, "cannot read the store for /metrics");
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "store unavailable\n")
            }
        },
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => {
            if !state.heartbeat.is_fresh() {
                return text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "scheduler heartbeat stale\n");
            }
            // After `master-key rotate` under this process, every key it issued would be
            // refused by the store: not ready until it restarts with the new master key.
            if let Ok(true) = state.store.master_key_replaced().await {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    "master key replaced under the daemon; restart it with the new master key\n",
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn accepts(values: &[&str]) -> bool {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_str(v).unwrap())
            .collect();
        accepts_gzip(&values)
    }

    #[test]
    fn accept_encoding_is_parsed_with_q_values() {
        // What Prometheus sends, and what browsers and curl --compressed send.
        assert!(accepts(&["gzip"]));
        assert!(accepts(&["gzip, deflate, br, zstd"]));
        assert!(accepts(&["deflate, gzip;q=1.0, *;q=0.5"]));
        assert!(accepts(&["GZip"]));
        assert!(accepts(&["x-gzip"]));
        assert!(accepts(&["gzip;q=0.001"]));
        assert!(accepts(&["gzip ; q=0.5"]));
        assert!(accepts(&["*"]));
        assert!(accepts(&["br", "gzip"]), "every header line counts");
        assert!(accepts(&["identity;q=0, gzip"]));
        // No header, or nothing that names gzip: identity.
        assert!(!accepts(&[]));
        assert!(!accepts(&[""]));
        assert!(!accepts(&["identity"]));
        assert!(!accepts(&["deflate, br"]));
        assert!(!accepts(&["gzipped"]));
        // q=0 means "not acceptable", also written with decimals, and wins over `*`.
        assert!(!accepts(&["gzip;q=0"]));
        assert!(!accepts(&["gzip;Q=0.000"]));
        assert!(!accepts(&["gzip;q=0, *"]));
        assert!(!accepts(&["*, gzip;q=0"]));
        assert!(!accepts(&["*;q=0"]));
        assert!(!accepts(&["br, *;q=0"]));
        // Malformed q-values make the entry void, not acceptable.
        assert!(!accepts(&["gzip;q=2"]));
        assert!(!accepts(&["gzip;q=1.5"]));
        assert!(!accepts(&["gzip;q=0.0001"]));
        assert!(!accepts(&["gzip;q="]));
        assert!(!accepts(&["gzip;q=abc"]));
        assert!(!accepts(&["gzip;q"]));
        assert!(accepts(&["gzip;q=abc, *"]), "the void entry leaves `*`");
    }

    #[test]
    fn q_values() {
        assert_eq!(qvalue("0"), Some(0));
        assert_eq!(qvalue("0."), Some(0));
        assert_eq!(qvalue("0.5"), Some(500));
        assert_eq!(qvalue("0.125"), Some(125));
        assert_eq!(qvalue("1"), Some(1000));
        assert_eq!(qvalue("1.000"), Some(1000));
        assert_eq!(qvalue("1.001"), None);
        assert_eq!(qvalue("0.1234"), None);
        assert_eq!(qvalue("-0"), None);
        assert_eq!(qvalue("0.+1"), None);
    }

    #[tokio::test]
    async fn an_inflating_body_sends_the_text_in_bounded_frames() {
        let text: String = (0..20_000)
            .map(|i| format!("series_{i}{{label=\"value\"}} {i}\n"))
            .collect();
        let (a, b) = text.as_bytes().split_at(150_001);
        let exposition = Exposition::new(vec![
            super::super::gzip::Chunk::compress(a),
            super::super::gzip::Chunk::compress(b),
        ]);
        let reader = exposition.text_reader();
        let mut body = Payload::inflate(reader, text.len() as u64);
        assert_eq!(body.size_hint().exact(), Some(text.len() as u64));
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.len() <= INFLATE_FRAME, "{}", data.len());
            received.extend_from_slice(&data);
        }
        assert_eq!(received, text.as_bytes());

        // A length that does not match the text is an error, not a short or long body.
        let reader = exposition.text_reader();
        let mut body = Payload::inflate(reader, text.len() as u64 + 1);
        let mut failed = false;
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
    }
}
