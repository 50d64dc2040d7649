//! The rotation phase: the rotation engine of the `keyrotd` library, in this process,
//! against a simulated issuer, delivering to files, on the run's on-disk store.
//!
//! In process so that every external step (issue, list, revoke, verify, deliver) can be
//! timed by wrapping the provider, issuer and targets: what is left of a rotation's time is
//! the store and the engine.

use crate::setup::{config_text, Bench};
use crate::Args;
use async_trait::async_trait;
use keyrotd::clock::{Clock, SystemClock};
use keyrotd::config::Config;
use keyrotd::delivery::{Delivery, DeliveryError, Target};
use keyrotd::providers::{
    CheckReport, IssueRequest, IssuedKey, Issuer, Provider, ProviderError, ProviderTelemetry,
    RemoteKey,
};
use keyrotd::rotation::{self, CredentialRuntime, Engine};
use keyrotd::simulator::Simulator;
use keyrotd::store::Store;
use secrecy::SecretString;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

impl Bench {
    /// `--rotations` rotations one after another, then as many again with
    /// `--rotation-parallel` in flight.
    pub(crate) async fn rotation_phase(
        &self,
        args: &Args,
        simulator: &Simulator,
    ) -> anyhow::Result<Value> {
        let count = args.rotations.min(args.n);
        let times = Arc::new(StepTimes::default());
        let runtimes = self.timed_runtimes(args, simulator, count, &times)?;
        let store: Arc<dyn Store> = self.open_store().await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let engine = Arc::new(Engine::new(store.clone(), clock));

        let generation_before = store.generation().await?;
        let started = Instant::now();
        for rt in &runtimes {
            engine.rotate(rt, "bench").await?;
        }
        let sequential = started.elapsed().as_secs_f64();
        let commits = (store.generation().await? - generation_before) as f64 / count as f64;
        let sequential_times = times.take();

        let started = Instant::now();
        rotate_in_parallel(&engine, runtimes, args.rotation_parallel).await?;
        let parallel = started.elapsed().as_secs_f64();
        let parallel_times = times.take();
        store.close().await;
        let per_rotation_ms = |seconds: f64| seconds * 1e3 / count as f64;
        let seq_ms = per_rotation_ms(sequential);
        let provider_ms = sequential_times.total_ms() / count as f64;
        Ok(json!({
            "rotations": count,
            "sequential": {
                "per_second": count as f64 / sequential,
                "ms_per_rotation": seq_ms,
                "steps_ms_per_rotation": sequential_times.per(count),
                "store_and_engine_ms_per_rotation": seq_ms - provider_ms,
                "write_transactions_per_rotation": commits,
            },
            "parallel": {
                "in_flight": args.rotation_parallel,
                "per_second": count as f64 / parallel,
                "steps_ms_per_rotation": parallel_times.per(count),
            },
        }))
    }

    /// The first `count` credentials, configured to rotate against `simulator` and deliver
    /// to files, with every external step timed into `times`; sorted by name.
    fn timed_runtimes(
        &self,
        args: &Args,
        simulator: &Simulator,
        count: usize,
        times: &Arc<StepTimes>,
    ) -> anyhow::Result<Vec<Arc<CredentialRuntime>>> {
        let deliver = self.dir.join("deliver");
        std::fs::create_dir_all(&deliver)?;
        let config_path = self.dir.join("rotation.toml");
        std::fs::write(
            &config_path,
            config_text(
                &self.store_lines(),
                simulator,
                args.concurrency,
                count,
                Some((&self.management_key, &deliver)),
            ),
        )?;
        let config = Config::load(&config_path)?;
        let telemetry = ProviderTelemetry::new();
        let mut built: Vec<_> = rotation::build_runtimes(&config, &telemetry)?
            .into_values()
            .map(|rt| timed(&rt, times))
            .collect();
        built.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(built)
    }
}

/// Rotates every one of `runtimes` with `in_flight` workers taking the next from one queue.
async fn rotate_in_parallel(
    engine: &Arc<Engine>,
    runtimes: Vec<Arc<CredentialRuntime>>,
    in_flight: usize,
) -> anyhow::Result<()> {
    let queue = Arc::new(std::sync::Mutex::new(runtimes));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..in_flight.max(1) {
        let queue = queue.clone();
        let engine = engine.clone();
        workers.spawn(async move {
            loop {
                let next = queue.lock().unwrap().pop();
                let Some(rt) = next else { break };
                engine.rotate(&rt, "bench").await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// Time spent in each external step of the rotations, in nanoseconds.
#[derive(Default)]
struct StepTimes {
    issue: AtomicU64,
    list: AtomicU64,
    revoke: AtomicU64,
    verify: AtomicU64,
    deliver: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct StepTotals([f64; 5]);

impl StepTotals {
    fn total_ms(&self) -> f64 {
        self.0.iter().sum()
    }
    fn per(&self, count: usize) -> Value {
        let c = count.max(1) as f64;
        json!({
            "issue": self.0[0] / c,
            "list_orphans": self.0[1] / c,
            "revoke": self.0[2] / c,
            "verify": self.0[3] / c,
            "deliver_file": self.0[4] / c,
        })
    }
}

impl StepTimes {
    /// Runs `step`, adding its duration to `counter`.
    async fn time<T>(counter: &AtomicU64, step: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let result = step.await;
        counter.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }
    /// Totals in ms since the last take.
    fn take(&self) -> StepTotals {
        let ms = |c: &AtomicU64| c.swap(0, Ordering::Relaxed) as f64 / 1e6;
        StepTotals([
            ms(&self.issue),
            ms(&self.list),
            ms(&self.revoke),
            ms(&self.verify),
            ms(&self.deliver),
        ])
    }
}

struct TimedProvider(Arc<dyn Provider>, Arc<StepTimes>);

#[async_trait]
impl Provider for TimedProvider {
    async fn check(&self, key: &SecretString) -> CheckReport {
        StepTimes::time(&self.1.verify, self.0.check(key)).await
    }
}

struct TimedIssuer(Arc<dyn Issuer>, Arc<StepTimes>);

#[async_trait]
impl Issuer for TimedIssuer {
    async fn issue(&self, request: &IssueRequest<'_>) -> Result<IssuedKey, ProviderError> {
        StepTimes::time(&self.1.issue, self.0.issue(request)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<RemoteKey>, ProviderError> {
        StepTimes::time(&self.1.list, self.0.list(prefix)).await
    }
    async fn revoke(&self, remote_id: &str) -> Result<(), ProviderError> {
        StepTimes::time(&self.1.revoke, self.0.revoke(remote_id)).await
    }
}

struct TimedTarget(Arc<dyn Target>, Arc<StepTimes>);

#[async_trait]
impl Target for TimedTarget {
    fn describe(&self) -> String {
        self.0.describe()
    }
    async fn deliver(&self, delivery: &Delivery<'_>) -> Result<(), DeliveryError> {
        StepTimes::time(&self.1.deliver, self.0.deliver(delivery)).await
    }
}

fn timed(rt: &CredentialRuntime, times: &Arc<StepTimes>) -> Arc<CredentialRuntime> {
    Arc::new(CredentialRuntime {
        name: rt.name.clone(),
        provider_name: rt.provider_name.clone(),
        provider: Arc::new(TimedProvider(rt.provider.clone(), times.clone())),
        issuer: rt
            .issuer
            .clone()
            .map(|i| Arc::new(TimedIssuer(i, times.clone())) as Arc<dyn Issuer>),
        targets: rt
            .targets
            .iter()
            .map(|t| Arc::new(TimedTarget(t.clone(), times.clone())) as Arc<dyn Target>)
            .collect(),
        revoker: rt.revoker.clone(),
        policy: rt.policy.clone(),
        retry: rt.retry,
        verify_timeout: rt.verify_timeout,
    })
}
