//! Several `keyrotd run` replicas on one store (here one SQLite file and one config): one
//! leads and does every check and rotation, the others serve `/metrics` and wait; a leader
//! stopped with SIGTERM hands over at once, one paused with SIGSTOP past its lease is
//! replaced, and steps down without acting when it resumes.
//!
//! Who acts is told apart by each process's own request counters
//! (`keyrotd_provider_requests_total` counts this process's calls, unlike the per-key
//! series every replica reads from the shared store).

mod common;

use common::*;
use keyrotd::simulator::{Op, Simulator};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// As [`LEADERSHIP`] sets them: lease 3s, renew every 1s, stop acting 2s after the last
/// successful claim began.
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_secs(1);
/// The database's clock counts whole seconds, and the takeover is observed by polling
/// `/metrics` on a machine that is running other builds: the slack on a takeover's timing.
const SLACK: Duration = Duration::from_secs(3);

/// The config both replicas share: the simulator's provider, checked and rotated every
/// second (`Env::write_config` adds the short leadership timing of [`LEADERSHIP`]).
fn config(sim: &Simulator, management_key: &std::path::Path) -> String {
    format!(
        r#"[checks]
interval = "1s"
jitter = 0.0

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt:?} }}
timeout = "10s"

[[credential]]
name = "{CREDENTIAL}"
provider = "sim"
[credential.rotation]
schedule = "* * * * * *"
retry_backoff = "1s"
"#,
        base = sim.base_url(),
        mgmt = management_key.display().to_string(),
    )
}

/// A value of a series without labels.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every request this process made to a provider.
fn provider_requests(daemon: &Daemon) -> f64 {
    daemon
        .metrics()
        .lines()
        .filter(|l| l.starts_with("keyrotd_provider_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn leads(daemon: &Daemon) -> bool {
    gauge(&daemon.metrics(), "keyrotd_leader") == Some(1.0)
}

/// Waits until exactly one of `daemons` reports `keyrotd_leader 1`; answers its index.
fn the_leader(daemons: &[&Daemon]) -> usize {
    wait_for(HANG_TIMEOUT, || {
        let leading: Vec<usize> = (0..daemons.len()).filter(|&i| leads(daemons[i])).collect();
        (leading.len() == 1).then(|| leading[0])
    })
    .expect("no single leader")
}

/// The number of current keys `key list --json` shows for the credential.
fn current_keys(env: &Env) -> usize {
    let out = env.run(&["key", "list", "--json"]);
    assert_success(&out, "key list");
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|row| row["credential"] == CREDENTIAL && row["stage"] == "current")
        .count()
}

/// No rotation issued two keys: every live key keyrotd issued carries its rotation's id in
/// its name (`keyrotd/<installation>/<credential>/<rotation>`), so no name may repeat.
fn assert_no_rotation_issued_twice(sim: &Simulator) {
    let mut names: Vec<String> = sim
        .live_keys()
        .into_iter()
        .map(|(_, name)| name)
        .filter(|name| name.starts_with("keyrotd/"))
        .collect();
    assert!(!names.is_empty(), "no issued key is live");
    let issued = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), issued, "a rotation issued twice: {names:?}");
}

struct Rig {
    sim: Simulator,
    env: Env,
}

impl Rig {
    async fn new() -> Rig {
        let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let env = Env::new();
        let key = env.path().join("mgmt");
        std::fs::write(&key, sim.management_key()).unwrap();
        env.write_config(&config(&sim, &key));
        let secret = canary();
        sim.add_key(&secret);
        env.import(CREDENTIAL, &secret, &[]);
        Rig { sim, env }
    }

    /// Waits until the simulator has seen `more` issues beyond `from` (rotations going on).
    fn wait_for_issues(&self, from: u64, more: u64, what: &str) -> u64 {
        wait_for(HANG_TIMEOUT, || {
            let issued = self.sim.request_count(Op::Issue);
            (issued >= from + more).then_some(issued)
        })
        .unwrap_or_else(|| panic!("{what}: no rotations"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_only_it_checks_and_rotates() {
    let rig = Rig::new().await;
    let a = rig.env.start();
    let b = rig.env.start();
    let leader = the_leader(&[&a, &b]);
    let (leader, standby) = if leader == 0 { (&a, &b) } else { (&b, &a) };
    let issued = rig.wait_for_issues(0, 3, "the leader");
    assert!(rig.sim.request_count(Op::Check) > 0);

    let standby_metrics = standby.metrics();
    assert_eq!(gauge(&standby_metrics, "keyrotd_leader"), Some(0.0));
    assert_eq!(provider_requests(standby), 0.0, "{standby_metrics}");
    assert!(provider_requests(leader) > 0.0);
    // Both read the lease's epoch and the per-key series from the shared store, and name
    // themselves.
    let leader_metrics = leader.metrics();
    assert_eq!(
        gauge(&standby_metrics, "keyrotd_leader_epoch"),
        gauge(&leader_metrics, "keyrotd_leader_epoch")
    );
    assert_eq!(gauge(&standby_metrics, "keyrotd_store_up"), Some(1.0));
    assert!(standby_metrics.contains("keyrotd_instance_info{instance="));
    assert!(sample(&standby_metrics, "keyrotd_key_age_seconds", CREDENTIAL).is_some());
    // A healthy standby is ready: Prometheus and load balancers may use any replica.
    assert_eq!(standby.get("/readyz").0, 200);
    assert!(standby.log().contains("standby: another replica leads"));
    assert!(leader.log().contains("leading (epoch"));

    rig.wait_for_issues(issued, 2, "the leader, later");
    assert_eq!(provider_requests(standby), 0.0, "the standby acted");
    assert_eq!(current_keys(&rig.env), 1);
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let rig = Rig::new().await;
    let a = rig.env.start();
    let b = rig.env.start();
    let (leader, standby) = match the_leader(&[&a, &b]) {
        0 => (a, b),
        _ => (b, a),
    };
    rig.wait_for_issues(0, 1, "the first leader");
    let stopped = Instant::now();
    let log = leader.stop();
    assert!(log.contains("leadership released"), "{log}");
    wait_for(HANG_TIMEOUT, || leads(&standby).then_some(())).expect("the standby never led");
    // Released, not expired: the standby leads at its next claim.
    let took = stopped.elapsed();
    assert!(took <= LEASE + RENEW + SLACK, "took {took:?}");
    let issued = rig.sim.request_count(Op::Issue);
    rig.wait_for_issues(issued, 2, "the new leader");
    assert!(provider_requests(&standby) > 0.0);
    assert_eq!(current_keys(&rig.env), 1);
    assert_no_rotation_issued_twice(&rig.sim);
    standby.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_replaced_and_steps_down_when_it_resumes() {
    let rig = Rig::new().await;
    let a = rig.env.start();
    let b = rig.env.start();
    let (old, new) = match the_leader(&[&a, &b]) {
        0 => (a, b),
        _ => (b, a),
    };
    rig.wait_for_issues(0, 1, "the first leader");
    let epoch = gauge(&old.metrics(), "keyrotd_leader_epoch").unwrap();

    old.signal(Signal::SIGSTOP);
    let paused = Instant::now();
    wait_for(HANG_TIMEOUT, || leads(&new).then_some(())).expect("the standby never led");
    let took = paused.elapsed();
    assert!(took <= LEASE + RENEW + SLACK, "took {took:?}");
    let new_metrics = new.metrics();
    assert!(gauge(&new_metrics, "keyrotd_leader_epoch").unwrap() > epoch);
    let issued = rig.sim.request_count(Op::Issue);
    rig.wait_for_issues(issued, 2, "the new leader");

    old.signal(Signal::SIGCONT);
    old.wait_for_log("stepping down", HANG_TIMEOUT);
    old.wait_for_log("checks and rotations stopped", HANG_TIMEOUT);
    wait_for(HANG_TIMEOUT, || (!leads(&old)).then_some(())).expect("the old leader still leads");
    // From here on the old leader does nothing: its request counter stays where it is while
    // the new leader goes on rotating.
    let before = provider_requests(&old);
    let issued = rig.sim.request_count(Op::Issue);
    rig.wait_for_issues(issued, 3, "the new leader after the old one resumed");
    assert_eq!(provider_requests(&old), before, "the old leader acted");
    assert!(leads(&new));
    assert_eq!(current_keys(&rig.env), 1);
    assert_no_rotation_issued_twice(&rig.sim);
    let log = old.stop();
    assert!(!log.contains("leadership released"), "{log}");
    new.stop();
}

/// `check-config` judges a PostgreSQL `[store]` by its shape and never connects: nothing
/// listens on port 9, and the config is still valid; a password in the URL is not, and the
/// error does not repeat it.
#[test]
fn check_config_validates_a_postgres_store_without_connecting() {
    let env = Env::new();
    let valid = "[store]\nurl = \"postgres://keyrotd@127.0.0.1:9/keyrotd\"\npassword = { env = \"KEYROTD_TEST_ABSENT\" }\nsslmode = \"disable\"\n";
    std::fs::write(&env.config, format!("{valid}\n{}", sections(&[CREDENTIAL]))).unwrap();
    let out = env.run(&["check-config"]);
    assert_success(&out, "check-config");

    let leaky = "[store]\nurl = \"postgres://keyrotd:hunter2@127.0.0.1:9/keyrotd\"\n";
    std::fs::write(&env.config, format!("{leaky}\n{}", sections(&[CREDENTIAL]))).unwrap();
    let out = env.run(&["check-config"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains(":2:7: `store.url` holds a password"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// Waits for a datagram with a line starting with `prefix` on a notify socket; answers it.
fn wait_for_status(socket: &std::os::unix::net::UnixDatagram, prefix: &str) -> String {
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    let found = wait_for(HANG_TIMEOUT, || {
        let len = socket.recv(&mut buffer).ok()?;
        let message = String::from_utf8_lossy(&buffer[..len]).into_owned();
        let line = message
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(String::from);
        seen.push(message);
        line
    });
    found.unwrap_or_else(|| panic!("no {prefix:?} within {HANG_TIMEOUT:?}; got {seen:?}"))
}

/// systemd's `STATUS=` says which replica leads, and whom a standby waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_status_names_the_leader_on_every_replica() {
    let rig = Rig::new().await;
    let sockets: Vec<_> = ["a.sock", "b.sock"]
        .iter()
        .map(|name| {
            let path = rig.env.path().join(name);
            let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            (path, socket)
        })
        .collect();
    let daemons: Vec<Daemon> = sockets
        .iter()
        .map(|(path, _)| {
            let mut command = rig.env.command();
            command.env("NOTIFY_SOCKET", path);
            Daemon::start(command)
        })
        .collect();
    let leader = the_leader(&[&daemons[0], &daemons[1]]);
    let standby = 1 - leader;
    let status = wait_for_status(&sockets[leader].1, "STATUS=leading (epoch ");
    assert!(status.ends_with(')'), "{status}");
    let status = wait_for_status(&sockets[standby].1, "STATUS=standby; leader is ");
    let pid = daemons[leader].pid().to_string();
    assert!(
        status.contains(&format!(":{pid}:")),
        "{status} (leader pid {pid})"
    );
    assert!(status.contains(" until 20"), "{status}");
    for daemon in daemons {
        daemon.stop();
    }
}
