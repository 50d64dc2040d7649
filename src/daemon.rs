//! The daemon's wiring: open the store (waiting while a PostgreSQL database is
//! unreachable), bind the port, serve the endpoint, start the relay when `[relay]` is
//! configured (on every replica; it asks the leading one's checks to look at a key an
//! upstream refused), tell systemd, claim the leadership lease
//! ([`leadership`]) and run the checks, the rotations and the retention pruning only while
//! this replica leads ([`work`]), then wait for signals. SIGHUP re-reads the config (a broken
//! one, or one with a delivery target that cannot work, is logged and the running one stays); SIGTERM/SIGINT stop the work, release the lease
//! and stop. `retention.rs` prunes the audit trail past `[daemon] events_retention`.

use crate::checks::CheckTarget;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DaemonConfig, LeaderTiming};
use crate::heartbeat::{self, Heartbeat, Ticker};
use crate::metrics::management_keys::{management_keys, ManagementKeyAges, ManagementKeyRef};
use crate::metrics::server::{self, HttpState};
use crate::metrics::Metrics;
use crate::providers::ProviderTelemetry;
use crate::relay::CheckRequests;
use crate::store::{credential_specs, open_store, MasterKeyNeed, Store, StoreLocation};
use crate::web_config::WebConfig;
use anyhow::Context;
use leadership::{Elector, LeaderGauges};
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use work::{build_work, Runtimes, Work};

/// Everything `keyrotd run` needs, resolved from the command line and the config.
pub(crate) struct DaemonSettings {
    pub config_path: PathBuf,
    pub config: Config,
    /// The SQLite file or the PostgreSQL database (`[store]`).
    pub location: StoreLocation,
    pub master_key: Option<PathBuf>,
    /// TLS and basic auth for the HTTP endpoint (`--web.config.file`), loaded at start-up.
    pub web_config: Option<Arc<WebConfig>>,
}

fn notify(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

fn notify_status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// Runs until SIGTERM or SIGINT.
pub(crate) async fn run(settings: DaemonSettings) -> anyhow::Result<()> {
    let DaemonSettings {
        config_path,
        config,
        location,
        master_key,
        web_config,
    } = settings;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Held for the daemon's lifetime: `master-key rotate` refuses while it is. SQLite only:
    // replicas on PostgreSQL share no file (the store's master-key fence is what protects).
    let _database_lock = match &location {
        StoreLocation::Sqlite(database) => crate::store::lock_for_daemon(database).await?,
        StoreLocation::Postgres(_) => None,
    };
    // Installed before anything slow, so a SIGTERM while waiting for the database stops it.
    let mut signals = Signals::install()?;
    let Some(store) = open_synced_store(
        &location,
        master_key.as_deref(),
        &config,
        clock.as_ref(),
        &mut signals,
    )
    .await?
    else {
        tracing::info!("stopped while waiting for the database");
        return Ok(());
    };
    let listener = bind(&config.daemon).await?;
    let heartbeat = Arc::new(Heartbeat::new(clock.clone()));
    let metrics = Arc::new(Metrics::new(clock.clone(), heartbeat.clone()));
    let telemetry = ProviderTelemetry::register(metrics.registry())?;
    let mut work = Work::new(&config, store.clone(), clock.clone(), &telemetry)?;
    metrics
        .registry()
        .register(Box::new(work.unplaced_keys_gauge()))?;
    let instance = config.daemon.instance();
    let gauges = LeaderGauges::register(metrics.registry(), &instance)?;
    let reloads = reloads::ReloadGauges::register(metrics.registry(), clock.now())?;
    let management_key_ages = ManagementKeyAges::new(management_keys(&config));
    metrics
        .registry()
        .register(Box::new(management_key_ages.clone()))?;
    let (check_requests, mut checks_requested) = CheckRequests::channel();
    let relay = crate::relay::start(
        &config,
        store.clone(),
        clock.clone(),
        metrics.registry(),
        check_requests,
    )
    .await?;
    if let Some(relay) = &relay {
        tracing::info!(relay_address = %relay.address, "relay listening");
    }
    let timing = config.store.leader_timing();
    // Only the daemon section is consulted again (a reload warns about what needs a
    // restart): the credentials and providers live on in their runtimes, and keeping the
    // whole parsed file would hold every credential's configuration a second time.
    let mut running = Running::from(config);
    let ticker = Ticker::start(heartbeat.clone());
    let state = HttpState {
        metrics,
        store: store.clone(),
        heartbeat: heartbeat.clone(),
    };
    let endpoint = Endpoint::spawn(listener, state, web_config.clone())?;
    announce_ready(
        endpoint.address,
        web_config.as_deref(),
        &location,
        &instance,
        running.credentials,
    );
    let watchdog = sd_notify::watchdog_enabled().map(|interval| {
        heartbeat::spawn_watchdog(heartbeat.clone(), interval, || {
            notify(&[NotifyState::Watchdog])
        })
    });
    // Checks and rotations start only once this replica leads.
    let (elector, mut acting) = Elector::new(
        store.clone() as Arc<dyn crate::store::LeaderStore>,
        leadership::holder_identity(&instance),
        timing,
        gauges,
        Box::new(notify_status),
    );
    let elector = elector.spawn();

    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                DaemonSignal::Stop => break,
                DaemonSignal::Reload => {
                    notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?]);
                    reload_or_keep(
                        &config_path,
                        &mut running,
                        &mut work,
                        store.as_ref(),
                        clock.as_ref(),
                        &telemetry,
                        &reloads,
                    )
                    .await;
                    management_key_ages.track(&running.management_keys);
                    notify(&[NotifyState::Ready]);
                }
            },
            changed = acting.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the leadership loop ended");
                }
                let term = acting.borrow_and_update().clone();
                work.follow(term).await;
            }
            Some(credential) = checks_requested.next() => work.check_now(&credential),
        }
    }

    tracing::info!("stopping");
    notify(&[NotifyState::Stopping]);
    if let Some(task) = watchdog {
        task.abort();
    }
    if let Some(relay) = relay {
        relay.stop().await;
    }
    stop_leading(elector, acting, &mut work, store.as_ref(), timing).await;
    endpoint.stop().await;
    ticker.stop().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM: the work stops first, then the lease is given up, so a standby takes over at its
/// next claim instead of after the lease runs out.
async fn stop_leading(
    elector: JoinHandle<()>,
    acting: tokio::sync::watch::Receiver<Option<crate::store::LeaderToken>>,
    work: &mut Work,
    store: &dyn Store,
    timing: LeaderTiming,
) {
    elector.abort();
    let _ = elector.await;
    work.stop().await;
    let token = acting.borrow().clone();
    if let Some(token) = token {
        // Bounded: a store that does not answer must not hold the stop up past the lease.
        match tokio::time::timeout(timing.renew_deadline, store.release_leadership(&token)).await {
            Ok(Ok(())) => tracing::info!(epoch = token.epoch, "leadership released"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot release the leadership lease; a standby takes over when it expires")
            }
            Err(_) => tracing::warn!(
                "releasing the leadership lease timed out; a standby takes over when it expires"
            ),
        }
    }
}

/// The store, opened for the daemon and brought in line with the config's credentials;
/// `None` if a stop signal came while the database was unreachable.
async fn open_synced_store(
    location: &StoreLocation,
    master_key: Option<&Path>,
    config: &Config,
    clock: &dyn Clock,
    signals: &mut Signals,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let opening = open_store_patiently(location, master_key, signals);
    let Some(store) = opening.await? else {
        return Ok(None);
    };
    store
        .sync_credentials(&credential_specs(config), clock.now())
        .await?;
    // The id in the provider-side names of the keys this database issues.
    let installation = store.installation_id().await?;
    tracing::info!(%installation, "store opened");
    Ok(Some(store))
}

/// Opens the store, waiting while the database is unavailable ([`patience`]); `None` if a
/// stop signal came meanwhile.
async fn open_store_patiently(
    location: &StoreLocation,
    master_key: Option<&Path>,
    signals: &mut Signals,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let stop = async { while let DaemonSignal::Reload = signals.next().await {} };
    let opened = patience::retry_while_unavailable(
        || open_store(location, master_key, MasterKeyNeed::IfSecretsStored),
        patience::BACKOFF,
        stop,
        notify_status,
    )
    .await?;
    Ok(opened)
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
    location: &StoreLocation,
    instance: &str,
    credentials: usize,
) {
    let tls = web_config.is_some_and(|w| w.tls_acceptor().is_some());
    let basic_auth = web_config.is_some_and(|w| w.requires_auth());
    tracing::info!(
        listen_address = %address,
        tls,
        basic_auth,
        store = %describe(location),
        %instance,
        credentials,
        "keyrotd ready"
    );
    let status = format!("serving metrics on {address}; {credentials} credentials; standby until the leadership lease is claimed");
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// The store as it may be logged: the SQLite path, or the PostgreSQL URL (no password is
/// ever in it).
fn describe(location: &StoreLocation) -> String {
    match location {
        StoreLocation::Sqlite(path) => path.display().to_string(),
        StoreLocation::Postgres(settings) => settings.describe(),
    }
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

/// What the daemon keeps of its config once the checks and rotations are built from it.
struct Running {
    daemon: DaemonConfig,
    /// Read at start-up only: a reload warns when it changed.
    store: crate::config::StoreConfig,
    /// Read at start-up only, like `store`.
    relay: Option<crate::config::RelayConfig>,
    credentials: usize,
    /// Whose files the management-key age gauge looks at.
    management_keys: Vec<ManagementKeyRef>,
}

impl From<Config> for Running {
    fn from(config: Config) -> Running {
        Running {
            management_keys: management_keys(&config),
            credentials: config.credentials.len(),
            relay: config.relay.map(|r| r.into_inner()),
            daemon: config.daemon,
            store: config.store,
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
    reloads: &reloads::ReloadGauges,
) {
    match reload(path, running, store, clock, telemetry).await {
        Ok((reloaded, targets, runtimes)) => {
            *running = reloaded;
            work.replace(targets, runtimes);
            reloads.succeeded(clock.now());
            tracing::info!(credentials = running.credentials, "configuration reloaded");
        }
        Err(error) => {
            reloads.failed();
            tracing::error!(
                error = %format!("{error:#}"),
                "reload failed; keeping the running configuration"
            )
        }
    }
}

/// Builds what a reload of `config` would build (every provider's adapters, check targets,
/// rotation runtimes) and drops it: `keyrotd reload` runs this before it signals the daemon,
/// so a config the daemon would refuse fails the reload command itself.
pub(crate) fn check_reloadable(config: &Config) -> anyhow::Result<()> {
    let telemetry = ProviderTelemetry::register(&prometheus::Registry::new())?;
    build_work(config, &telemetry).map(drop)
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
    // A target that cannot work is refused here as at start-up, not found at the next
    // rotation. A few file-system calls per target, on this task: the reload blocks the
    // signal loop anyway.
    let problems = crate::delivery::preflight::preflight(&config);
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "{} delivery target problem(s): {}",
            problems.len(),
            problems.join("; ")
        );
    }
    if config.daemon.listen_address() != running.daemon.listen_address() {
        tracing::warn!("listen_address changed; it takes effect at the next restart");
    }
    if config.daemon.web_config_file != running.daemon.web_config_file {
        tracing::warn!("web_config_file changed; it takes effect at the next restart");
    }
    if config.daemon.events_retention != running.daemon.events_retention {
        tracing::warn!("events_retention changed; it takes effect at the next restart");
    }
    if config.daemon.instance() != running.daemon.instance() {
        tracing::warn!("instance changed; it takes effect at the next restart");
    }
    if config.relay() != running.relay.as_ref() {
        tracing::warn!("[relay] changed; it takes effect at the next restart");
    }
    if config.store != running.store {
        tracing::warn!("[store] changed; it takes effect at the next restart");
    }
    store
        .sync_credentials(&credential_specs(&config), clock.now())
        .await?;
    Ok((Running::from(config), targets, runtimes))
}

mod leadership;
mod patience;
mod reloads;
mod retention;
#[cfg(test)]
mod tests;
mod work;
