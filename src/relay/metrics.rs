//! The relay's series, with the handles a request uses resolved once per route and
//! credential, so a request does not hash label strings:
//!
//! - `keyrotd_relay_requests_total{route,credential,code}`: answers sent, by the key that
//!   served them (`credential="none"` when no key was tried: refused, no key usable);
//! - `keyrotd_relay_request_duration_seconds{route,phase}`: `first_byte` (response head
//!   from upstream) and `total` (last byte sent);
//! - `keyrotd_relay_retries_total{route,reason}`;
//! - `keyrotd_relay_key_cooldown_seconds{credential}`: read from the pools at scrape time;
//! - `keyrotd_relay_route_keys{route,state}`: a route's keys by health (`usable`, `cooling`,
//!   `out`), read from the pools at scrape time, so an alert can see a route left with no
//!   key before its clients do;
//! - `keyrotd_relay_in_flight{route}`;
//! - `keyrotd_relay_tokens_total{route,credential,kind}`: from the `usage` of
//!   JSON answers and of event streams (see [`super::usage`]).

use super::pool::{cooldowns, key_states, Pool};
use crate::clock::Clock;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::{Arc, Mutex};

/// Why a request was tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    RateLimited,
    Unauthorized,
    ServerError,
    Connect,
}

impl RetryReason {
    const ALL: [RetryReason; 4] = [
        RetryReason::RateLimited,
        RetryReason::Unauthorized,
        RetryReason::ServerError,
        RetryReason::Connect,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RetryReason::RateLimited => "rate_limited",
            RetryReason::Unauthorized => "unauthorized",
            RetryReason::ServerError => "server_error",
            RetryReason::Connect => "connect_error",
        }
    }
}

/// Which token count.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenKind {
    Prompt,
    Completion,
}

/// The relay's metric families.
#[derive(Clone)]
pub(crate) struct RelayMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    in_flight: IntGaugeVec,
    tokens: IntCounterVec,
}

impl RelayMetrics {
    pub(crate) fn register(registry: &Registry) -> prometheus::Result<RelayMetrics> {
        let requests = IntCounterVec::new(
            Opts::new(
                "keyrotd_relay_requests_total",
                "Requests the relay answered, by route, the credential whose key served the answer, and status code.",
            ),
            &["route", "credential", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "keyrotd_relay_request_duration_seconds",
                "Time from a request's arrival to the upstream's response head (first_byte) and to the answer's last byte (total).",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0, 300.0,
            ]),
            &["route", "phase"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "keyrotd_relay_retries_total",
                "Upstream attempts made again, by route and reason (rate_limited, unauthorized, server_error, connect_error).",
            ),
            &["route", "reason"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "keyrotd_relay_in_flight",
                "Requests the relay is serving now, by route.",
            ),
            &["route"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "keyrotd_relay_tokens_total",
                "Tokens the upstream reported in the usage of its answers (JSON, and event streams as they pass), by route, credential and kind (prompt, completion).",
            ),
            &["route", "credential", "kind"],
        )?;
        for family in [&requests, &retries, &tokens] {
            registry.register(Box::new((*family).clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(RelayMetrics {
            requests,
            duration,
            retries,
            in_flight,
            tokens,
        })
    }

    /// The handles of one route and its credentials.
    pub(crate) fn route(&self, route: &str, credentials: &[Arc<str>]) -> RouteSeries {
        RouteSeries {
            first_byte: self.duration.with_label_values(&[route, "first_byte"]),
            total: self.duration.with_label_values(&[route, "total"]),
            in_flight: self.in_flight.with_label_values(&[route]),
            retries: RetryReason::ALL.map(|r| self.retries.with_label_values(&[route, r.as_str()])),
            credentials: credentials
                .iter()
                .map(|c| CredentialSeries {
                    tokens: [
                        self.tokens.with_label_values(&[route, c, "prompt"]),
                        self.tokens.with_label_values(&[route, c, "completion"]),
                    ],
                    codes: Mutex::new(Vec::new()),
                    requests: self.requests.clone(),
                    labels: [Arc::from(route), c.clone()],
                })
                .chain(std::iter::once(CredentialSeries {
                    tokens: [
                        self.tokens.with_label_values(&[route, "none", "prompt"]),
                        self.tokens
                            .with_label_values(&[route, "none", "completion"]),
                    ],
                    codes: Mutex::new(Vec::new()),
                    requests: self.requests.clone(),
                    labels: [Arc::from(route), Arc::from("none")],
                }))
                .collect(),
        }
    }
}

/// One route's handles. `credentials` has one entry per pool slot, then one for "none".
pub(crate) struct RouteSeries {
    pub(crate) first_byte: Histogram,
    pub(crate) total: Histogram,
    pub(crate) in_flight: IntGauge,
    retries: [IntCounter; 4],
    credentials: Vec<CredentialSeries>,
}

impl RouteSeries {
    pub(crate) fn retried(&self, reason: RetryReason) {
        self.retries[reason as usize].inc();
    }

    /// The series of a pool slot, or of "none" (`None`).
    pub(crate) fn credential(&self, slot: Option<usize>) -> &CredentialSeries {
        let none = self.credentials.len() - 1;
        &self.credentials[slot.unwrap_or(none).min(none)]
    }
}

/// One credential's handles on one route.
pub(crate) struct CredentialSeries {
    tokens: [IntCounter; 2],
    /// The request counters by status code, resolved on first use (a handful of codes).
    codes: Mutex<Vec<(u16, IntCounter)>>,
    requests: IntCounterVec,
    labels: [Arc<str>; 2],
}

impl CredentialSeries {
    pub(crate) fn answered(&self, code: u16) {
        let mut codes = self.codes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, counter)) = codes.iter().find(|(c, _)| *c == code) {
            counter.inc();
            return;
        }
        let counter = self.requests.with_label_values(&[
            &*self.labels[0],
            &*self.labels[1],
            &code.to_string(),
        ]);
        counter.inc();
        codes.push((code, counter));
    }

    pub(crate) fn tokens(&self, kind: TokenKind, count: u64) {
        self.tokens[kind as usize].inc_by(count);
    }
}

/// `keyrotd_relay_key_cooldown_seconds{credential}`, read from the pools at each scrape.
pub(crate) struct CooldownGauge {
    pools: Vec<Arc<Pool>>,
    clock: Arc<dyn Clock>,
    gauge: IntGaugeVec,
}

impl CooldownGauge {
    pub(crate) fn new(pools: Vec<Arc<Pool>>, clock: Arc<dyn Clock>) -> CooldownGauge {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "keyrotd_relay_key_cooldown_seconds",
                "Seconds until the relay uses a credential's key again after a 429 (0: usable).",
            ),
            &["credential"],
        )
        .expect("valid metric");
        CooldownGauge {
            pools,
            clock,
            gauge,
        }
    }
}

impl Collector for CooldownGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut longest = Vec::new();
        for pool in &self.pools {
            cooldowns(pool, self.clock.as_ref(), &mut longest);
        }
        self.gauge.reset();
        for (credential, left) in longest {
            self.gauge.with_label_values(&[&*credential]).set(left);
        }
        self.gauge.collect()
    }
}

/// `keyrotd_relay_route_keys{route,state}`, read from the pools at each scrape. Every state
/// of every route is exported, zeros included, so `== 0` works in an alert rule without
/// `absent()`.
pub(crate) struct RouteKeysGauge {
    routes: Vec<(Arc<str>, Arc<Pool>)>,
    clock: Arc<dyn Clock>,
    gauge: IntGaugeVec,
}

impl RouteKeysGauge {
    pub(crate) fn new(routes: Vec<(Arc<str>, Arc<Pool>)>, clock: Arc<dyn Clock>) -> RouteKeysGauge {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "keyrotd_relay_route_keys",
                "Keys of a relay route by state: usable, cooling (after a 429), out (after a 401/403, until a check finds the key valid).",
            ),
            &["route", "state"],
        )
        .expect("valid metric");
        RouteKeysGauge {
            routes,
            clock,
            gauge,
        }
    }
}

impl Collector for RouteKeysGauge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.clock.now();
        for (route, pool) in &self.routes {
            let counts = key_states(pool, now);
            for (state, count) in ["usable", "cooling", "out"].into_iter().zip(counts) {
                self.gauge.with_label_values(&[route, state]).set(count);
            }
        }
        self.gauge.collect()
    }
}
