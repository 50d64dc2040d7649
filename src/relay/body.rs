//! Bodies in both directions, passed frame by frame.
//!
//! [`UpstreamBody`] is what goes upstream: a buffered body (cheap to send again on another
//! key) or the client's body streaming through once. [`RelayBody`] is what goes back: an
//! answer of the relay's own, or the upstream's body, each frame handed on when the client
//! can take it (hyper polls the body only then, so a slow client slows the upstream read:
//! backpressure, no buffering). The upstream body carries the request's [`Finish`], which
//! counts the request out of `in_flight`, records its total time and its token usage when
//! the last byte has gone, or when the client went away first (the body is dropped, and
//! with it the upstream connection).

use super::metrics::RouteSeries;
use super::usage::UsageReader;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body going upstream.
pub(crate) enum UpstreamBody {
    Full(Option<Bytes>),
    /// What was read while deciding whether it fits the retry buffer, then the rest.
    Stream {
        prefix: Option<Bytes>,
        rest: Incoming,
    },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            UpstreamBody::Stream { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Full(data) => data.is_none(),
            UpstreamBody::Stream { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            UpstreamBody::Stream { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let hint = rest.size_hint();
                let mut sum = SizeHint::new();
                sum.set_lower(hint.lower() + extra);
                if let Some(upper) = hint.upper() {
                    sum.set_upper(upper + extra);
                }
                sum
            }
        }
    }
}

/// The client's request body: kept whole when it fits `limit` (so it can be sent again),
/// else streamed through once.
pub(crate) enum ClientBody {
    Buffered(Bytes),
    Once(Option<UpstreamBody>),
}

impl ClientBody {
    /// Reads up to `limit` bytes of `body`. `declared` is its Content-Length, if any: a
    /// body declared larger is not read at all here.
    pub(crate) async fn read(
        mut body: Incoming,
        declared: Option<u64>,
        limit: u64,
    ) -> Result<ClientBody, hyper::Error> {
        if declared.is_some_and(|length| length > limit) {
            return Ok(ClientBody::Once(Some(UpstreamBody::Stream {
                prefix: None,
                rest: body,
            })));
        }
        // One frame (the usual JSON body) is kept as it came: no copy.
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue; // trailers: not forwarded
            };
            read += data.len() as u64;
            match (&mut first, &mut more) {
                (None, _) => first = Some(data),
                (Some(first), None) => {
                    let mut joined = BytesMut::with_capacity(first.len() + data.len());
                    joined.extend_from_slice(first);
                    joined.extend_from_slice(&data);
                    more = Some(joined);
                }
                (Some(_), Some(joined)) => joined.extend_from_slice(&data),
            }
            if read > limit {
                let prefix = more.map(BytesMut::freeze).or(first);
                return Ok(ClientBody::Once(Some(UpstreamBody::Stream {
                    prefix,
                    rest: body,
                })));
            }
        }
        Ok(ClientBody::Buffered(
            more.map(BytesMut::freeze).or(first).unwrap_or_default(),
        ))
    }

    /// The body for an attempt; `None` once a streamed body was sent.
    pub(crate) fn for_attempt(&mut self) -> Option<UpstreamBody> {
        match self {
            ClientBody::Buffered(data) => {
                Some(UpstreamBody::Full((!data.is_empty()).then(|| data.clone())))
            }
            ClientBody::Once(body) => body.take(),
        }
    }

    pub(crate) fn retryable(&self) -> bool {
        matches!(self, ClientBody::Buffered(_))
    }
}

/// What is settled when an answer is over: `in_flight`, the total time, token usage.
pub(crate) struct Finish {
    series: Arc<RouteSeries>,
    started: Instant,
}

impl Finish {
    pub(crate) fn start(series: Arc<RouteSeries>, started: Instant) -> Finish {
        series.in_flight.inc();
        Finish { series, started }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.series.in_flight.dec();
        self.series
            .total
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// An answer going back to the client.
pub(crate) enum RelayBody {
    /// The relay's own answer, or a sanitised upstream error.
    Full {
        data: Option<Bytes>,
        /// Held until the answer is dropped (sent, or the client left).
        _finish: Option<Finish>,
    },
    Upstream(Box<Streaming>),
}

/// An upstream body on its way to the client.
pub(crate) struct Streaming {
    body: Incoming,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
    /// The answer's usage reader, and the credential slot its tokens count for.
    usage: Option<(UsageReader, usize)>,
    finish: Finish,
}

impl RelayBody {
    pub(crate) fn full(data: Bytes, finish: Option<Finish>) -> RelayBody {
        RelayBody::Full {
            data: (!data.is_empty()).then_some(data),
            _finish: finish,
        }
    }

    /// The upstream body of an answer with this content type; `usage_slot` names the
    /// credential whose tokens its usage is counted for.
    pub(crate) fn upstream(
        body: Incoming,
        idle_for: Duration,
        content_type: &[u8],
        usage_slot: usize,
        finish: Finish,
    ) -> RelayBody {
        let usage = UsageReader::for_content_type(content_type, body.size_hint().exact())
            .map(|reader| (reader, usage_slot));
        RelayBody::Upstream(Box::new(Streaming {
            body,
            idle: Box::pin(tokio::time::sleep(idle_for)),
            idle_for,
            usage,
            finish,
        }))
    }
}

impl Drop for Streaming {
    /// hyper stops polling a body whose length it knows once the last byte is in: a body
    /// that ended is counted here if it was not when it ended.
    fn drop(&mut self) {
        if let Some((reader, slot)) = self.usage.take() {
            let complete = self.body.is_end_stream();
            reader.count(complete, self.finish.series.credential(Some(slot)));
        }
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let streaming = match self.get_mut() {
            RelayBody::Full { data, .. } => {
                return Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            RelayBody::Upstream(streaming) => streaming,
        };
        match Pin::new(&mut streaming.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                streaming
                    .idle
                    .as_mut()
                    .reset(Instant::now() + streaming.idle_for);
                if let (Some(data), Some((reader, _))) = (frame.data_ref(), &mut streaming.usage) {
                    if !reader.feed(data) {
                        streaming.usage = None;
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => {
                if let Some((reader, slot)) = streaming.usage.take() {
                    reader.count(true, streaming.finish.series.credential(Some(slot)));
                }
                Poll::Ready(None)
            }
            Poll::Pending => match streaming.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(
                    "the upstream body stalled past idle_timeout".into(),
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RelayBody::Full { data, .. } => data.is_none(),
            RelayBody::Upstream(streaming) => streaming.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RelayBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RelayBody::Upstream(streaming) => streaming.body.size_hint(),
        }
    }
}
