//! The daemon's wiring: open the store, bind the port, start the checks, the rotations and
//! the heartbeat, tell systemd, then wait for signals. SIGHUP re-reads the config (a broken
//! one is logged and the running one stays); SIGTERM/SIGINT stop gracefully. `retention.rs`
//! prunes the audit trail past `[daemon] events_retention`.

use crate::checks::{self, CheckTarget, Checker, ScheduledChecks};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DaemonConfig};
use crate::heartbeat::{self, Heartbeat, Ticker};
use crate::metrics::server::{self, HttpState};
use crate::metrics::Metrics;
use crate::providers::{self, ProviderTelemetry};
use crate::rotation::{self, CredentialRuntime, Engine};
use crate::store::InstallationStore as _;
use crate::store::{
    credential_specs, open_store, CredentialStore, MasterKeyNeed, SqliteStore, Store,
};
use crate::web_config::WebConfig;
use anyhow::Context;
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;

/// Everything `keyrotd run` needs, resolved from the command line and the config.
pub(crate) struct DaemonSettings {
    pub config_path: PathBuf,
    pub config: Config,
    pub database: PathBuf,
    pub master_key: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoint (`--web.config.file`), loaded at start-up.
    pub web_config: Option<Arc<WebConfig>>,
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// Runs until SIGTERM or SIGINT.
pub(crate) async fn run(settings: DaemonSettings) -> anyhow::Result<()> {
    let DaemonSettings {
        config_path,
        config,
        database,
        master_key,
        web_config,
    } = settings;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Held for the daemon's lifetime: `master-key rotate` refuses while it is.
    let _database_lock = crate::store::lock_for_daemon(&database).await?;
    let store =
        open_synced_store(&database, master_key.as_deref(), &config, clock.as_ref()).await?;
    let listener = bind(&config.daemon).await?;
    let heartbeat = Arc::new(Heartbeat::new(clock.clone()));
    let metrics = Arc::new(Metrics::new(clock.clone(), heartbeat.clone()));
    let telemetry = ProviderTelemetry::register(metrics.registry())?;
    let mut work = Work::start(&config, store.clone(), clock.clone(), &telemetry)?;
    metrics
        .registry()
        .register(Box::new(work.engine.unplaced_keys_gauge()))?;
    // Only the daemon section is consulted again (a reload warns about what needs a
    // restart): the credentials and providers live on in their runtimes, and keeping the
    // whole parsed file would hold every credential's configuration a second time.
    // Pruned at start-up and daily; a reload does not change the retention (daemon section).
    let pruning = retention::spawn(
        store.clone(),
        clock.clone(),
        config.daemon.events_retention.into(),
    );
    let mut running = Running::from(config);
    let ticker = Ticker::start(heartbeat.clone());
    let state = HttpState {
        metrics,
        store: store.clone(),
        heartbeat: heartbeat.clone(),
    };
    let endpoint = Endpoint::spawn(listener, state, web_config.clone())?;
    // Installed before READY, so a signal sent as soon as systemd sees READY is handled.
    let mut signals = Signals::install()?;
    announce_ready(
        endpoint.address,
        web_config.as_deref(),
        &database,
        running.credentials,
    );
    let watchdog = sd_notify::watchdog_enabled().map(|interval| {
        heartbeat::spawn_watchdog(heartbeat.clone(), interval, || {
            notify(&[NotifyState::Watchdog])
        })
    });

    while let DaemonSignal::Reload = signals.next().await {
        notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?]);
        reload_or_keep(
            &config_path,
            &mut running,
            &mut work,
            store.as_ref(),
            clock.as_ref(),
            &telemetry,
        )
        .await;
        notify(&[NotifyState::Ready]);
    }

    tracing::info!("stopping");
    notify(&[NotifyState::Stopping]);
    if let Some(task) = watchdog {
        task.abort();
    }
    if let Some(task) = pruning {
        task.abort();
    }
    work.stop().await;
    endpoint.stop().await;
    ticker.stop().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The store, opened for the daemon and brought in line with the config's credentials.
async fn open_synced_store(
    database: &Path,
    master_key: Option<&Path>,
    config: &Config,
    clock: &dyn Clock,
) -> anyhow::Result<Arc<SqliteStore>> {
    let store = open_store(database, master_key, MasterKeyNeed::IfSecretsStored).await?;
    store
        .sync_credentials(&credential_specs(config), clock.now())
        .await?;
    // The id in the provider-side names of the keys this database issues.
    let installation = crate::store::InstallationStore::installation_id(&store).await?;
    tracing::info!(%installation, "store opened");
    Ok(Arc::new(store))
}

async fn bind(daemon: &DaemonConfig) -> anyhow::Result<TcpListener> {
    let address = daemon.listen_address();
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// Logs that the daemon is ready and tells systemd.
fn announce_ready(
    address: SocketAddr,
    web_config: Option<&WebConfig>,
    database: &Path,
    credentials: usize,
) {
    let tls = web_config.is_some_and(|w| w.tls_acceptor().is_some());
    let basic_auth = web_config.is_some_and(|w| w.requires_auth());
    tracing::info!(
        listen_address = %address,
        tls,
        basic_auth,
        database = %database.display(),
        credentials,
        "keyrotd ready"
    );
    let status = format!("serving metrics on {address}; {credentials} credentials");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The metrics endpoint, running on its own task.
struct Endpoint {
    address: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Endpoint {
    fn spawn(
        listener: TcpListener,
        state: HttpState,
        web_config: Option<Arc<WebConfig>>,
    ) -> anyhow::Result<Endpoint> {
        let address = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            Arc::new(state),
            web_config,
            async {
                let _ = stopped.await;
            },
        ));
        Ok(Endpoint {
            address,
            stop,
            task,
        })
    }

    /// Stops accepting and waits for open scrapes (bounded).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The signals the daemon acts on.
enum DaemonSignal {
    /// SIGHUP: re-read the config.
    Reload,
    /// SIGTERM or SIGINT: stop gracefully.
    Stop,
}

struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> DaemonSignal {
        tokio::select! {
            _ = self.hangup.recv() => DaemonSignal::Reload,
            _ = self.terminate.recv() => DaemonSignal::Stop,
            _ = self.interrupt.recv() => DaemonSignal::Stop,
        }
    }
}

/// The checks and rotations of the running configuration, as tasks.
struct Work {
    checker: Arc<Checker>,
    engine: Arc<Engine>,
    checks: ScheduledChecks,
    rotations: JoinHandle<()>,
}

impl Work {
    fn start(
        config: &Config,
        store: Arc<SqliteStore>,
        clock: Arc<dyn Clock>,
        telemetry: &ProviderTelemetry,
    ) -> anyhow::Result<Work> {
        let store = store as Arc<dyn Store>;
        let checker = Arc::new(Checker::new(
            store.clone(),
            clock.clone(),
            config.checks.max_concurrent,
            config.checks.jitter,
        ));
        let engine = Arc::new(
            Engine::new(store, clock)
                .with_role("daemon")
                .with_lease(config.daemon.rotation_lease.0),
        );
        let (targets, runtimes) = build_work(config, telemetry)?;
        let checks = checker.schedule(targets);
        let rotations = spawn_rotations(&engine, runtimes);
        Ok(Work {
            checker,
            engine,
            checks,
            rotations,
        })
    }

    /// Swaps in the checks and rotations of a reloaded config.
    fn replace(&mut self, targets: Vec<CheckTarget>, runtimes: Runtimes) {
        self.checks.abort();
        self.checks = self.checker.schedule(targets);
        // A rotation cut short here resumes from its last committed step.
        self.rotations.abort();
        self.rotations = spawn_rotations(&self.engine, runtimes);
    }

    async fn stop(self) {
        self.checks.abort();
        self.rotations.abort();
        self.checks.stopped().await;
        let _ = self.rotations.await;
    }
}

/// The check targets and rotation runtimes of `config`, sharing one set of adapters (and
/// HTTP clients) per provider. Once built, they hold the adapters; the map is dropped.
fn build_work(
    config: &Config,
    telemetry: &ProviderTelemetry,
) -> anyhow::Result<(Vec<CheckTarget>, Runtimes)> {
    let adapters = providers::build_all(config, telemetry)?;
    let targets = checks::targets_from(config, &adapters);
    let runtimes = rotation::runtimes_from(config, &adapters)?;
    Ok((targets, runtimes))
}

/// What the daemon keeps of its config once the checks and rotations are built from it.
struct Running {
    daemon: DaemonConfig,
    credentials: usize,
}

impl From<Config> for Running {
    fn from(config: Config) -> Running {
        Running {
            credentials: config.credentials.len(),
            daemon: config.daemon,
        }
    }
}

/// SIGHUP: swaps in the checks and rotations of the re-read config, or logs why it cannot
/// and keeps the running ones.
async fn reload_or_keep(
    path: &Path,
    running: &mut Running,
    work: &mut Work,
    store: &dyn Store,
    clock: &dyn Clock,
    telemetry: &ProviderTelemetry,
) {
    match reload(path, running, store, clock, telemetry).await {
        Ok((reloaded, targets, runtimes)) => {
            *running = reloaded;
            work.replace(targets, runtimes);
            tracing::info!(credentials = running.credentials, "configuration reloaded");
        }
        Err(error) => tracing::error!(
            error = %format!("{error:#}"),
            "reload failed; keeping the running configuration"
        ),
    }
}

/// Reads the config again and builds its checks and rotations, changing nothing yet.
async fn reload(
    path: &Path,
    running: &Running,
    store: &dyn Store,
    clock: &dyn Clock,
    telemetry: &ProviderTelemetry,
) -> anyhow::Result<(Running, Vec<CheckTarget>, Runtimes)> {
    let config = Config::load(path)?;
    // Build everything before changing anything, so a bad provider section changes nothing.
    let (targets, runtimes) = build_work(&config, telemetry)?;
    if config.daemon.listen_address() != running.daemon.listen_address() {
        tracing::warn!("listen_address changed; it takes effect at the next restart");
    }
    if config.daemon.web_config_file != running.daemon.web_config_file {
        tracing::warn!("web_config_file changed; it takes effect at the next restart");
    }
    if config.daemon.events_retention != running.daemon.events_retention {
        tracing::warn!("events_retention changed; it takes effect at the next restart");
    }
    store
        .sync_credentials(&credential_specs(&config), clock.now())
        .await?;
    Ok((Running::from(config), targets, runtimes))
}

type Runtimes = std::collections::HashMap<String, Arc<CredentialRuntime>>;

/// The rotation schedule of every credential (one task; see `rotation::pass_queue`).
fn spawn_rotations(engine: &Arc<Engine>, runtimes: Runtimes) -> JoinHandle<()> {
    rotation::pass_queue::spawn(engine.clone(), runtimes.into_values().collect())
}

mod retention;
#[cfg(test)]
mod tests;
