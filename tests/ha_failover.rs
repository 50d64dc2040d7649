//! High availability on PostgreSQL with real processes: three `keyrotd run` replicas on one
//! database and one fake OpenRouter, the leader killed (SIGKILL) or paused (SIGSTOP) in the
//! middle of a rotation, or cut off from the database, then the promises checked as in the
//! two-actor fault tests (`faults::Rig::violations`), plus one of HA's own: no rotation
//! issued two keys that were live at the provider at the same time.
//! A replica the database refuses at start-up waits for it with backoff instead of exiting.
//!
//! Each replica connects as its own PostgreSQL role (a member of the role that owns the
//! database), so one replica can be cut off alone: its role loses LOGIN and its backends are
//! terminated with `pg_terminate_backend`.
//!
//! The rotation is caught mid-flight by holding the fake provider's checks of every key but
//! the installation's first: the leader issues the new key and then waits in `verify`.
//!
//! Needs a PostgreSQL server where `KEYROTD_TEST_PG_URL` says (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, a superuser) and `psql`; without them the
//! tests skip, or fail under `KEYROTD_REQUIRE_TOOLS`.

mod common;
mod faults;

use common::*;
use faults::*;
use nix::sys::signal::{kill, Signal};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Leadership timing of every replica: short, so a failover happens within seconds. The
/// database clock counts whole seconds, hence the slack in [`failover_bound`].
const LEADER_LEASE: u64 = 6;
const RENEW_INTERVAL: u64 = 2;
const RENEW_DEADLINE: u64 = 4;
/// Rotations every few seconds while a scenario runs.
const SCHEDULE: &str = "schedule = \"*/3 * * * * *\"";

/// How long a standby may take to lead once the leader is gone: the bound (TTL plus
/// one renew interval) plus one second for the database clock's whole seconds and one for
/// the test's polling of `/metrics`.
fn failover_bound() -> Duration {
    Duration::from_secs(LEADER_LEASE + RENEW_INTERVAL + 2)
}

fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs SQL through `psql` as the admin (the server the other PostgreSQL tests use,
/// [`common::pg::base_url`]); the output.
fn psql(sql: &str) -> Result<String, String> {
    let url = common::pg::base_url();
    let out = Command::new("psql")
        .args([&url, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A scratch database owned by a scratch role, and a login role per replica; all dropped
/// at the end.
struct Database {
    name: String,
    owner: String,
    replicas: Vec<String>,
    host_port: String,
}

impl Database {
    fn create(replicas: usize) -> Option<Database> {
        if let Err(error) = psql("SELECT 1") {
            skip_or_fail(&format!(
                "no PostgreSQL server answers at {} ({error})",
                common::pg::base_url()
            ));
            return None;
        }
        let tag = format!("{:08x}", rand::random::<u32>());
        let name = format!("keyrotd_ha_{tag}");
        let owner = format!("keyrotd_ha_{tag}_owner");
        let replicas: Vec<String> = (1..=replicas)
            .map(|i| format!("keyrotd_ha_{tag}_r{i}"))
            .collect();
        psql(&format!("CREATE ROLE {owner} LOGIN")).unwrap();
        for role in &replicas {
            psql(&format!("CREATE ROLE {role} LOGIN IN ROLE {owner}")).unwrap();
        }
        psql(&format!("CREATE DATABASE {name} OWNER {owner}")).unwrap();
        let host_port = common::pg::base_url()
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(hp, _)| hp.to_string())
            .unwrap();
        Some(Database {
            name,
            owner,
            replicas,
            host_port,
        })
    }

    fn url(&self, role: &str) -> String {
        format!("postgres://{role}@{}/{}", self.host_port, self.name)
    }

    /// The `[store]` section for `role`.
    fn store_section(&self, role: &str) -> String {
        format!(
            "[store]\nurl = \"{}\"\nsslmode = \"disable\"\npool_size = 4\nleader_lease = \"{LEADER_LEASE}s\"\nleader_renew_interval = \"{RENEW_INTERVAL}s\"\nleader_renew_deadline = \"{RENEW_DEADLINE}s\"\n",
            self.url(role)
        )
    }

    /// Cuts `role` off: no new logins, and its open connections terminated.
    fn cut(&self, role: &str) {
        psql(&format!("ALTER ROLE {role} NOLOGIN")).unwrap();
        psql(
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{role}'"
            ),
        )
        .unwrap();
    }

    fn reconnect(&self, role: &str) {
        psql(&format!("ALTER ROLE {role} LOGIN")).unwrap();
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        for role in self.replicas.iter().chain([&self.owner]) {
            let _ = psql(&format!("DROP ROLE IF EXISTS {role}"));
        }
    }
}

/// One replica: its own config (its role, its instance name), the shared master key.
struct Replica {
    name: String,
    role: String,
    config: PathBuf,
    daemon: Option<Daemon>,
}

impl Replica {
    /// `keyrotd_leader` as this replica reports it (`None` if it does not answer).
    fn leads(&self) -> Option<bool> {
        let daemon = self.daemon.as_ref()?;
        let metrics = scrape(daemon.port)?;
        metrics
            .lines()
            .find(|l| l.starts_with("keyrotd_leader "))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v == "1")
    }
}

/// `/metrics`, or `None` when the replica does not answer (paused, gone, or its store cut).
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.contains(" 200 ").then(|| body.to_string())
}

struct Cluster {
    rig: Rig,
    db: Database,
    replicas: Vec<Replica>,
}

impl Cluster {
    /// A rig on a fresh database (its first key imported as the owner role), three
    /// replicas configured, none started.
    fn new(seed: u64) -> Option<Cluster> {
        let db = Database::create(3)?;
        let rig = Rig::with_store(seed, db.store_section(&db.owner));
        let replicas = db
            .replicas
            .iter()
            .enumerate()
            .map(|(i, role)| Replica {
                name: format!("replica-{}", i + 1),
                role: role.clone(),
                config: rig.env.path().join(format!("replica-{}.toml", i + 1)),
                daemon: None,
            })
            .collect();
        let cluster = Cluster { rig, db, replicas };
        Some(cluster)
    }

    /// Writes the rig's config with `rotation` lines, and each replica's from it (its own
    /// role and instance name).
    fn configure(&self, rotation: &str) {
        self.rig.configure(rotation);
        let text = std::fs::read_to_string(&self.rig.env.config).unwrap();
        for replica in &self.replicas {
            let own = text
                .replace(&self.db.url(&self.db.owner), &self.db.url(&replica.role))
                .replacen(
                    "[daemon]\n",
                    &format!("[daemon]\ninstance = \"{}\"\n", replica.name),
                    1,
                );
            write_atomically(&replica.config, &own);
        }
    }

    fn start(&mut self, index: usize) {
        let mut command = bare_command();
        command
            .arg("--config")
            .arg(&self.replicas[index].config)
            .arg("--master-key")
            .arg(&self.rig.env.master_key);
        let daemon = Daemon::start(command);
        self.rig.note(format!(
            "{} started, pid {}",
            self.replicas[index].name,
            daemon.pid()
        ));
        self.replicas[index].daemon = Some(daemon);
    }

    fn start_all(&mut self) {
        for index in 0..self.replicas.len() {
            self.start(index);
        }
    }

    /// The replicas that report `keyrotd_leader 1` now.
    fn leaders(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].leads() == Some(true))
            .collect()
    }

    /// Waits for exactly one leader among `candidates`; its index and when it was seen.
    fn wait_for_leader(&self, candidates: &[usize], timeout: Duration) -> Option<(usize, Instant)> {
        wait_for(timeout, || {
            let leaders: Vec<usize> = self
                .leaders()
                .into_iter()
                .filter(|i| candidates.contains(i))
                .collect();
            match leaders.as_slice() {
                [one] => Some((*one, Instant::now())),
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            }
        })
    }

    /// Waits until the fake provider holds a check of a key other than the first one: the
    /// leader issued a rotation's key and waits in `verify`.
    fn wait_for_rotation_in_verify(&self) {
        let held = wait_for(HANG_TIMEOUT, || (self.rig.fake.held().0 > 0).then_some(()));
        assert!(
            held.is_some(),
            "no rotation reached verify within {HANG_TIMEOUT:?}:\n{}",
            self.rig.diagnosis()
        );
    }

    fn kill(&mut self, index: usize) {
        if let Some(daemon) = self.replicas[index].daemon.take() {
            let _ = kill(daemon.pid(), Signal::SIGCONT);
            self.rig.kill_daemon(daemon);
        }
    }

    fn stop_all(&mut self) {
        for index in 0..self.replicas.len() {
            if let Some(daemon) = self.replicas[index].daemon.take() {
                self.rig.stop_daemon(daemon);
            }
        }
    }

    /// Ends a scenario: the schedule off, every replica restarted, the rotations settled and
    /// the promises checked. Also: no two keys of one rotation were ever live at once.
    fn violations(mut self) -> Vec<String> {
        self.rig.fake.release_checks();
        self.stop_all();
        self.configure("");
        self.start_all();
        let mut found = Vec::new();
        if self
            .wait_for_leader(&[0, 1, 2], failover_bound() * 2)
            .is_none()
        {
            found.push("no single leader after the final restart".to_string());
        }
        if !self.rig.settle() {
            found.push(format!(
                "settle: a rotation is still in flight {HANG_TIMEOUT:?} after the restart"
            ));
        }
        self.rig.wait_for_revocations();
        self.stop_all();
        found.extend(issued_twice(&self.rig));
        found.extend(self.rig.violations());
        if !found.is_empty() {
            found.push(self.rig.diagnosis());
        }
        found
    }
}

/// Keys named for one rotation (`keyrotd/<installation>/<credential>/<rotation>`) whose
/// lives at the provider overlapped: a rotation issued twice.
fn issued_twice(rig: &Rig) -> Vec<String> {
    let keys = rig.fake.keys();
    let mut found = Vec::new();
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            if a.name != b.name || !a.name.starts_with("keyrotd/") {
                continue;
            }
            let (first, second) = if a.created <= b.created {
                (a, b)
            } else {
                (b, a)
            };
            if first.deleted.is_none_or(|deleted| deleted > second.created) {
                found.push(format!(
                    "issued twice: {} has two keys live at once ({} and {})",
                    a.name,
                    fp(&first.secret),
                    fp(&second.secret)
                ));
            }
        }
    }
    found
}

fn assert_no_violations(what: &str, violations: Vec<String>) {
    assert!(violations.is_empty(), "{what}:\n{}", violations.join("\n"));
}

/// Three replicas, one leader. The rotation it started is in `verify` when it is SIGKILLed;
/// a standby leads within the bound, takes the rotation over and finishes it.
#[test]
fn a_killed_leader_is_replaced_within_the_lease_and_its_rotation_finished() {
    let Some(mut cluster) = Cluster::new(17_001) else {
        return;
    };
    cluster.rig.fake.hold_checks(&[cluster.rig.seed.as_str()]);
    cluster.configure(SCHEDULE);
    cluster.start_all();
    let (leader, _) = cluster
        .wait_for_leader(&[0, 1, 2], failover_bound() * 2)
        .expect("one leader among three replicas");
    cluster.wait_for_rotation_in_verify();
    let promoted_before = promotions(&cluster.rig);
    let killed_at = Instant::now();
    cluster.kill(leader);
    let standbys: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (successor, seen) = cluster
        .wait_for_leader(&standbys, failover_bound() * 3)
        .expect("a standby leads after the leader was killed");
    let failover = seen - killed_at;
    say(&format!(
        "failover after SIGKILL: {} led {failover:?} after {} was killed (bound {:?})",
        cluster.replicas[successor].name,
        cluster.replicas[leader].name,
        failover_bound()
    ));
    assert!(
        failover <= failover_bound(),
        "a standby led only {failover:?} after the leader was killed (bound {:?})",
        failover_bound()
    );
    // The successor takes the rotation over (its owner's term is over) and finishes it.
    cluster.rig.fake.release_checks();
    let finished = wait_for(HANG_TIMEOUT, || {
        (promotions(&cluster.rig) > promoted_before).then_some(())
    });
    assert!(
        finished.is_some(),
        "the successor did not finish the rotation:\n{}",
        cluster.rig.diagnosis()
    );
    assert_no_violations("after a killed leader", cluster.violations());
}

/// The leader is SIGSTOPped in `verify` past its lease; a standby leads and finishes the
/// rotation. Continued, the old leader's late write is refused and it steps down.
#[test]
fn a_paused_leader_is_fenced_when_it_wakes_and_steps_down() {
    let Some(mut cluster) = Cluster::new(17_002) else {
        return;
    };
    cluster.rig.fake.hold_checks(&[cluster.rig.seed.as_str()]);
    cluster.configure(SCHEDULE);
    cluster.start_all();
    let (leader, _) = cluster
        .wait_for_leader(&[0, 1, 2], failover_bound() * 2)
        .expect("one leader among three replicas");
    cluster.wait_for_rotation_in_verify();
    let promoted_before = promotions(&cluster.rig);
    let pid = cluster.replicas[leader].daemon.as_ref().unwrap().pid();
    kill(pid, Signal::SIGSTOP).unwrap();
    cluster
        .rig
        .note(format!("{} SIGSTOPped", cluster.replicas[leader].name));
    let paused_at = Instant::now();
    let standbys: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (successor, seen) = cluster
        .wait_for_leader(&standbys, failover_bound() * 3)
        .expect("a standby leads while the leader is paused");
    say(&format!(
        "failover after SIGSTOP: {} led {:?} after {} was paused",
        cluster.replicas[successor].name,
        seen - paused_at,
        cluster.replicas[leader].name
    ));
    // The held check answers now; the old leader's request is answered while it sleeps.
    cluster.rig.fake.release_checks();
    let finished = wait_for(HANG_TIMEOUT, || {
        (promotions(&cluster.rig) > promoted_before).then_some(())
    });
    assert!(
        finished.is_some(),
        "the successor did not finish the rotation:\n{}",
        cluster.rig.diagnosis()
    );
    kill(pid, Signal::SIGCONT).unwrap();
    cluster
        .rig
        .note(format!("{} SIGCONTed", cluster.replicas[leader].name));
    let woken = &cluster.replicas[leader];
    let stepped_down = wait_for(HANG_TIMEOUT, || {
        (woken.leads() == Some(false)).then_some(())
    });
    assert!(
        stepped_down.is_some(),
        "the woken leader still reports keyrotd_leader 1:\n{}",
        woken.daemon.as_ref().unwrap().log()
    );
    // Whichever it met first on waking, its renew deadline or a refused write, it stopped
    // acting; that no write of its landed shows in the promises checked below.
    woken
        .daemon
        .as_ref()
        .unwrap()
        .wait_for_log("stepping down", HANG_TIMEOUT);
    assert_eq!(
        cluster.leaders(),
        vec![successor],
        "exactly the successor leads after the old leader woke"
    );
    assert_no_violations("after a paused leader", cluster.violations());
}

/// The leader's database connections are terminated and its role may not log in again: it
/// stops acting, a standby leads; reconnected, it stays a standby.
#[test]
fn a_leader_cut_off_from_the_database_stops_acting() {
    let Some(mut cluster) = Cluster::new(17_003) else {
        return;
    };
    cluster.configure(SCHEDULE);
    cluster.start_all();
    let (leader, _) = cluster
        .wait_for_leader(&[0, 1, 2], failover_bound() * 2)
        .expect("one leader among three replicas");
    let role = cluster.replicas[leader].role.clone();
    cluster.db.cut(&role);
    cluster.rig.note(format!(
        "{} cut off from the database",
        cluster.replicas[leader].name
    ));
    let standbys: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster
        .wait_for_leader(&standbys, failover_bound() * 3)
        .expect("a standby leads once the leader is cut off");
    let cut = &cluster.replicas[leader];
    let log = cut
        .daemon
        .as_ref()
        .unwrap()
        .wait_for_log("stepping down", HANG_TIMEOUT);
    assert!(
        cut.leads() != Some(true),
        "the cut-off leader still reports keyrotd_leader 1:\n{log}"
    );
    // Rotations go on under the new leader while the old one is cut off.
    let promoted = promotions(&cluster.rig);
    let rotated = wait_for(HANG_TIMEOUT, || {
        (promotions(&cluster.rig) > promoted).then_some(())
    });
    assert!(
        rotated.is_some(),
        "no rotation under the new leader:\n{}",
        cluster.rig.diagnosis()
    );
    cluster.db.reconnect(&role);
    let standby = wait_for(HANG_TIMEOUT, || {
        (cluster.replicas[leader].leads() == Some(false)).then_some(())
    });
    assert!(
        standby.is_some(),
        "the reconnected replica does not report itself a standby"
    );
    assert_eq!(cluster.leaders().len(), 1, "one leader after the reconnect");
    assert_no_violations("after a cut-off leader", cluster.violations());
}

/// `promoted` events so far (a finished rotation).
fn promotions(rig: &Rig) -> usize {
    rig.history()
        .iter()
        .filter(|e| e["kind"] == "promoted")
        .count()
}

/// A replica whose database refuses it (here: its role does not exist yet) says why and
/// keeps trying with backoff instead of exiting; once the role exists it starts and serves.
#[test]
fn a_replica_waits_for_a_database_that_refuses_it_then_starts() {
    let Some(cluster) = Cluster::new(17_004) else {
        return;
    };
    cluster.configure("");
    let late = format!("{}_late", cluster.db.owner);
    let config = cluster.rig.env.path().join("late.toml");
    let text = std::fs::read_to_string(&cluster.rig.env.config)
        .unwrap()
        .replace(&cluster.db.url(&cluster.db.owner), &cluster.db.url(&late));
    write_atomically(&config, &text);
    let log_path = cluster.rig.env.path().join("late.log");
    let mut child = bare_command()
        .arg("--config")
        .arg(&config)
        .arg("--master-key")
        .arg(&cluster.rig.env.master_key)
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let waited = wait_for(HANG_TIMEOUT, || {
        (log().matches("the database is unavailable").count() >= 2).then_some(())
    });
    assert!(
        waited.is_some(),
        "no second attempt logged within {HANG_TIMEOUT:?}:\n{}",
        log()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the replica exited instead of waiting for its database:\n{}",
        log()
    );
    assert!(
        log().contains("authentication failed"),
        "the log does not say why the database refused:\n{}",
        log()
    );
    psql(&format!(
        "CREATE ROLE {late} LOGIN IN ROLE {}",
        cluster.db.owner
    ))
    .unwrap();
    let ready = wait_for(HANG_TIMEOUT, || {
        log().contains("keyrotd ready").then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = psql(&format!("DROP ROLE IF EXISTS {late}"));
    assert!(
        ready.is_some(),
        "the replica did not start once its role existed:\n{}",
        log()
    );
    let output = log();
    assert!(
        !output.contains(&cluster.rig.seed),
        "the key leaked into the log"
    );
}
