//! # keyrotd
//!
//! A daemon that owns the lifecycle of API keys: it keeps key state in SQLite, checks every
//! live key against its provider, rotates keys on a schedule, delivers new keys to the
//! programs that use them, and exports all of it as Prometheus metrics.
//!
//! ## Layout
//!
//! - [`config`]: the TOML file, parsed with positions and validated as a whole.
//! - [`model`]: the shared words: stages, check statuses, fingerprints.
//! - [`providers`]: one adapter per vendor behind the `Provider` trait.
//! - [`delivery`]: targets that hand a key to its consumers, behind the `Target` trait.
//! - [`simulator`]: a fake key-issuing provider on loopback, for `keyrotd demo` and tests.
//! - [`metrics`] (with `metrics::server`) + [`web_config`]: the metrics endpoint, with
//!   optional TLS and basic auth.
//! - [`heartbeat`]: the daemon's proof of life, followed by `/readyz`, a gauge and the
//!   systemd watchdog.
//! - `listener`: the one accept loop behind every HTTP listener.
//!
//! See `ARCHITECTURE.md` for the invariants.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod delivery;
pub mod demo;
pub mod due;
pub mod heartbeat;
pub(crate) mod listener;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod rotation;
pub mod simulator;
pub mod store;
pub mod web_config;
