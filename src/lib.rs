//! # keyrotd
//!
//! A daemon that owns the lifecycle of API keys: it keeps key state in SQLite, checks every
//! live key against its provider, rotates keys on a schedule, delivers new keys to the
//! programs that use them, and exports all of it as Prometheus metrics.
//!
//! ## Layout
//!
//! Entry points:
//! - [`cli`]: the command line, one module per subcommand family; `main.rs` only calls it.
//! - [`daemon`]: `keyrotd run`'s wiring: store, listener, checks, rotations, signals.
//! - [`demo`]: `keyrotd demo`, the whole product on loopback with simulated providers.
//!
//! What the daemon does:
//! - [`checks`]: validity checks, scheduled per credential or swept at once, results batched.
//! - [`rotation`]: the rotation state machine, its due-time policy and the daemon's queue.
//! - [`delivery`]: targets that hand a key to its consumers, behind the `Target` trait.
//! - [`providers`]: one adapter per vendor behind the `Provider`/`Issuer`/`Revoker` traits,
//!   and the sanitiser that keeps keys out of anything that leaves.
//! - [`relay`]: the local relay: applications call it without a key; it injects a pooled
//!   credential's key, streams the answer and fails over across keys.
//! - [`heartbeat`]: the daemon's proof of life, followed by `/readyz`, a gauge and the
//!   systemd watchdog.
//! - [`metrics`]: the Prometheus exposition and its HTTP endpoint (`metrics::server`);
//!   [`web_config`]: its TLS and basic auth; `listener`: the one accept loop behind every
//!   HTTP listener.
//!
//! What they stand on:
//! - [`config`]: the TOML file, parsed with positions and validated as a whole.
//! - [`store`]: the source of truth, one trait per concern; SQLite is the embedded backend,
//!   PostgreSQL the one replicas share.
//! - [`crypto`]: the master key and the sealing of secrets at rest.
//! - [`model`]: the shared words: stages, check statuses, fingerprints.
//! - [`clock`]: injectable time; [`due`]: one timer for many items; [`backoff`]: capped
//!   exponential backoff with jitter.
//! - [`logging`]: tracing set-up, with a writer that masks key-shaped text.
//! - [`simulator`]: a fake key-issuing provider on loopback, for `keyrotd demo`, the tests
//!   and the benchmarks.
//!
//! See `ARCHITECTURE.md` for the invariants.
#![forbid(unsafe_code)]
// The docs are written for the people working on keyrotd and built with
// `--document-private-items` (as CI does), so linking a private module is the point.
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod accounts;
pub(crate) mod backoff;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub(crate) mod daemon;
pub mod delivery;
pub(crate) mod demo;
pub(crate) mod due;
pub mod heartbeat;
pub(crate) mod listener;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod relay;
pub mod rotation;
pub mod simulator;
pub mod store;
pub mod web_config;
