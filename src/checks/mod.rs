//! Validity checks: when to probe each credential's current key, how many at once, how fast
//! per provider, and what to do with the answer.
//!
//! A check probes the key at its provider and leaves a record in the store. Concurrency is
//! bounded globally by a semaphore and per provider by a [`pacer`]. The daemon checks every
//! credential on its own schedule ([`scheduled`]); `keyrotd check` checks them all once
//! ([`sweep`]); both hand their results to the [`recorder`], which writes them in batches.
//! A transient outcome (rate limited, unreachable) never touches validity: it is recorded
//! as the check status and retried with capped exponential backoff, honouring Retry-After
//! ([`retry`]).

mod pacer;
mod recorder;
mod retry;
mod scheduled;
mod sweep;

pub(crate) use pacer::Pacer;
pub(crate) use scheduled::ScheduledChecks;

use crate::clock::Clock;
use crate::model::CheckStatus;
use crate::providers::{CheckReport, Provider, ProviderAdapters};
use crate::store::{CheckRecord, SealedKey, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one credential is checked with.
#[derive(Clone)]
pub struct CheckTarget {
    /// Held for the daemon's whole life: one allocation, no spare capacity.
    pub credential: Arc<str>,
    /// One allocation per provider, shared by its credentials.
    pub provider_name: Arc<str>,
    pub provider: Arc<dyn Provider>,
    pub pacer: Arc<Pacer>,
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    #[error("credential {0:?} has no current key")]
    NoCurrentKey(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A check's outcome and the record it leaves in the store, before it is written.
struct Probed {
    outcome: CheckOutcome,
    record: CheckRecord,
}

/// The outcome of checking one credential now.
#[derive(Debug, Clone)]
pub(crate) struct CheckOutcome {
    pub(crate) credential: String,
    pub(crate) version_id: i64,
    pub(crate) fingerprint: String,
    pub(crate) report: CheckReport,
}

/// The check targets of every credential, with only the checking adapters built (the CLI's
/// `keyrotd check`; the daemon shares its adapters with rotations: [`targets_from`]).
pub(crate) fn build_targets(
    config: &crate::config::Config,
    telemetry: &crate::providers::ProviderTelemetry,
) -> Result<Vec<CheckTarget>, crate::providers::ProviderError> {
    Ok(targets_from(
        config,
        &crate::providers::build_checkers(config, telemetry)?,
    ))
}

/// The check targets of every credential, on adapters already built.
///
/// One pacer per provider, shared by every credential of that provider, so the provider's
/// request rate is bounded whatever the number of keys.
pub fn targets_from(
    config: &crate::config::Config,
    adapters: &HashMap<String, ProviderAdapters>,
) -> Vec<CheckTarget> {
    let pacers: HashMap<&str, Arc<Pacer>> = config
        .providers
        .iter()
        .map(|provider| {
            (
                provider.name(),
                Arc::new(Pacer::new(provider.requests_per_second)),
            )
        })
        .collect();
    config
        .credentials
        .iter()
        .filter_map(|credential| {
            let adapters = adapters.get(credential.provider())?;
            Some(CheckTarget {
                credential: Arc::from(credential.name()),
                provider_name: adapters.name.clone(),
                provider: adapters.checker.clone(),
                pacer: pacers.get(credential.provider())?.clone(),
                interval: config.check_interval(credential),
            })
        })
        .collect()
}

/// Runs checks: all at once ([`Checker::check_all`]) or each on its schedule
/// ([`Checker::schedule`]).
pub(crate) struct Checker {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    concurrency: Arc<Semaphore>,
    max_concurrent: usize,
    jitter: f64,
}

impl Checker {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        max_concurrent: usize,
        jitter: f64,
    ) -> Self {
        Checker {
            store,
            clock,
            concurrency: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            jitter,
        }
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.concurrency
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// One check, not yet recorded.
    async fn probe(
        &self,
        target: &CheckTarget,
        permit: OwnedSemaphorePermit,
        key: Option<SealedKey>,
    ) -> Result<Probed, CheckError> {
        let (current, secret) = match key {
            Some(key) => {
                let secret = self.store.open_sealed(&key)?;
                (key.version, secret)
            }
            None => self
                .store
                .current_key(&target.credential)
                .await?
                .ok_or_else(|| CheckError::NoCurrentKey(target.credential.to_string()))?,
        };
        target.pacer.wait().await;
        // The check's time is when its probe went out, not when the answer came: a valid
        // answer says nothing about the key after that moment (the relay takes a key back
        // into its pool only on a check begun after it refused the key).
        let sent_at = self.clock.now();
        let report = target.provider.check(&secret).await;
        // The permit goes as soon as the answer is in: recording waits for the writer, and
        // the next check need not wait for that.
        drop(permit);
        drop(secret);
        let record = CheckRecord {
            status: report.status,
            detail: report.detail.clone(),
            at: sent_at,
            credits: report
                .credit
                .iter()
                .map(|c| (c.unit.clone(), c.remaining))
                .collect(),
            expires_at: report.expires_at,
        };
        if report.status == CheckStatus::Invalid {
            tracing::warn!(credential = %target.credential, fingerprint = %current.fingerprint, detail = %report.detail, "key is invalid");
        } else {
            tracing::debug!(credential = %target.credential, status = %report.status, detail = %report.detail, "checked");
        }
        let outcome = CheckOutcome {
            credential: target.credential.to_string(),
            version_id: current.id,
            fingerprint: current.fingerprint,
            report,
        };
        Ok(Probed { outcome, record })
    }
}
