//! The heartbeat's three readers wired as the daemon wires them: the real metrics endpoint
//! ([`Endpoint`], real HTTP on 127.0.0.1:0) and the systemd watchdog pinger (with a counting
//! ping instead of `sd_notify`), both following one heartbeat beaten by the real [`Ticker`].
//!
//! Time is tokio's paused clock, and the heartbeat reads the same virtual time, so a stall is
//! simply the ticker stopped while time runs on. HTTP requests run on a blocking thread,
//! which keeps paused time from jumping while a request is in flight.

use super::Endpoint;
use crate::clock::Clock;
use crate::heartbeat::{spawn_watchdog, Heartbeat, Ticker, HEARTBEAT_MAX_AGE};
use crate::metrics::server::HttpState;
use crate::metrics::Metrics;
use crate::model::UnixTime;
use crate::store::SqliteStore;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::Instant;

/// Unix time that follows tokio's (paused) clock.
struct VirtualClock {
    start: Instant,
    unix_start: UnixTime,
}

impl Clock for VirtualClock {
    fn now(&self) -> UnixTime {
        self.unix_start + self.start.elapsed().as_secs() as i64
    }
}

/// `GET path` with `Connection: close`: (status, body). Runs on a blocking thread.
async fn get(address: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(address).expect("connect");
        // Bounds a hang only.
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    })
    .await
    .unwrap()
}

/// Pings received since the last call.
fn drain(pings: &mut UnboundedReceiver<()>) -> usize {
    let mut count = 0;
    while pings.try_recv().is_ok() {
        count += 1;
    }
    count
}

#[tokio::test]
async fn the_watchdog_and_readyz_follow_the_heartbeat_through_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    // Opened before time is paused: the pool's first connection is real work.
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("keyrotd.db"), None)
            .await
            .unwrap(),
    );
    tokio::time::pause();
    let clock: Arc<dyn Clock> = Arc::new(VirtualClock {
        start: Instant::now(),
        unix_start: 1_800_000_000,
    });
    let heartbeat = Arc::new(Heartbeat::new(clock.clone()));
    let state = HttpState {
        metrics: Arc::new(Metrics::new(clock, heartbeat.clone())),
        store,
        heartbeat: heartbeat.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = Endpoint::spawn(listener, state, None).unwrap();
    let address = endpoint.address;

    let ticker = Ticker::start(heartbeat.clone());
    let (sender, mut pings) = unbounded_channel();
    // A 2 s watchdog: a ping every second while the beat (every 10 s) is fresh.
    let watchdog = spawn_watchdog(heartbeat.clone(), Duration::from_secs(2), move || {
        let _ = sender.send(());
    });

    // Healthy for a minute: a ping at every one of the 61 watchdog ticks, none starved
    // between two beats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(drain(&mut pings), 1, "a ping at once");
    for second in 1..=60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(drain(&mut pings), 1, "no ping at second {second}");
    }
    assert_eq!(get(address, "/readyz").await, (200, "ready\n".into()));

    // The beat stalls. Past the readiness window, the watchdog has long stopped being fed
    // (its own window is two beats) and /readyz says why.
    ticker.stop().await;
    tokio::time::sleep(HEARTBEAT_MAX_AGE + Duration::from_secs(1)).await;
    drain(&mut pings);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(drain(&mut pings), 0, "pinged for 30 s while stale");
    assert_eq!(
        get(address, "/readyz").await,
        (503, "scheduler heartbeat stale\n".into())
    );
    assert_eq!(
        get(address, "/healthz").await.0,
        200,
        "alive, just not ready"
    );

    // The beat comes back: ready again, and the pings resume at every tick.
    let ticker = Ticker::start(heartbeat.clone());
    assert_eq!(get(address, "/readyz").await, (200, "ready\n".into()));
    for second in 1..=30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(drain(&mut pings), 1, "no ping {second} s after recovery");
    }

    watchdog.abort();
    ticker.stop().await;
    endpoint.stop().await;
}
