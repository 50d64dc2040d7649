//! The daemon's wiring: open the store, bind the port, start the scheduler, tell systemd,
//! then wait for signals. SIGHUP re-reads the config (a broken one is logged and the running
//! one stays); SIGTERM/SIGINT stop gracefully.

use crate::checks::{self, CheckTarget, Checker};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, DaemonConfig};
use crate::http::{self, Heartbeat, HttpState, HEARTBEAT_MAX_AGE};
use crate::metrics::Metrics;
use crate::providers::{self, ProviderTelemetry};
use crate::rotation::{self, CredentialRuntime, Engine};
use crate::scheduler::{Scheduler, HEARTBEAT_INTERVAL};
use crate::store::{credential_specs, open_store, CredentialStore, MasterKeyNeed, Store};
use crate::web_config::WebConfig;
use anyhow::Context;
use sd_notify::NotifyState;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Everything `keyrotd run` needs, resolved from the command line and the config.
pub struct DaemonSettings {
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
pub async fn run(settings: DaemonSettings) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = settings.config;
    let store = Arc::new(
        open_store(
            &settings.database,
            settings.master_key.as_deref(),
            MasterKeyNeed::IfSecretsStored,
        )
        .await?,
    );
    store
        .sync_credentials(&credential_specs(&config), clock.now())
        .await?;
    let address = config.daemon.listen_address();
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let bound = listener.local_addr()?;

    let metrics = Arc::new(Metrics::new(clock.clone()));
    let telemetry = ProviderTelemetry::register(metrics.registry())?;
    let checker = Arc::new(Checker::new(
        store.clone() as Arc<dyn Store>,
        clock.clone(),
        config.checks.max_concurrent,
        config.checks.jitter,
    ));
    // One set of adapters (and HTTP clients) per provider, for checks and rotations alike.
    let adapters = providers::build_all(&config, &telemetry)?;
    let mut check_tasks = checker.schedule(checks::targets_from(&config, &adapters));
    let engine = Arc::new(Engine::new(store.clone() as Arc<dyn Store>, clock.clone()));
    let mut rotation_tasks = spawn_rotations(&engine, rotation::runtimes_from(&config, &adapters)?);
    // The targets and runtimes hold the adapters now; the map is not needed for the
    // daemon's life.
    drop(adapters);
    // Only the daemon section is consulted again (a reload warns about what needs a
    // restart): the credentials and providers live on in their runtimes, and keeping the
    // whole parsed file would double the daemon's per-credential memory.
    let mut running = Running::from(config);
    let heartbeat = Arc::new(Heartbeat::default());
    let scheduler = Scheduler::start(clock.clone(), heartbeat.clone(), metrics.clone());

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_state = Arc::new(HttpState {
        metrics: metrics.clone(),
        store: store.clone() as Arc<dyn Store>,
        heartbeat: heartbeat.clone(),
        clock: clock.clone(),
    });
    let tls = settings
        .web_config
        .as_ref()
        .is_some_and(|w| w.tls_acceptor().is_some());
    let basic_auth = settings
        .web_config
        .as_ref()
        .is_some_and(|w| w.requires_auth());
    let server = tokio::spawn(http::serve_with(
        listener,
        http_state,
        settings.web_config.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));

    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    tracing::info!(
        listen_address = %bound,
        tls,
        basic_auth,
        database = %settings.database.display(),
        credentials = running.credentials,
        "keyrotd ready"
    );
    let status = format!(
        "serving metrics on {bound}; {} credentials",
        running.credentials
    );
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let watchdog = sd_notify::watchdog_enabled().map(|interval| {
        let heartbeat = heartbeat.clone();
        let clock = clock.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval / 2);
            loop {
                ticker.tick().await;
                // Feed the watchdog only while the scheduler proves it is alive: a stuck
                // scheduler should get the service restarted.
                // The scheduler beats every HEARTBEAT_INTERVAL: a shorter freshness window
                // would starve a short watchdog between two healthy beats.
                let max_age = HEARTBEAT_MAX_AGE.min(interval).max(2 * HEARTBEAT_INTERVAL);
                if heartbeat.is_fresh(clock.now(), max_age) {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::error!("scheduler heartbeat is stale; not feeding the watchdog");
                }
            }
        })
    });

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                notify(&[NotifyState::Reloading, NotifyState::monotonic_usec_now()?]);
                match reload(&settings.config_path, &running, store.as_ref(), clock.as_ref(), &telemetry).await {
                    Ok((reloaded, targets, runtimes)) => {
                        running = reloaded;
                        check_tasks.abort();
                        check_tasks = checker.schedule(targets);
                        // A rotation cut short here resumes from its last committed step.
                        rotation_tasks.abort();
                        rotation_tasks = spawn_rotations(&engine, runtimes);
                        tracing::info!(credentials = running.credentials, "configuration reloaded");
                    }
                    Err(error) => tracing::error!(error = %format!("{error:#}"), "reload failed; keeping the running configuration"),
                }
                notify(&[NotifyState::Ready]);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    tracing::info!("stopping");
    notify(&[NotifyState::Stopping]);
    if let Some(task) = watchdog {
        task.abort();
    }
    check_tasks.abort();
    rotation_tasks.abort();
    let _ = check_tasks.await;
    let _ = rotation_tasks.await;
    let _ = stop_http.send(());
    let _ = server.await;
    scheduler.shutdown().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
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

async fn reload(
    path: &Path,
    running: &Running,
    store: &dyn Store,
    clock: &dyn Clock,
    telemetry: &ProviderTelemetry,
) -> anyhow::Result<(Running, Vec<CheckTarget>, Runtimes)> {
    let config = Config::load(path)?;
    // Build everything before changing anything, so a bad provider section changes nothing.
    let adapters = providers::build_all(&config, telemetry)?;
    let targets = checks::targets_from(&config, &adapters);
    let runtimes = rotation::runtimes_from(&config, &adapters)?;
    if config.daemon.listen_address() != running.daemon.listen_address() {
        tracing::warn!("listen_address changed; it takes effect at the next restart");
    }
    if config.daemon.web_config_file != running.daemon.web_config_file {
        tracing::warn!("web_config_file changed; it takes effect at the next restart");
    }
    store
        .sync_credentials(&credential_specs(&config), clock.now())
        .await?;
    Ok((Running::from(config), targets, runtimes))
}

type Runtimes = std::collections::HashMap<String, Arc<CredentialRuntime>>;

/// The rotation schedule of every credential (one task; see `rotation::schedule`).
fn spawn_rotations(engine: &Arc<Engine>, runtimes: Runtimes) -> tokio::task::JoinHandle<()> {
    rotation::schedule::spawn(engine.clone(), runtimes.into_values().collect())
}
