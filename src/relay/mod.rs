//! The local relay: applications send their provider requests here without a key; the
//! relay authenticates the application by its own token (or, on a Unix socket, its uid),
//! injects the key of a credential pool, streams the answer back and fails over across keys.
//! Applications point their SDK's `base_url` at it and never hold a key.
//!
//! Not to be confused with `providers/relay.rs`, the provider kind for third-party relay
//! *APIs* (a vendor keyrotd checks and rotates keys at).
//!
//! # Layout
//!
//! - this file: the relay as the daemon starts and stops it, its routes, and the accept
//!   loop (TCP on loopback or a Unix socket given its mode and group, a bounded number of
//!   connections, HTTP/1.1);
//! - [`auth`]: clients, their tokens' hashes, peer uids and rate limits;
//! - [`pool`]: a route's keys and their health (cool-down after 429, out after 401/403);
//! - [`refresh`]: the pools' view of the store, re-read when its generation moves;
//! - [`proxy`]: one request: route, client, key, upstream, failover, answer;
//! - [`body`], [`headers`]: bodies streamed frame by frame, headers and URLs for upstream;
//! - [`usage`]: token usage read from JSON answers and event streams as they pass;
//! - [`metrics`]: the `keyrotd_relay_*` series.
//!
//! The relay runs inside the daemon, on every replica (it reads keys, it changes nothing),
//! whether or not the replica leads.

mod auth;
mod body;
mod headers;
mod metrics;
mod pool;
mod proxy;
mod refresh;
mod usage;

pub use auth::new_token;

use crate::clock::Clock;
use crate::config::{ClientConfig, Config, KeyHeader, RelayConfig, RelayListen, OVERFLOW_UID};
use crate::store::Store;
use anyhow::Context;
use auth::{ClientId, Clients};
use body::UpstreamBody;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics::{CooldownGauge, RelayMetrics, RouteKeysGauge, RouteSeries};
use pool::Pool;
use refresh::{Known, PooledCredential};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a stop waits for requests in flight (streams included) before closing them.
const DRAIN: Duration = Duration::from_secs(10);
/// How long to wait before accepting again after an accept error (EMFILE and the like).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

type Upstream = Client<hyper_rustls::HttpsConnector<HttpConnector>, UpstreamBody>;

/// How long after a key is taken out of a pool its check is asked for. Check times are
/// whole seconds and only a check begun in a later second than the take-out brings the key
/// back ([`pool`]): a check sent sooner could find the key valid and still leave it out
/// until the next scheduled one.
const CHECK_AFTER_TAKE_OUT: Duration = Duration::from_secs(1);

/// Asks the daemon to check a credential whose key was refused upstream, a second after the
/// refusal ([`CHECK_AFTER_TAKE_OUT`]). The leader's check schedule takes it, and runs it
/// after the check of that credential under way, if any. A replica that does not lead (a
/// standby, in HA) does not act on it, nor pass it on: the leader's schedule decides when
/// the key is checked next, and until a check begun after the refusal finds it valid the
/// key stays out of this replica's pool.
#[derive(Clone)]
pub struct CheckRequests(mpsc::UnboundedSender<(Arc<str>, Instant)>);

impl CheckRequests {
    pub fn channel() -> (CheckRequests, RequestedChecks) {
        let (sender, requests) = mpsc::unbounded_channel();
        let receiver = RequestedChecks {
            requests,
            waiting: None,
        };
        (CheckRequests(sender), receiver)
    }

    fn request(&self, credential: &Arc<str>) {
        let at = Instant::now() + CHECK_AFTER_TAKE_OUT;
        let _ = self.0.send((credential.clone(), at));
    }
}

/// The daemon's end of [`CheckRequests`].
pub struct RequestedChecks {
    requests: mpsc::UnboundedReceiver<(Arc<str>, Instant)>,
    /// A request taken from the channel, waiting for its time.
    waiting: Option<(Arc<str>, Instant)>,
}

impl RequestedChecks {
    /// The next credential to check, once its time has come; `None` once no relay can ask.
    /// Requests come in the order of their times (each waits as long). Cancel-safe, for a
    /// `select!`: a request taken from the channel stays here until it is handed over.
    pub async fn next(&mut self) -> Option<Arc<str>> {
        if self.waiting.is_none() {
            self.waiting = Some(self.requests.recv().await?);
        }
        if let Some((_, at)) = &self.waiting {
            tokio::time::sleep_until(*at).await;
        }
        self.waiting.take().map(|(credential, _)| credential)
    }
}

/// One `[[relay.route]]`, resolved.
pub(crate) struct Route {
    prefix: Box<str>,
    /// The upstream base URL, without a trailing slash.
    upstream: Box<str>,
    header: KeyHeader,
    pub(crate) credentials: Vec<Arc<str>>,
    /// Indexed by [`ClientId`].
    allowed: Vec<bool>,
    max_attempts: u32,
    pub(crate) pool: Arc<Pool>,
    series: Arc<RouteSeries>,
}

impl Route {
    fn allows(&self, client: ClientId) -> bool {
        self.allowed.get(client).copied().unwrap_or(false)
    }
}

/// Limits and timeouts a request is served under.
struct Limits {
    max_retry_body: u64,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    max_cooldown: Duration,
}

/// What every request shares.
pub(crate) struct Relay {
    routes: Arc<[Route]>,
    clients: Clients,
    upstream: Upstream,
    clock: Arc<dyn Clock>,
    checks: CheckRequests,
    limits: Limits,
}

/// The running relay.
pub struct RelayHandle {
    /// Where it listens, for the log.
    pub address: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<()>,
    refresher: JoinHandle<()>,
}

impl RelayHandle {
    /// Stops accepting, lets requests in flight finish (bounded), stops following the store.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.refresher.abort();
        let _ = self.refresher.await;
    }
}

/// Binds the relay of `config` (if it has a `[relay]`), loads its pools from the store and
/// starts serving.
pub async fn start(
    config: &Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    registry: &prometheus::Registry,
    checks: CheckRequests,
) -> anyhow::Result<Option<RelayHandle>> {
    let Some(relay_config) = config.relay() else {
        return Ok(None);
    };
    let listener = Listener::bind(relay_config).await?;
    if matches!(listener, Listener::Unix(..)) {
        warn_unmapped_peer_uids(&relay_config.clients);
    }
    let metrics = RelayMetrics::register(registry)?;
    let clients = Clients::new(&relay_config.clients);
    let routes: Arc<[Route]> = relay_config
        .routes
        .iter()
        .map(|route| resolve_route(config, route, &clients, &metrics))
        .collect();
    let pools = routes.iter().map(|r| r.pool.clone()).collect();
    registry.register(Box::new(CooldownGauge::new(pools, clock.clone())))?;
    let route_pools = routes
        .iter()
        .map(|r| (Arc::<str>::from(&*r.prefix), r.pool.clone()))
        .collect();
    registry.register(Box::new(RouteKeysGauge::new(route_pools, clock.clone())))?;
    let credentials = pooled_credentials(config, &routes);
    let mut known = Known::default();
    let generation = store.generation().await?;
    refresh::load(&*store, &*clock, &credentials, &routes, &mut known)
        .await
        .context("cannot read the relay's keys")?;
    let relay = Arc::new(Relay {
        routes: routes.clone(),
        clients,
        upstream: upstream_client(relay_config)?,
        clock: clock.clone(),
        checks,
        limits: Limits {
            max_retry_body: *relay_config.max_retry_body_bytes.get_ref(),
            first_byte_timeout: relay_config.first_byte_timeout.0,
            idle_timeout: relay_config.idle_timeout.0,
            max_cooldown: relay_config.max_cooldown.0,
        },
    });
    let refresher = tokio::spawn(refresh::follow(
        store,
        clock,
        credentials,
        routes,
        known,
        Some(generation),
        relay_config.refresh_interval.0,
    ));
    let address = listener.describe();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(
        listener,
        relay,
        ServeLimits::of(relay_config),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Some(RelayHandle {
        address,
        stop,
        server,
        refresher,
    }))
}

fn resolve_route(
    config: &Config,
    route: &crate::config::RouteConfig,
    clients: &Clients,
    metrics: &RelayMetrics,
) -> Route {
    let credentials: Vec<Arc<str>> = route.credentials().map(Arc::from).collect();
    let provider = config
        .credential(&credentials[0])
        .and_then(|c| config.provider(c.provider()))
        .expect("validated at load time");
    let mut allowed = vec![false; clients.len()];
    for name in route.clients() {
        if let Some(id) = clients.id(name) {
            allowed[id] = true;
        }
    }
    Route {
        prefix: route.prefix().into(),
        upstream: route.upstream(provider).trim_end_matches('/').into(),
        header: KeyHeader::of(provider.kind).expect("validated at load time"),
        series: Arc::new(metrics.route(route.prefix(), &credentials)),
        credentials,
        allowed,
        max_attempts: route.max_attempts(),
        pool: Arc::new(Pool::new(route.strategy)),
    }
}

/// Every credential some route pools, once, with its grace period.
fn pooled_credentials(config: &Config, routes: &[Route]) -> Vec<PooledCredential> {
    let mut pooled: Vec<PooledCredential> = Vec::new();
    for name in routes.iter().flat_map(|r| r.credentials.iter()) {
        if pooled.iter().any(|p| p.name == *name) {
            continue;
        }
        let grace = config
            .credential(name)
            .map(|c| c.rotation.grace())
            .unwrap_or_default();
        pooled.push(PooledCredential {
            name: name.clone(),
            grace,
        });
    }
    pooled
}

/// The pooled upstream client: keep-alive connections per host, rustls with the webpki
/// roots, the connect timeout, `TCP_NODELAY` (a request's small writes must not wait).
fn upstream_client(config: &RelayConfig) -> anyhow::Result<Upstream> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout.0));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.idle_timeout.0)
        .build(https))
}

/// Where the relay accepts connections.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    async fn bind(config: &RelayConfig) -> anyhow::Result<Listener> {
        Ok(match config.listen() {
            RelayListen::Tcp(address) => Listener::Tcp(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("relay: cannot listen on {address}"))?,
            ),
            RelayListen::Unix(path) => {
                // A socket left by an earlier run refuses the bind; nothing else may be there.
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    use std::os::unix::fs::FileTypeExt;
                    if meta.file_type().is_socket() {
                        std::fs::remove_file(&path).with_context(|| {
                            format!("relay: cannot remove the old socket {}", path.display())
                        })?;
                    }
                }
                let listener = tokio::net::UnixListener::bind(&path)
                    .map_err(|error| cannot_bind(&path, error))?;
                // Made before the socket is opened up, so a failure below removes it (Drop).
                let listener = Listener::Unix(listener, path);
                if let Listener::Unix(_, path) = &listener {
                    open_socket(path, config.socket_mode(), config.socket_group())?;
                }
                listener
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }

    /// The next connection and its peer's uid (Unix sockets only).
    async fn accept(&self) -> std::io::Result<(Box<dyn Io>, Option<u32>)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                Ok((Box::new(stream), None))
            }
            Listener::Unix(listener, _) => {
                let (stream, _) = listener.accept().await?;
                let uid = stream.peer_cred().ok().map(|cred| cred.uid());
                Ok((Box::new(stream), uid))
            }
        }
    }
}

/// Why the socket could not be created, with what to do under the shipped unit, where every
/// directory but the runtime one is read-only.
fn cannot_bind(path: &Path, error: std::io::Error) -> anyhow::Error {
    let hint = match error.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => "; the directory is read-only for this process: under the shipped systemd unit (ProtectSystem=strict) put the socket in /run/keyrotd, its RuntimeDirectory",
        std::io::ErrorKind::NotFound => "; the directory does not exist (under the shipped systemd unit, /run/keyrotd does: RuntimeDirectory=keyrotd)",
        _ => "",
    };
    anyhow::anyhow!("relay: cannot listen on {}: {error}{hint}", path.display())
}

/// Gives the freshly bound socket its group, then its mode. Until then it has the mode the
/// umask left (owner-only under the shipped unit's `UMask=0077`): the window errs on the side
/// of fewer users, never more. The group comes first so the wider mode never applies to an
/// interim group. By path, not by descriptor: `fchmod` on a listening socket changes the
/// socket's own inode, not the file clients open.
fn open_socket(path: &Path, mode: u32, group: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = group {
        let gid = socket_gid(name)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|error| {
            let mut gids: Vec<u32> = nix::unistd::getgroups()
                .unwrap_or_default()
                .iter()
                .map(|g| g.as_raw())
                .collect();
            gids.push(nix::unistd::getegid().as_raw());
            gids.sort_unstable();
            gids.dedup();
            let groups = gids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            anyhow::anyhow!(
                "relay: cannot give the socket {} to group {name:?} (gid {gid}): {error}; a process may only hand a file to a group it is a member of (this one: {groups}) unless it has CAP_CHOWN, and under the shipped systemd unit it cannot change a file's group at all (chown is filtered, PrivateUsers= maps no other group): leave `socket_group` unset and open the socket with `socket_mode` instead",
                path.display()
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("relay: cannot set mode {mode:04o} on {}", path.display()))
}

/// `socket_group`: a numeric gid, or a group name looked up in the system's group database.
fn socket_gid(name: &str) -> anyhow::Result<u32> {
    match crate::accounts::group_id(name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => anyhow::bail!("relay: `socket_group` {name:?}: no such group"),
        Err(errno) => Err(anyhow::Error::from(errno)
            .context(format!("relay: cannot look up `socket_group` {name:?}"))),
    }
}

/// Warns about every listed peer uid that does not exist in this process's user namespace:
/// the kernel reports a peer it cannot map as [`OVERFLOW_UID`], so such an entry matches no
/// one. systemd's `PrivateUsers=yes` (the shipped unit) maps only root and the service's own
/// user.
fn warn_unmapped_peer_uids(clients: &[ClientConfig]) {
    let Ok(uid_map) = std::fs::read_to_string("/proc/self/uid_map") else {
        return;
    };
    for client in clients {
        for uid in &client.peer_uids {
            let uid = *uid.get_ref();
            if !is_mapped(&uid_map, uid) {
                tracing::warn!(
                    client = %client.name.get_ref(),
                    uid,
                    "relay: this peer uid is not mapped in the daemon's user namespace (PrivateUsers=), so that user connects as uid {OVERFLOW_UID} and is not this client; give the client a token, or run keyrotd with PrivateUsers=no"
                );
            }
        }
    }
}

/// Whether `uid`, as this process sees uids, exists in the user namespace whose
/// /proc/PID/uid_map is `uid_map` (per line: first uid inside, first uid outside, count).
/// Peer uids are reported, and so compared, as the namespace sees them.
fn is_mapped(uid_map: &str, uid: u32) -> bool {
    let uid = u64::from(uid);
    uid_map.lines().any(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(inside)), Some(Ok(_outside)), Some(Ok(count))) => {
                (inside..inside.saturating_add(count)).contains(&uid)
            }
            _ => false,
        }
    })
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the accept loop enforces.
struct ServeLimits {
    max_connections: usize,
    max_header: usize,
    idle_timeout: Duration,
}

impl ServeLimits {
    fn of(config: &RelayConfig) -> ServeLimits {
        ServeLimits {
            max_connections: *config.max_connections.get_ref() as usize,
            max_header: *config.max_header_bytes.get_ref() as usize,
            idle_timeout: config.idle_timeout.0,
        }
    }
}

/// The smallest `max_buf_size` hyper's HTTP/1 server accepts (it panics below it): a
/// `max_header_bytes` below it lets request heads up to this size through.
const HYPER_MIN_BUF_SIZE: usize = 8192;

/// Accepts connections until `shutdown`, at most `max_connections` at once (more wait in
/// the kernel's backlog), a task each; then drains them for at most [`DRAIN`].
async fn serve(
    listener: Listener,
    relay: Arc<Relay>,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_buf_size(limits.max_header.max(HYPER_MIN_BUF_SIZE));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        let (io, peer_uid) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "relay: accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let relay = relay.clone();
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            // Boxed: hyper keeps a connection's slot for its request future allocated for
            // as long as the connection lives, so an unboxed future would hold its full size
            // for every open stream; boxed, the slot is a pointer and the future's memory is
            // freed once the answer's head is out (1,000 streams: see BENCHMARKS.md "Relay").
            let handled = Box::pin(relay.clone().handle(request, peer_uid));
            async move { Ok::<_, Infallible>(handled.await) }
        });
        let connection = builder.serve_connection(TokioIo::new(io), service);
        let watched = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = watched.await {
                tracing::debug!(%error, "relay: connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("relay: requests still open after the drain period; closing them");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_check_is_handed_over_a_second_after_it_was_asked_for_and_never_lost() {
        let start = Instant::now();
        let (checks, mut requested) = CheckRequests::channel();
        checks.request(&Arc::from("a"));
        tokio::time::sleep(Duration::from_millis(500)).await;
        checks.request(&Arc::from("b"));
        // Given up on while "a" waits for its time, as a `select!` does: "a" is kept.
        let early = tokio::time::timeout(Duration::from_millis(400), requested.next()).await;
        assert!(early.is_err(), "handed over early: {early:?}");
        assert_eq!(requested.next().await.as_deref(), Some("a"));
        assert_eq!(start.elapsed(), CHECK_AFTER_TAKE_OUT);
        assert_eq!(requested.next().await.as_deref(), Some("b"));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(500) + CHECK_AFTER_TAKE_OUT
        );
        drop(checks);
        assert_eq!(requested.next().await, None);
    }

    #[test]
    fn a_peer_uid_counts_only_where_the_user_namespace_maps_it() {
        // No user namespace of its own: every uid exists.
        let host = "         0          0 4294967295\n";
        assert!(is_mapped(host, 1000));
        assert!(is_mapped(host, 0));
        // systemd's PrivateUsers=yes: root and the service's user (here 998) only.
        let private = "         0          0          1\n       998        998          1\n";
        assert!(is_mapped(private, 998));
        assert!(is_mapped(private, 0));
        assert!(!is_mapped(private, 1000));
        assert!(!is_mapped(private, 999));
        // A container's shifted range: uids are configured as the container sees them.
        let shifted = "         0     100000      65536\n";
        assert!(is_mapped(shifted, 1000));
        assert!(!is_mapped(shifted, 100_000));
        assert!(!is_mapped("", 1000));
    }
}
