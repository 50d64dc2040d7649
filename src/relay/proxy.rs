//! One request through the relay: route, client, key, upstream, answer.
//!
//! Failover happens only before any byte went back to the client, and only with a body the
//! relay still holds:
//!
//! - 429: the key cools down (its `Retry-After`, capped, or a backoff) and the request goes
//!   to another key;
//! - 401/403: the key leaves the pool, the daemon is asked (by the refusal that took it
//!   out) to check its credential a second later, and the request goes to another key;
//! - 5xx, a connection error or no response head in time: another attempt after a short
//!   backoff, on another key when there is one.
//!
//! Attempts are bounded per route. When every key is cooling down the client gets 429 with
//! `Retry-After` set to the soonest recovery. An upstream answer that is not a success is
//! read (bounded) and sanitised before it is forwarded: a vendor that echoes the key must
//! not hand it to the client. Successful answers stream through untouched.

use super::auth::Refusal;
use super::body::{ClientBody, Finish, RelayBody};
use super::headers;
use super::metrics::RetryReason;
use super::pool::{NoKey, PoolKey};
use super::{Relay, Route};
use crate::config::KeyHeader;
use crate::providers::sanitize::{mask_key_shaped, REDACTED};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use rand::Rng;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Largest upstream error body read for sanitising; the rest is cut.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// First wait before retrying after a 5xx or a connection error; doubles per attempt.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Relay {
    /// Answers one request. Never fails: every refusal is an answer.
    pub(crate) async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer_uid: Option<u32>,
    ) -> Response<RelayBody> {
        let started = Instant::now();
        let Some((route, rest_at)) = self.route_for(request.uri().path()) else {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no relay route matches this path",
                None,
            );
        };
        let client = match self.clients.authenticate(
            request.headers(),
            query_key(route, request.uri().query()),
            peer_uid,
            started.into_std(),
        ) {
            Ok(client) => client,
            Err(Refusal::Unauthenticated) => {
                route.series.credential(None).answered(401);
                return error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "the relay needs a client token (Authorization: Bearer <token>)",
                    None,
                );
            }
            Err(Refusal::RateLimited(wait)) => {
                route.series.credential(None).answered(429);
                return with_retry_after(
                    error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_exceeded",
                        "this client is over its relay rate limit",
                        None,
                    ),
                    wait,
                );
            }
        };
        if !route.allows(client) {
            route.series.credential(None).answered(403);
            return error(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "this client is not allowed on this route",
                None,
            );
        }
        let finish = Finish::start(route.series.clone(), started);
        self.forward(route, rest_at, request, finish).await
    }

    /// The longest route prefix that is the path or a whole-segment start of it, and where
    /// the rest of the path starts.
    fn route_for(&self, path: &str) -> Option<(&Route, usize)> {
        self.routes
            .iter()
            .filter(|route| {
                path.starts_with(&*route.prefix)
                    && matches!(path.as_bytes().get(route.prefix.len()), None | Some(b'/'))
            })
            .max_by_key(|route| route.prefix.len())
            .map(|route| (route, route.prefix.len()))
    }

    async fn forward(
        &self,
        route: &Route,
        rest_at: usize,
        request: Request<Incoming>,
        finish: Finish,
    ) -> Response<RelayBody> {
        let (mut parts, body) = request.into_parts();
        let mut uri = match headers::upstream_uri(
            &route.upstream,
            &parts.uri.path()[rest_at..],
            parts.uri.query(),
            route.header == KeyHeader::XGoogApiKey,
        ) {
            Ok(uri) => uri,
            Err(_) => {
                return answered(
                    route,
                    None,
                    error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "the request's path cannot be sent upstream",
                        Some(finish),
                    ),
                )
            }
        };
        headers::for_upstream(&mut parts.headers);
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let mut body = match ClientBody::read(body, declared, self.limits.max_retry_body).await {
            Ok(body) => body,
            Err(_) => {
                return answered(
                    route,
                    None,
                    error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "the request body could not be read",
                        Some(finish),
                    ),
                )
            }
        };
        let mut tried = 0u64;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let keys = route.pool.keys();
            let index = match route.pool.pick(&keys, tried, self.clock.now()) {
                Ok(index) => index,
                Err(NoKey::Cooling(wait)) => {
                    let answer = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_exceeded",
                        "every key of this route is cooling down after a rate limit",
                        Some(finish),
                    );
                    return answered(route, None, with_retry_after(answer, wait));
                }
                Err(NoKey::Empty) => {
                    return answered(
                        route,
                        None,
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no_key_available",
                            "this route has no usable key",
                            Some(finish),
                        ),
                    )
                }
            };
            tried |= 1 << index;
            let key = &keys[index];
            let Some(attempt_body) = body.for_attempt() else {
                // A streamed body was sent already: nothing to send again.
                return answered(
                    route,
                    Some(key),
                    error(
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        "the upstream failed and the request body was too large to retry",
                        Some(finish),
                    ),
                );
            };
            let retry = attempt < route.max_attempts && body.retryable();
            let mut upstream = Request::new(attempt_body);
            *upstream.method_mut() = parts.method.clone();
            // The last attempt takes the request's parts; only one that may be followed by
            // another copies them.
            if retry {
                *upstream.uri_mut() = uri.clone();
                *upstream.headers_mut() = parts.headers.clone();
            } else {
                *upstream.uri_mut() = std::mem::take(&mut uri);
                *upstream.headers_mut() = std::mem::take(&mut parts.headers);
            }
            upstream
                .headers_mut()
                .insert(route.header.name(), key.header.clone());
            let sent = tokio::time::timeout(
                self.limits.first_byte_timeout,
                self.upstream.request(upstream),
            )
            .await;
            let response = match sent {
                Ok(Ok(response)) => response,
                Ok(Err(_)) | Err(_) => {
                    if retry {
                        route.series.retried(RetryReason::Connect);
                        backoff(attempt).await;
                        continue;
                    }
                    let (status, message) = match sent {
                        Err(_) => (
                            StatusCode::GATEWAY_TIMEOUT,
                            "the upstream sent no answer within first_byte_timeout",
                        ),
                        _ => (StatusCode::BAD_GATEWAY, "the upstream could not be reached"),
                    };
                    return answered(
                        route,
                        Some(key),
                        error(status, "upstream_error", message, Some(finish)),
                    );
                }
            };
            let status = response.status();
            let now = self.clock.now();
            match status.as_u16() {
                429 => {
                    let wait = response
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| {
                            crate::providers::parse_retry_after(v, std::time::SystemTime::now())
                        });
                    let cooled = key.health.cool_down(now, wait, self.limits.max_cooldown);
                    tracing::debug!(credential = %key.credential, version = key.version, seconds = cooled.as_secs(), "relay: key rate-limited; cooling down");
                    if retry {
                        route.series.retried(RetryReason::RateLimited);
                        continue;
                    }
                }
                401 | 403 => {
                    if key.health.take_out(now) {
                        tracing::warn!(credential = %key.credential, version = key.version, status = status.as_u16(), "relay: key refused by the upstream; out of the pool, check requested");
                        self.checks.request(&key.credential);
                    } else {
                        // A request sent with the key before it was taken out.
                        tracing::debug!(credential = %key.credential, version = key.version, status = status.as_u16(), "relay: key refused by the upstream again; already out of the pool");
                    }
                    if retry {
                        route.series.retried(RetryReason::Unauthorized);
                        continue;
                    }
                }
                code if code >= 500 => {
                    key.health.answered();
                    if retry {
                        route.series.retried(RetryReason::ServerError);
                        backoff(attempt).await;
                        continue;
                    }
                }
                _ => key.health.answered(),
            }
            route
                .series
                .first_byte
                .observe(finish.started().elapsed().as_secs_f64());
            return answered(
                route,
                Some(key),
                self.pass_back(response, key, finish).await,
            );
        }
    }

    /// The upstream's answer for the client: a success streams through; anything else is
    /// read (bounded) and sanitised first.
    async fn pass_back(
        &self,
        response: Response<Incoming>,
        key: &PoolKey,
        finish: Finish,
    ) -> Response<RelayBody> {
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        if parts.status.is_success() || parts.status.is_redirection() {
            let content_type = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
            let body = RelayBody::upstream(
                body,
                self.limits.idle_timeout,
                content_type.unwrap_or_default(),
                key.slot,
                finish,
            );
            return Response::from_parts(parts, body);
        }
        let raw = read_bounded(body, self.limits.idle_timeout).await;
        let text = String::from_utf8_lossy(&raw);
        let exact = text.replace(key.secret.expose_secret(), REDACTED);
        let clean = Bytes::from(mask_key_shaped(&exact).into_owned());
        parts.headers.remove(CONTENT_LENGTH);
        Response::from_parts(parts, RelayBody::full(clean, Some(finish)))
    }
}

/// The `key=` parameter of a Gemini route's query (never of another route's: it is
/// stripped from the upstream URL only on Gemini routes).
fn query_key<'q>(route: &Route, query: Option<&'q str>) -> Option<&'q str> {
    if route.header != KeyHeader::XGoogApiKey {
        return None;
    }
    query?.split('&').find_map(|pair| pair.strip_prefix("key="))
}

/// Reads at most [`MAX_ERROR_BODY`] bytes of an upstream body, giving up on a stall.
async fn read_bounded(mut body: Incoming, idle: Duration) -> BytesMut {
    let mut raw = BytesMut::new();
    while raw.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let room = MAX_ERROR_BODY - raw.len();
                    raw.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    raw
}

/// Waits before another attempt: capped exponential, with jitter so a burst of failed
/// requests does not come back at once.
async fn backoff(attempt: u32) {
    let ceiling =
        (RETRY_BACKOFF * 2u32.saturating_pow(attempt.saturating_sub(1))).min(RETRY_BACKOFF_MAX);
    let wait = ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
    tokio::time::sleep(wait).await;
}

/// Counts an answer in `keyrotd_relay_requests_total`.
fn answered(
    route: &Route,
    key: Option<&Arc<PoolKey>>,
    response: Response<RelayBody>,
) -> Response<RelayBody> {
    route
        .series
        .credential(key.map(|k| k.slot))
        .answered(response.status().as_u16());
    response
}

/// An answer of the relay's own, in OpenAI's error shape (what the SDKs parse).
pub(crate) fn error(
    status: StatusCode,
    code: &'static str,
    message: &'static str,
    finish: Option<Finish>,
) -> Response<RelayBody> {
    let body = serde_json::json!({
        "error": {
            "message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": code,
        }
    });
    let mut response = Response::new(RelayBody::full(Bytes::from(body.to_string()), finish));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Sets `Retry-After` to `wait`, rounded up to whole seconds (at least 1).
fn with_retry_after(mut response: Response<RelayBody>, wait: Duration) -> Response<RelayBody> {
    let seconds = crate::clock::whole_seconds(wait);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
