//! The rotation engine in process: a temp SQLite store, the simulated provider on loopback, a
//! config parsed from TOML, file/exec delivery targets in a temp dir and a manual clock.
//!
//! Every failure test checks the same promise: the old key stays current and working, the
//! failure is counted, a retry is scheduled in the future, nothing is left live at the
//! provider that the store does not know, and a later retry succeeds.

use keyrotd::clock::{Clock, ManualClock};
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::providers::ProviderTelemetry;
use keyrotd::rotation::{self, pass_queue, CredentialRuntime, Engine, RotationError};
use keyrotd::simulator::{Fault, Op, Simulator};
use keyrotd::store::{
    AuditStore, Claim, CredentialStore, InstallationStore, KeyStore, KeyVersion, NewKey,
    RotationFailure, RotationOutlook, RotationStore, SqliteStore, StateStore, Store, StoreError,
};
use secrecy::{ExposeSecret, SecretString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const CRED: &str = "app";
const START: i64 = 1_800_000_000;
const GRACE: i64 = 3600;
/// The provider timeout of every fixture: generous, so no answer of the simulator on a busy
/// machine is ever mistaken for a timeout.
const TIMEOUT: &str = "30s";
/// The timeout of the runtime a timeout test rotates with ([`Fixture::timing_out_after`]):
/// it gives up on a simulator that never answers (a hang of a minute), yet leaves its other
/// requests on loopback (the orphan sweeps) ample time.
const SHORT_TIMEOUT: &str = "2s";
/// How long a test waits for a rotation before calling it a hang: longer than
/// [`SHORT_TIMEOUT`] and far shorter than the simulator's minute-long hang.
const HANG_BOUND: std::time::Duration = std::time::Duration::from_secs(30);

/// The claim of a process that planned a rotation and died: its lease has already expired
/// (a lease of zero seconds ends when it starts, on the database's clock).
fn dead_owner() -> Claim {
    Claim {
        owner: "cli:host:1:dead".into(),
        lease_seconds: 0,
        leader: None,
    }
}

/// The claim of a process that is alive and drives its rotation: its lease runs for an hour.
fn live_owner() -> Claim {
    Claim {
        owner: "cli:host:2:alive".into(),
        lease_seconds: 3600,
        leader: None,
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    sim: Simulator,
    store: Arc<SqliteStore>,
    clock: ManualClock,
    engine: Arc<Engine>,
    rt: Arc<CredentialRuntime>,
    key_file: PathBuf,
    /// The seeded (initial) key.
    old: String,
    /// The config `rt` was built from.
    config: String,
}

/// Options for the config of one fixture.
#[derive(Default)]
struct Setup {
    /// Extra `[credential.rotation]` lines.
    rotation: &'static str,
    /// Extra `[[credential.deliver]]` sections after the file target (`{dir}` is replaced).
    extra_targets: &'static str,
    /// The file target's directory, relative to the temp dir (default `out`).
    file_dir: Option<&'static str>,
    /// A provider without an issuing API (kind `http`, check only).
    no_issuer: bool,
}

/// One of the daemon's passes over the credential ([`Fixture::run_passes_for`]).
#[derive(Debug)]
struct Pass {
    /// When it began, on the engine's clock.
    at: i64,
    /// It answered an error (the daemon's next pass then waits a minute).
    failed: bool,
    /// The owner epoch of the rotation in flight after it.
    epoch: Option<i64>,
}

/// When the rotation in flight was taken over (its epoch rose) during `passes`, from
/// `epoch` before them.
fn takeovers(mut epoch: Option<i64>, passes: &[Pass]) -> Vec<i64> {
    let mut at = Vec::new();
    for pass in passes {
        if pass.epoch.is_some() && pass.epoch > epoch {
            at.push(pass.at);
        }
        epoch = pass.epoch;
    }
    at
}

fn toml_str(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

fn config_text(sim: &Simulator, dir: &Path, setup: &Setup) -> String {
    let mgmt = dir.join("mgmt");
    std::fs::write(&mgmt, sim.management_key()).unwrap();
    let provider = if setup.no_issuer {
        format!(
            r#"[[provider]]
name = "sim"
kind = "http"
base_url = "{base}"
timeout = "{TIMEOUT}"
[provider.http.check]
path = "/v1/key"
headers = {{ Authorization = "Bearer {{key}}" }}
"#,
            base = sim.base_url()
        )
    } else {
        format!(
            r#"[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt} }}
timeout = "{TIMEOUT}"
"#,
            base = sim.base_url(),
            mgmt = toml_str(&mgmt)
        )
    };
    let file_dir = dir.join(setup.file_dir.unwrap_or("out"));
    format!(
        r#"{provider}
[[credential]]
name = "{CRED}"
provider = "sim"
[credential.rotation]
grace = "1h"
{rotation}
[[credential.deliver]]
kind = "file"
path = {key}
{extra}
"#,
        rotation = setup.rotation,
        key = toml_str(&file_dir.join("key")),
        extra = setup
            .extra_targets
            .replace("{dir}", &dir.display().to_string()),
    )
}

async fn fixture(setup: Setup) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let clock = ManualClock::new(START);
    // The provider keeps the test's time, so a provider-side expiry is judged on it.
    let (sim, _) =
        Simulator::start_with_clock("127.0.0.1:0".parse().unwrap(), Arc::new(clock.clone()))
            .await
            .unwrap();
    let text = config_text(&sim, dir.path(), &setup);
    let config = Config::parse(&dir.path().join("config.toml"), &text)
        .unwrap_or_else(|e| panic!("config does not parse: {e}\n{text}"));
    let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("keyrotd.db"), Some(sealer))
            .await
            .unwrap(),
    );
    store
        .sync_credentials(&keyrotd::store::credential_specs(&config), START)
        .await
        .unwrap();
    let rt = runtime(&config);
    let engine = Arc::new(Engine::new(
        store.clone() as Arc<dyn Store>,
        Arc::new(clock.clone()),
    ));
    let old = format!("sim-seed-{}", uuid_like());
    let remote = sim.add_key(&old);
    store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(old.clone()),
                expires_at: None,
                provider_key_id: Some(remote),
                rotation_id: None,
            },
            "test",
            START,
        )
        .await
        .unwrap();
    let key_file = dir.path().join(setup.file_dir.unwrap_or("out")).join("key");
    Fixture {
        dir,
        sim,
        store,
        clock,
        engine,
        rt,
        key_file,
        old,
        config: text,
    }
}

fn runtime(config: &Config) -> Arc<CredentialRuntime> {
    rotation::build_runtimes(config, &ProviderTelemetry::new())
        .unwrap()
        .remove(CRED)
        .expect("runtime")
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 12];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    hex::encode(bytes)
}

impl Fixture {
    /// The fixture's credential on a provider client that gives up after [`SHORT_TIMEOUT`],
    /// for a rotation the simulator never answers. Everything else uses `rt`.
    fn timing_out_after_short_timeout(&self) -> Arc<CredentialRuntime> {
        let generous = format!("timeout = \"{TIMEOUT}\"");
        assert!(self.config.contains(&generous), "{}", self.config);
        let text = self
            .config
            .replace(&generous, &format!("timeout = \"{SHORT_TIMEOUT}\""));
        let config = Config::parse(&self.dir.path().join("config.toml"), &text).unwrap();
        runtime(&config)
    }

    /// Rotates on a runtime that times out, bounded only against a hang.
    async fn rotate_timing_out(&self) -> RotationError {
        let rt = self.timing_out_after_short_timeout();
        tokio::time::timeout(HANG_BOUND, self.engine.rotate(&rt, "test"))
            .await
            .expect("the provider timeout did not end the rotation")
            .expect_err("a rotation the provider never answers fails")
    }

    async fn versions(&self) -> Vec<KeyVersion> {
        self.store.versions(CRED).await.unwrap()
    }

    async fn in_stage(&self, stage: Stage) -> Vec<KeyVersion> {
        self.versions()
            .await
            .into_iter()
            .filter(|v| v.stage == stage)
            .collect()
    }

    async fn current(&self) -> KeyVersion {
        let current = self.in_stage(Stage::Current).await;
        assert_eq!(current.len(), 1, "exactly one current: {current:#?}");
        current[0].clone()
    }

    async fn current_secret(&self) -> String {
        let id = self.current().await.id;
        self.store
            .secret(id)
            .await
            .unwrap()
            .expose_secret()
            .to_string()
    }

    fn delivered(&self) -> String {
        std::fs::read_to_string(&self.key_file)
            .unwrap_or_default()
            .trim_end()
            .to_string()
    }

    async fn event_kinds(&self) -> Vec<String> {
        self.store
            .events(CRED)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    /// Every key the simulator accepts is the seed or a key the store holds as pending,
    /// current or previous: no orphan.
    async fn assert_no_orphans(&self) {
        let known: Vec<String> = self
            .versions()
            .await
            .into_iter()
            .filter(|v| matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous))
            .filter_map(|v| v.provider_key_id)
            .collect();
        for (id, name) in self.sim.live_keys() {
            assert!(
                known.contains(&id),
                "live key {id} ({name}) at the provider is unknown to the store; known: {known:?}"
            );
        }
    }

    /// The state after a failed rotation: the old key current, live and delivered (if it
    /// was ever delivered), `failures` counted, a retry scheduled in the future.
    async fn assert_failed_cleanly(&self, failures: i64, delivered_before: &str) {
        let current = self.current_secret().await;
        assert_eq!(current, self.old, "the old key must stay current");
        assert!(self.sim.is_live(&self.old), "the old key must keep working");
        assert_eq!(self.delivered(), delivered_before, "delivered file changed");
        assert!(self.in_stage(Stage::Pending).await.is_empty());
        let credential = self.store.credential(CRED).await.unwrap().unwrap();
        assert_eq!(credential.consecutive_failures, failures);
        let next = credential.next_rotation_at.expect("a retry is scheduled");
        assert!(
            next > self.clock.now(),
            "retry at {next} is not in the future (now {})",
            self.clock.now()
        );
        let snapshot = self.store.snapshot().await.unwrap();
        let state = &snapshot.credentials[0];
        assert_eq!(state.rotations_failed, failures as u64);
        assert!(self.store.rotations_in_flight().await.unwrap().is_empty());
        assert!(self.event_kinds().await.contains(&"rotation_failed".into()));
        self.assert_no_orphans().await;
    }

    /// The state of a rotation that needs attention: the old key current, the new key
    /// still pending, both live at the provider, the rotation unfinished in `attention`,
    /// recorded and exported; nothing wound up or revoked.
    async fn assert_needs_attention(&self) -> String {
        assert_eq!(
            self.current_secret().await,
            self.old,
            "the old key stays current"
        );
        let pending = self.in_stage(Stage::Pending).await;
        assert_eq!(
            pending.len(),
            1,
            "the new key is not discarded: {pending:#?}"
        );
        let new = self
            .store
            .secret(pending[0].id)
            .await
            .unwrap()
            .expose_secret()
            .to_string();
        assert!(self.sim.is_live(&self.old), "the old key stays live");
        assert!(self.sim.is_live(&new), "the new key is not revoked");
        let in_flight = self.store.rotations_in_flight().await.unwrap();
        assert_eq!(in_flight.len(), 1, "the rotation stays unfinished");
        assert_eq!(in_flight[0].step, keyrotd::store::RotationStep::Attention);
        let kinds = self.event_kinds().await;
        assert!(kinds.contains(&"needs_attention".into()), "{kinds:?}");
        assert!(!kinds.contains(&"rotation_failed".into()), "{kinds:?}");
        let snapshot = self.store.snapshot().await.unwrap();
        assert!(snapshot.credentials[0].needs_attention);
        assert_eq!(snapshot.credentials[0].rotations_failed, 0);
        new
    }

    /// Runs the daemon's pass until the rotation in attention is wound up: the restore is
    /// retried once its backoff (the lease, on the database's clock) is over.
    async fn pass_until_cleared(&self) {
        let cleared = tokio::time::timeout(HANG_BOUND, async {
            loop {
                self.engine.tick(&self.rt).await.unwrap();
                if self.store.rotations_in_flight().await.unwrap().is_empty() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(cleared.is_ok(), "the rotation in attention never cleared");
        let snapshot = self.store.snapshot().await.unwrap();
        assert!(!snapshot.credentials[0].needs_attention);
    }

    /// The test's own connection to the fixture's database, for what no store API does:
    /// moving leases, injecting a write the database refuses.
    async fn database(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&format!(
            "sqlite://{}",
            self.dir.path().join("keyrotd.db").display()
        ))
        .await
        .unwrap()
    }

    /// The owner epoch of the credential's rotation in flight; it rises at every takeover.
    async fn epoch_in_flight(&self) -> Option<i64> {
        let in_flight = self.store.rotations_in_flight().await.unwrap();
        in_flight
            .into_iter()
            .find(|r| r.credential == CRED)
            .map(|r| r.owner_epoch)
    }

    /// Runs the daemon's passes over the credential for `seconds` of the engine's clock,
    /// each when the one before asked for it (the pass queue's own rule,
    /// [`pass_queue::next_pass`]); answers what each pass saw. Leases are judged on the
    /// database's clock, which the test cannot move: every lease in flight is moved back by
    /// as much as the engine's clock moves forward, which is the same to every lease
    /// comparison.
    async fn run_passes_for(&self, database: &sqlx::SqlitePool, seconds: i64) -> Vec<Pass> {
        self.run_passes(database, seconds, |_| false).await
    }

    /// [`Fixture::run_passes_for`] until a pass winds up the rotation in flight, within
    /// `seconds`.
    async fn run_passes_until_cleared(&self, database: &sqlx::SqlitePool, seconds: i64) {
        let passes = self
            .run_passes(database, seconds, |pass| pass.epoch.is_none())
            .await;
        assert!(
            passes.last().is_some_and(|pass| pass.epoch.is_none()),
            "the rotation in flight was not wound up within {seconds}s: {passes:?}"
        );
    }

    async fn run_passes(
        &self,
        database: &sqlx::SqlitePool,
        seconds: i64,
        stop: impl Fn(&Pass) -> bool,
    ) -> Vec<Pass> {
        let end = self.clock.now() + seconds;
        let mut passes = Vec::new();
        while self.clock.now() < end {
            let began = self.clock.now();
            let answer = self.engine.tick(&self.rt).await;
            passes.push(Pass {
                at: began,
                failed: answer.is_err(),
                epoch: self.epoch_in_flight().await,
            });
            if passes.last().is_some_and(&stop) {
                break;
            }
            let Some(next) = pass_queue::next_pass(began, &answer, self.clock.now()) else {
                break;
            };
            let next = next.min(end);
            sqlx::query(
                "UPDATE rotations SET lease_expires_at = lease_expires_at - ? WHERE finished_at IS NULL",
            )
            .bind(next - self.clock.now())
            .execute(database)
            .await
            .unwrap();
            self.clock.set(next);
        }
        passes
    }

    /// A retry after the fault cleared succeeds and leaves the new key delivered.
    async fn assert_retry_succeeds(&self) {
        let rotated = self.engine.rotate(&self.rt, "test").await.expect("retry");
        let secret = self.current_secret().await;
        assert_ne!(secret, self.old);
        assert_eq!(self.current().await.id, rotated.version_id);
        assert_eq!(self.delivered(), secret);
        assert!(self.sim.is_live(&secret));
        assert!(
            self.sim.is_live(&self.old),
            "previous key stays live in grace"
        );
        let credential = self.store.credential(CRED).await.unwrap().unwrap();
        assert_eq!(credential.consecutive_failures, 0);
        self.assert_no_orphans().await;
    }
}

#[tokio::test]
async fn a_rotation_issues_verifies_delivers_and_promotes() {
    let f = fixture(Setup::default()).await;
    let rotated = f.engine.rotate(&f.rt, "test").await.unwrap();
    let new = f.current_secret().await;
    assert_ne!(new, f.old);
    assert_eq!(rotated.fingerprint, f.current().await.fingerprint);
    let previous = f.in_stage(Stage::Previous).await;
    assert_eq!(previous.len(), 1);
    assert_eq!(
        f.store
            .secret(previous[0].id)
            .await
            .unwrap()
            .expose_secret(),
        f.old
    );
    assert_eq!(f.delivered(), new, "the file holds the new key");
    assert!(f.sim.is_live(&new) && f.sim.is_live(&f.old));
    let live = f.sim.live_keys();
    assert_eq!(live.len(), 2, "{live:?}");
    let installation = f.store.installation_id().await.unwrap();
    let expected_name = rotation::issued_key_name(&installation, CRED, &rotated.rotation_id);
    assert!(
        live.iter().any(|(_, name)| *name == expected_name),
        "{live:?}"
    );
    let kinds = f.event_kinds().await;
    for kind in [
        "rotation_planned",
        "issued",
        "verified",
        "delivered",
        "promoted",
    ] {
        assert!(kinds.contains(&kind.to_string()), "no {kind} in {kinds:?}");
    }
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.last_rotated_at, Some(START));
    assert_eq!(credential.consecutive_failures, 0);
    let snapshot = f.store.snapshot().await.unwrap();
    assert_eq!(snapshot.credentials[0].rotations_succeeded, 1);
    assert!(f.store.rotations_in_flight().await.unwrap().is_empty());
    f.assert_no_orphans().await;
}

#[tokio::test]
async fn the_previous_key_is_revoked_only_after_its_grace_period() {
    let f = fixture(Setup::default()).await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let previous = f.in_stage(Stage::Previous).await[0].clone();

    f.clock.advance(GRACE - 1);
    let next = f.engine.revoke_due(&f.rt).await.unwrap();
    assert_eq!(next, Some(START + GRACE), "wakes when the grace ends");
    assert!(f.sim.is_live(&f.old), "revoked inside its grace period");
    assert_eq!(f.in_stage(Stage::Previous).await.len(), 1);

    f.clock.advance(1);
    f.engine.revoke_due(&f.rt).await.unwrap();
    assert!(!f.sim.is_live(&f.old), "still live at the provider");
    let revoked = f
        .versions()
        .await
        .into_iter()
        .find(|v| v.id == previous.id)
        .unwrap();
    assert_eq!(revoked.stage, Stage::Revoked);
    assert!(!revoked.has_secret, "secret material kept after revocation");
    assert!(f.store.secret(previous.id).await.is_err());
    let new = f.current_secret().await;
    assert!(f.sim.is_live(&new));
    assert_eq!(f.delivered(), new);
    assert!(f.event_kinds().await.contains(&"revoked".into()));
}

/// The revocation totals and keys past grace of the test credential, as the metrics read them.
async fn revocations(f: &Fixture) -> keyrotd::store::Revocations {
    f.store
        .snapshot()
        .await
        .unwrap()
        .credentials
        .into_iter()
        .find(|c| c.credential.name == CRED)
        .expect("the credential's state")
        .revocations
}

/// Upper bound of the `attempt`-th (0-based) retry delay of the credential's backoff.
fn retry_ceiling(f: &Fixture, attempt: u32) -> i64 {
    let backoff = f.rt.retry;
    (backoff.base * 2u32.pow(attempt))
        .min(backoff.cap)
        .as_secs() as i64
}

#[tokio::test]
async fn a_revocation_the_provider_refuses_is_recorded_counted_and_backed_off() {
    let f = fixture(Setup::default()).await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let previous = f.in_stage(Stage::Previous).await[0].clone();
    f.clock.advance(GRACE);
    f.sim.fail_next(Op::Revoke, Fault::ServerError, 3);

    // First failure: an event with the reason, the counter, the key past grace, and a retry
    // after the credential's backoff (not a fixed five minutes).
    let failed_at = f.clock.now();
    let retry = f.engine.revoke_due(&f.rt).await.unwrap().expect("a retry");
    assert!(f.sim.is_live(&f.old));
    let wait = retry - failed_at;
    assert!(
        wait >= retry_ceiling(&f, 0) / 2 && wait <= retry_ceiling(&f, 0),
        "first retry after {wait} s"
    );
    let events = f.store.events(CRED).await.unwrap();
    let failure = events
        .iter()
        .find(|e| e.kind == "revocation_failed")
        .expect("a revocation_failed event");
    assert_eq!(failure.version_id, Some(previous.id));
    assert!(
        failure.detail.contains(&previous.fingerprint),
        "{}",
        failure.detail
    );
    assert!(failure.detail.contains("500"), "{}", failure.detail);
    assert!(!failure.detail.contains(&f.old), "{}", failure.detail);
    let state = revocations(&f).await;
    assert_eq!((state.succeeded, state.failed, state.past_grace), (0, 1, 1));
    assert_eq!(state.failing_since, Some(failed_at));

    // Second failure: the wait grows.
    f.clock.advance(wait);
    let retry2 = f.engine.revoke_due(&f.rt).await.unwrap().expect("a retry");
    let wait2 = retry2 - f.clock.now();
    assert!(
        wait2 >= retry_ceiling(&f, 1) / 2 && wait2 <= retry_ceiling(&f, 1),
        "second retry after {wait2} s"
    );
    let state = revocations(&f).await;
    assert_eq!((state.failed, state.past_grace), (2, 1));
    assert_eq!(state.failing_since, Some(failed_at), "the first failure");

    // Third failure: past the base delay (the old code retried every five minutes).
    f.clock.advance(wait2);
    let retry3 = f.engine.revoke_due(&f.rt).await.unwrap().expect("a retry");
    let wait3 = retry3 - f.clock.now();
    assert!(
        wait3 >= retry_ceiling(&f, 2) / 2 && wait3 <= retry_ceiling(&f, 2),
        "third retry after {wait3} s"
    );
    assert!(wait3 > f.rt.retry.base.as_secs() as i64, "{wait3} s");

    // The provider answers again: revoked, counted, nothing past grace any more.
    f.clock.advance(wait3);
    assert_eq!(f.engine.revoke_due(&f.rt).await.unwrap(), None);
    assert!(!f.sim.is_live(&f.old));
    let state = revocations(&f).await;
    assert_eq!(
        (
            state.succeeded,
            state.failed,
            state.retired_locally,
            state.past_grace
        ),
        (1, 3, 0, 0)
    );
    assert_eq!(state.failing_since, None);
}

#[tokio::test]
async fn a_provider_without_revocation_retires_replaced_keys_locally() {
    let f = fixture(Setup {
        no_issuer: true,
        ..Setup::default()
    })
    .await;
    let replacement = format!("sim-op-{}", uuid_like());
    f.sim.add_key(&replacement);
    f.store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(replacement.clone()),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            },
            "operator",
            f.clock.now(),
        )
        .await
        .unwrap();
    f.engine.rotate(&f.rt, "operator").await.unwrap();
    let previous = f.in_stage(Stage::Previous).await[0].clone();
    f.clock.advance(GRACE);
    assert_eq!(f.engine.revoke_due(&f.rt).await.unwrap(), None, "no retry");

    let retired = f
        .versions()
        .await
        .into_iter()
        .find(|v| v.id == previous.id)
        .unwrap();
    assert_eq!(retired.stage, Stage::Revoked);
    assert!(!retired.has_secret, "the secret is not kept forever");
    assert!(
        f.sim.is_live(&f.old),
        "nothing could revoke it at the provider"
    );
    let events = f.store.events(CRED).await.unwrap();
    let event = events
        .iter()
        .find(|e| e.kind == "retired_locally")
        .expect("a retired_locally event");
    assert!(event.detail.contains("still live"), "{}", event.detail);
    assert!(
        event.detail.contains(&previous.fingerprint),
        "{}",
        event.detail
    );
    let state = revocations(&f).await;
    assert_eq!(
        (
            state.succeeded,
            state.failed,
            state.retired_locally,
            state.past_grace
        ),
        (0, 0, 1, 0)
    );
}

#[tokio::test]
async fn rotation_counters_are_running_totals_that_pruning_events_does_not_lower() {
    let f = fixture(Setup::default()).await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.rotate(&f.rt, "test").await.unwrap_err();
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let totals = || async {
        let state = f
            .store
            .snapshot()
            .await
            .unwrap()
            .credentials
            .into_iter()
            .find(|c| c.credential.name == CRED)
            .unwrap();
        (state.rotations_succeeded, state.rotations_failed)
    };
    assert_eq!(totals().await, (2, 1));

    // Prune every event so far, in small batches: the totals stay.
    let cutoff = f.clock.now() + 1;
    let mut deleted = 0;
    loop {
        let batch = f.store.prune_events(cutoff, 3).await.unwrap();
        deleted += batch;
        if batch < 3 {
            break;
        }
    }
    assert!(deleted >= 10, "deleted {deleted}");
    assert!(f.store.events(CRED).await.unwrap().is_empty());
    assert_eq!(totals().await, (2, 1));
    f.clock.advance(10);
    f.engine.rotate(&f.rt, "test").await.unwrap();
    assert_eq!(totals().await, (3, 1));

    // Only the prune deletes, and only before its cutoff: events stay append-only otherwise.
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}",
        f.dir.path().join("keyrotd.db").display()
    ))
    .await
    .unwrap();
    let refused = sqlx::query("DELETE FROM events").execute(&pool).await;
    assert!(refused.is_err(), "a plain DELETE was allowed");
    assert!(!f.store.events(CRED).await.unwrap().is_empty());
    let refused = sqlx::query("UPDATE events SET detail = 'x'")
        .execute(&pool)
        .await;
    assert!(refused.is_err(), "an UPDATE was allowed");
    pool.close().await;
}

#[tokio::test]
async fn an_issued_key_dies_at_the_provider_after_its_planned_replacement_grace_and_margin() {
    let f = fixture(Setup {
        rotation: "max_age = \"30d\"\nprovider_expiry_margin = \"3d\"",
        ..Setup::default()
    })
    .await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let new = f.current_secret().await;
    let expected = START + 30 * 86_400 + GRACE + 3 * 86_400;
    assert_eq!(
        f.current().await.expires_at,
        Some(expected),
        "the store records the provider-side expiry as the key's expiry"
    );
    f.clock.set(expected - 1);
    assert!(f.sim.is_live(&new), "alive until the expiry it was given");
    f.clock.set(expected);
    assert!(!f.sim.is_live(&new), "dead at the provider on its own");
    // The seeded key, which keyrotd did not issue, never got one.
    assert!(f.sim.is_live(&f.old));
}

#[tokio::test]
async fn a_provider_expiry_margin_of_off_issues_keys_that_live_until_revoked() {
    let f = fixture(Setup {
        rotation: "max_age = \"30d\"\nprovider_expiry_margin = \"off\"",
        ..Setup::default()
    })
    .await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let new = f.current_secret().await;
    assert_eq!(f.current().await.expires_at, None);
    f.clock.set(START + 400 * 86_400);
    assert!(f.sim.is_live(&new));
}

#[tokio::test]
async fn a_failed_rotation_is_retried_before_the_current_key_expires() {
    let f = fixture(Setup {
        rotation: "max_age = \"30d\"\nrotate_before_expiry = \"2h\"\nretry_backoff = \"12h\"\nretry_backoff_max = \"24h\"",
        ..Setup::default()
    })
    .await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    // The key just issued expires at the provider in 30d + 1h + 3d; fail its successor's issue
    // 4 hours before that: a 12-hour backoff would sleep through the expiry.
    let expires = f
        .current()
        .await
        .expires_at
        .expect("a provider-side expiry");
    f.clock.set(expires - 4 * 3600);
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.rotate(&f.rt, "test").await.unwrap_err();
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(
        credential.next_rotation_at,
        Some(expires - 2 * 3600),
        "the retry is pulled in to rotate_before_expiry"
    );
    // Past that moment, the retry comes halfway to the expiry at the latest.
    f.clock.set(expires - 3600);
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.rotate(&f.rt, "test").await.unwrap_err();
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(
        credential.next_rotation_at,
        Some(expires - 1800),
        "retried halfway to the expiry, not after the 12h backoff"
    );
}

#[tokio::test]
async fn issue_failures_leave_the_old_key_and_back_off() {
    let f = fixture(Setup::default()).await;
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::Failed { step: "issue", .. }),
        "{error}"
    );
    f.assert_failed_cleanly(1, "").await;

    f.sim.fail_next(Op::Issue, Fault::Timeout, 1);
    let error = f.rotate_timing_out().await;
    assert!(
        matches!(&error, RotationError::Failed { step: "issue", reason, .. }
            if reason.contains(&format!("did not answer within {SHORT_TIMEOUT}"))),
        "{error}"
    );
    f.assert_failed_cleanly(2, "").await;

    f.assert_retry_succeeds().await;
}

#[tokio::test]
async fn an_issue_that_hangs_after_creating_the_key_leaves_no_orphan_behind() {
    // The provider created the key but the answer never came: the client times out, the
    // rotation fails. The key is not in the store; it must not stay live at the provider.
    let f = fixture(Setup::default()).await;
    f.sim.fail_next(Op::Issue, Fault::HangAfterCreate, 1);
    f.rotate_timing_out().await;
    assert_eq!(f.current_secret().await, f.old);
    f.assert_no_orphans().await;
    f.assert_retry_succeeds().await;
}

/// An orphan that cannot be deleted fails the issue, and the reason names the orphan as
/// `remote_id=<id>`: the log masking keeps a long hex key id readable only as a named field.
#[tokio::test]
async fn an_orphan_that_cannot_be_deleted_is_named_by_its_key_id() {
    let f = fixture(Setup::default()).await;
    f.sim.fail_next(Op::Issue, Fault::HangAfterCreate, 1);
    // One for the sweep right after the failed issue, one for the next rotation's sweep.
    f.sim.fail_next(Op::Revoke, Fault::ServerError, 2);
    f.rotate_timing_out().await;
    // The sweep after the next failure deletes it, so the live keys are read now.
    let live_before = f.sim.live_keys();
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    let RotationError::Failed {
        step: "issue",
        reason,
        ..
    } = &error
    else {
        panic!("expected an issue failure, got {error}");
    };
    let (orphan, _) = live_before
        .iter()
        .find(|(id, _)| reason.contains(id.as_str()))
        .unwrap_or_else(|| panic!("no live key named in {reason:?}: {live_before:?}"));
    assert!(
        reason.contains(&format!("deleting orphan remote_id={orphan}: ")),
        "{reason}"
    );
    f.assert_retry_succeeds().await;
}

/// Old-format names (`keyrotd/<credential>/<rotation>`, from before installation ids): one
/// whose rotation this database planned was issued by it before the upgrade and is swept;
/// one whose rotation it never planned is reported and left live.
#[tokio::test]
async fn old_format_keys_are_swept_only_when_this_database_planned_their_rotation() {
    let f = fixture(Setup::default()).await;
    let (_, lease) = f
        .store
        .plan_rotation(CRED, "r-before-upgrade", "test", &live_owner(), START)
        .await
        .unwrap();
    f.store
        .fail_rotation(
            &lease,
            &RotationFailure {
                error: "issue: lost answer".into(),
                discard_pending: true,
                retry_at: None,
            },
            START,
        )
        .await
        .unwrap();
    let ours = "sk-test-old-format-ours".to_string();
    let unknown = "sk-test-old-format-unknown".to_string();
    f.sim
        .add_named_key(&ours, &format!("keyrotd/{CRED}/r-before-upgrade"));
    f.sim
        .add_named_key(&unknown, &format!("keyrotd/{CRED}/r-never-planned"));
    let other_installation = "sk-test-other-installation".to_string();
    f.sim.add_named_key(
        &other_installation,
        &format!("keyrotd/0123456789ab/{CRED}/r-elsewhere"),
    );
    f.engine.rotate(&f.rt, "test").await.unwrap();
    assert!(!f.sim.is_live(&ours), "the old-format orphan is still live");
    assert!(f.sim.is_live(&unknown), "an unplaced key was deleted");
    assert!(
        f.sim.is_live(&other_installation),
        "another installation's key was deleted"
    );
    let kinds = f.event_kinds().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "orphan_unplaced").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"orphan_deleted".to_string()), "{kinds:?}");
    // Reported once per key, not on every sweep.
    f.clock.advance(3600);
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let kinds = f.event_kinds().await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "orphan_unplaced").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        f.engine
            .unplaced_keys_gauge()
            .with_label_values(&[CRED])
            .get(),
        2
    );
}

#[tokio::test]
async fn a_new_key_the_provider_refuses_is_discarded_and_revoked() {
    let f = fixture(Setup::default()).await;
    f.sim.fail_next(Op::Issue, Fault::RejectNewKey, 1);
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::Failed { step: "verify", .. }),
        "{error}"
    );
    f.assert_failed_cleanly(1, "").await;
    let failed = f.in_stage(Stage::Revoked).await;
    assert_eq!(failed.len(), 1, "the refused key is revoked: {failed:#?}");
    assert!(!failed[0].has_secret);
    assert_eq!(f.sim.live_keys().len(), 1, "only the seed is live");
    f.assert_retry_succeeds().await;
}

#[tokio::test]
async fn a_check_outage_during_verify_discards_the_new_key() {
    // Three checks fill a window of 3s (at 0s, 1s and 3s): the outage outlasts it.
    let f = fixture(Setup {
        rotation: "verify_timeout = \"3s\"",
        ..Setup::default()
    })
    .await;
    f.sim.fail_next(Op::Check, Fault::ServerError, 3);
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::Failed { step: "verify", .. }),
        "{error}"
    );
    f.assert_failed_cleanly(1, "").await;
    assert_eq!(f.sim.live_keys().len(), 1, "only the seed is live");
    f.assert_retry_succeeds().await;
}

#[tokio::test]
async fn a_check_outage_shorter_than_the_verify_timeout_does_not_fail_the_rotation() {
    let f = fixture(Setup::default()).await;
    f.sim.fail_next(Op::Check, Fault::ServerError, 3);
    f.engine
        .rotate(&f.rt, "test")
        .await
        .expect("the fourth check answers valid");
    assert_eq!(f.sim.request_count(Op::Check), 4);
    let secret = f.current_secret().await;
    assert_ne!(secret, f.old);
    assert_eq!(f.delivered(), secret);
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.consecutive_failures, 0);
}

/// Checks of the new key a rotation made, and how far it moved the engine's clock.
async fn rotate_counting_checks(
    f: &Fixture,
) -> (Result<rotation::Rotated, RotationError>, u64, i64) {
    let (checks, started) = (f.sim.request_count(Op::Check), f.clock.now());
    let outcome = f.engine.rotate(&f.rt, "test").await;
    (
        outcome,
        f.sim.request_count(Op::Check) - checks,
        f.clock.now() - started,
    )
}

/// A wall clock that NTP steps back by twice every pause the engine takes on it.
struct SteppedBack(ManualClock);

impl Clock for SteppedBack {
    fn now(&self) -> i64 {
        self.0.now()
    }
    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        self.0.advance(-2 * duration.as_secs().max(1) as i64);
        Box::pin(tokio::task::yield_now())
    }
}

#[tokio::test]
async fn a_clock_stepped_back_does_not_stretch_the_verify_window() {
    let f = fixture(Setup {
        rotation: "verify_timeout = \"20s\"",
        ..Setup::default()
    })
    .await;
    f.sim
        .activate_after(Some(std::time::Duration::from_secs(3600)));
    let engine = Engine::new(
        f.store.clone() as Arc<dyn keyrotd::store::Store>,
        Arc::new(SteppedBack(f.clock.clone())),
    );
    let checks = f.sim.request_count(Op::Check);
    // The clock never reaches the window's end: the pauses taken must end it.
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        engine.rotate(&f.rt, "test"),
    )
    .await
    .expect("the verify step kept asking while the clock went back");
    let checks = f.sim.request_count(Op::Check) - checks;
    let error = outcome.unwrap_err();
    assert!(
        matches!(&error, RotationError::Failed { step, .. } if *step == "verify"),
        "{error}"
    );
    // Pauses of 1, 2, 4, 8 and the 5 s left of 20: six checks.
    assert_eq!(checks, 6, "{error}");
}

#[tokio::test]
async fn a_new_key_that_starts_working_within_the_verify_timeout_is_taken() {
    // The vendor's key store catches up 28s after the key is issued: inside the default
    // window of 30s, far beyond a few quick retries.
    let f = fixture(Setup::default()).await;
    f.sim
        .activate_after(Some(std::time::Duration::from_secs(28)));
    let (outcome, checks, elapsed) = rotate_counting_checks(&f).await;
    let rotated = outcome.expect("the key is verified once it works");
    assert_eq!(f.current().await.id, rotated.version_id);
    let secret = f.current_secret().await;
    assert_ne!(secret, f.old);
    assert_eq!(f.delivered(), secret);
    assert!(f.sim.is_live(&secret));
    assert_eq!(
        f.store
            .credential(CRED)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
    // Asked again with growing pauses, not every second; the last check at the window's end.
    assert!((28..=30).contains(&elapsed), "verified after {elapsed}s");
    assert!(checks <= 8, "{checks} checks in {elapsed}s");
    f.assert_no_orphans().await;
}

#[tokio::test]
async fn a_new_key_that_never_works_is_discarded_once_the_verify_timeout_is_over() {
    let f = fixture(Setup {
        rotation: "verify_timeout = \"20s\"",
        ..Setup::default()
    })
    .await;
    f.sim
        .activate_after(Some(std::time::Duration::from_secs(3600)));
    let (outcome, checks, elapsed) = rotate_counting_checks(&f).await;
    let error = outcome.unwrap_err();
    let RotationError::Failed { step, reason, .. } = &error else {
        panic!("not a failed rotation: {error}");
    };
    assert_eq!(*step, "verify");
    assert_eq!(elapsed, 20, "the whole window is used, and no more");
    assert!(checks > 3 && checks < 10, "{checks} checks in {elapsed}s");
    assert!(
        reason.contains(&format!(
            "after {checks} checks over 20s (`verify_timeout`)"
        )) && reason.contains("invalid"),
        "{reason}"
    );
    f.assert_failed_cleanly(1, "").await;
    // Discarded and deleted at the provider: it never comes to life there later.
    let discarded = f.in_stage(Stage::Revoked).await;
    assert_eq!(discarded.len(), 1, "{discarded:#?}");
    assert!(!discarded[0].has_secret);
    f.clock.advance(3600);
    assert_eq!(f.sim.live_keys().len(), 1, "only the seed is live");
}

#[tokio::test]
async fn a_delivery_to_a_missing_directory_fails_cleanly() {
    // The only target takes neither the new key nor the old one back: the rotation waits
    // in attention (nothing revoked) until the directory exists, then winds up as failed.
    let f = fixture(Setup {
        file_dir: Some("missing"),
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::NeedsAttention { .. }),
        "{error}"
    );
    let new = f.assert_needs_attention().await;
    std::fs::create_dir(f.dir.path().join("missing")).unwrap();
    f.pass_until_cleared().await;
    assert!(
        !f.sim.is_live(&new),
        "the discarded key is revoked once restored"
    );
    f.assert_failed_cleanly(1, &f.old).await;
    assert_eq!(f.sim.live_keys().len(), 1, "the undelivered key is revoked");
    f.assert_retry_succeeds().await;
}

#[tokio::test]
async fn a_failing_hook_after_the_file_puts_the_old_key_back() {
    let f = fixture(Setup {
        extra_targets: r#"[[credential.deliver]]
kind = "exec"
command = ["sh", "-c", "test ! -e {dir}/hook-fails"]
"#,
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    // The operator's consumers hold the old key before the rotation.
    std::fs::write(&f.key_file, format!("{}\n", f.old)).unwrap();
    std::fs::write(f.dir.path().join("hook-fails"), "").unwrap();
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    // The hook fails the restore too: it may hold the new key, so nothing is revoked
    // until it takes the old one back.
    assert!(
        matches!(&error, RotationError::NeedsAttention { .. }),
        "{error}"
    );
    f.assert_needs_attention().await;
    assert_eq!(f.delivered(), f.old, "the file got the old key back");
    std::fs::remove_file(f.dir.path().join("hook-fails")).unwrap();
    f.pass_until_cleared().await;
    f.assert_failed_cleanly(1, &f.old).await;
    assert_eq!(f.sim.live_keys().len(), 1, "the undelivered key is revoked");
    f.assert_retry_succeeds().await;
}

/// Restore before discard: the delivery fails on the hook after the file took the new
/// key, and the file cannot take the old key back (its directory went away). Revoking the
/// new key would cut the file's consumer off: the rotation waits in attention with both
/// keys live; once the directory is back the daemon's pass restores and winds it up.
#[tokio::test]
async fn a_restore_that_fails_on_one_target_waits_in_attention_until_fixed() {
    let f = fixture(Setup {
        extra_targets: r#"[[credential.deliver]]
kind = "exec"
command = ["sh", "-c", "test -e {dir}/hook-ok || { mv {dir}/out {dir}/gone; exit 1; }"]
"#,
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    std::fs::write(&f.key_file, format!("{}\n", f.old)).unwrap();
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::NeedsAttention { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("needs attention"), "{error}");
    let new = f.assert_needs_attention().await;
    // The file's consumer holds the new key, and it still works.
    let held = std::fs::read_to_string(f.dir.path().join("gone/key")).unwrap();
    assert_eq!(held.trim_end(), new);
    assert!(f.sim.is_live(held.trim_end()));
    // A pass before the backoff is over changes nothing.
    f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(f.store.rotations_in_flight().await.unwrap().len(), 1);
    assert!(f.sim.is_live(&new));
    // The operator fixes the target.
    std::fs::rename(f.dir.path().join("gone"), f.dir.path().join("out")).unwrap();
    std::fs::write(f.dir.path().join("hook-ok"), "").unwrap();
    f.pass_until_cleared().await;
    assert_eq!(f.delivered(), f.old, "the file holds the current key again");
    assert!(!f.sim.is_live(&new), "the discarded key is revoked");
    f.assert_failed_cleanly(1, &f.old).await;
    f.assert_retry_succeeds().await;
}

/// A restore that keeps failing is retried at its retry time, and that backs off further
/// at every failed restore, as failed rotations do, up to `retry_backoff_max` but never
/// past 15 minutes (a fixed target must clear soon, whatever the backoff's cap). Each retry
/// takes the rotation over (its lease is the backoff; its epoch rises), so a backoff that
/// stayed at its first step would take the rotation over, log and bump its epoch every
/// second or two for as long as the target stays broken.
#[tokio::test]
async fn a_restore_that_keeps_failing_is_retried_with_a_growing_backoff() {
    let f = fixture(Setup {
        file_dir: Some("missing"),
        rotation: "retry_backoff = \"1s\"\nretry_backoff_max = \"6h\"",
        ..Setup::default()
    })
    .await;
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::NeedsAttention { .. }),
        "{error}"
    );
    let database = f.database().await;
    let before = f.epoch_in_flight().await;
    let passes = f.run_passes_for(&database, 600).await;
    let retries = takeovers(before, &passes);
    assert!(passes.iter().all(|p| !p.failed), "{passes:?}");
    // The n-th retry comes a second after a wait of 2^(n-1)..2^n s (equal jitter on a
    // ceiling doubling from 1s), so ten minutes hold nine or ten; a backoff stuck at its
    // first step, about 300.
    assert!(
        (8..=11).contains(&retries.len()),
        "{} retries of the restore in ten minutes at {retries:?}; {} passes",
        retries.len(),
        passes.len()
    );
    let gaps: Vec<i64> = retries.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]) && gaps.last().is_some_and(|&g| g >= 64),
        "the waits between retries do not grow: {gaps:?}"
    );
    // Each pass between two retries is the retry's own: none looks in between.
    assert!(
        passes.len() <= retries.len() + 2,
        "{} passes for {} retries: {passes:?}",
        passes.len(),
        retries.len()
    );
    // Two hours on, the waits have stopped growing at the restore's 15-minute cap (a
    // retry comes a second after its wait), far below the 6h `retry_backoff_max`.
    let last_before = *retries.last().unwrap();
    let later = takeovers(
        passes.last().unwrap().epoch,
        &f.run_passes_for(&database, 7200).await,
    );
    let later_gaps: Vec<i64> = std::iter::once(last_before)
        .chain(later.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .collect();
    assert!(
        later_gaps.len() >= 6
            && later_gaps.iter().all(|&g| g <= 15 * 60 + 2)
            && later_gaps.iter().any(|&g| g >= 15 * 60 - 1),
        "the waits between restores are not capped at 15 minutes: {later_gaps:?}"
    );
    f.assert_needs_attention().await;
    // Once the target is fixed, the next retry (at most 15 minutes away) winds the
    // rotation up.
    std::fs::create_dir(f.dir.path().join("missing")).unwrap();
    f.run_passes_until_cleared(&database, 15 * 60 + 60).await;
    f.assert_failed_cleanly(1, &f.old).await;
    database.close().await;
}

/// A takeover the store cannot record (here a trigger refuses it) fails the pass, and the
/// daemon's next pass comes a minute later as after any pass the store failed, not at once:
/// looking again at once would try, fail and log the takeover every second.
#[tokio::test]
async fn a_takeover_the_store_refuses_is_not_retried_every_second() {
    let f = fixture(Setup {
        file_dir: Some("missing"),
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    f.engine.rotate(&f.rt, "test").await.unwrap_err();
    f.assert_needs_attention().await;
    let database = f.database().await;
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_takeover BEFORE UPDATE OF owner_epoch ON rotations
         BEGIN SELECT RAISE(ABORT, 'injected: the takeover cannot be written'); END",
    )
    .execute(&database)
    .await
    .unwrap();
    let before = f.epoch_in_flight().await;
    let passes = f.run_passes_for(&database, 600).await;
    assert!(takeovers(before, &passes).is_empty(), "{passes:?}");
    assert!(
        passes.len() <= 11,
        "{} passes in ten minutes: {passes:?}",
        passes.len()
    );
    assert!(passes.iter().skip(1).all(|p| p.failed), "{passes:?}");
    // Once the store takes writes again, the restore is retried and, with the target
    // fixed, the rotation is wound up.
    sqlx::raw_sql("DROP TRIGGER refuse_takeover")
        .execute(&database)
        .await
        .unwrap();
    std::fs::create_dir(f.dir.path().join("missing")).unwrap();
    f.run_passes_until_cleared(&database, 120).await;
    f.assert_failed_cleanly(1, &f.old).await;
    database.close().await;
}

#[tokio::test]
async fn two_rotations_of_one_credential_never_run_at_once() {
    let f = fixture(Setup::default()).await;
    // Same engine: the per-credential lock serialises them.
    let (a, b) = tokio::join!(f.engine.rotate(&f.rt, "a"), f.engine.rotate(&f.rt, "b"));
    for result in [&a, &b] {
        match result {
            Ok(_) | Err(RotationError::InFlight { .. }) => {}
            Err(other) => panic!("unexpected: {other}"),
        }
    }
    assert!(a.is_ok() || b.is_ok());
    f.current().await;
    f.assert_no_orphans().await;

    // Two engines on one store (two processes): the store's in-flight index decides.
    let other = Engine::new(f.store.clone() as Arc<dyn Store>, Arc::new(f.clock.clone()));
    let watcher_store = f.store.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let watcher = tokio::spawn(async move {
        let mut max = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            max = max.max(watcher_store.rotations_in_flight().await.unwrap().len());
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        max
    });
    let before = f.current().await.id;
    let (a, b) = tokio::join!(f.engine.rotate(&f.rt, "a"), other.rotate(&f.rt, "b"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= 1, "two rotations in flight");
    let oks = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert!(oks >= 1, "{a:?} {b:?}");
    for result in [&a, &b] {
        if let Err(error) = result {
            assert!(matches!(error, RotationError::InFlight { .. }), "{error}");
        }
    }
    let current = f.current().await;
    assert_ne!(current.id, before);
    assert_eq!(f.delivered(), f.current_secret().await);
    assert!(f.in_stage(Stage::Pending).await.is_empty());
    f.assert_no_orphans().await;
}

#[tokio::test]
async fn rollback_inside_grace_restores_the_previous_key_and_is_refused_after() {
    let f = fixture(Setup::default()).await;
    f.engine.rotate(&f.rt, "test").await.unwrap();
    let new = f.current_secret().await;
    f.clock.advance(GRACE / 2);
    let restored = f.engine.rollback(&f.rt, "test").await.unwrap();
    assert_eq!(f.current().await.id, restored.id);
    assert_eq!(f.current_secret().await, f.old);
    assert_eq!(f.delivered(), f.old, "the file holds the restored key");
    assert!(f.event_kinds().await.contains(&"rolled_back".into()));
    // The rolled-back-from key is now previous; rolling forward is a rollback too.
    f.clock.advance(GRACE + 1);
    let error = f.engine.rollback(&f.rt, "test").await.unwrap_err();
    assert!(matches!(error, RotationError::Refused(_)), "{error}");
    assert_eq!(f.current_secret().await, f.old);
    assert_eq!(f.delivered(), f.old);
    // ...and that key is revoked once its grace is over.
    f.engine.revoke_due(&f.rt).await.unwrap();
    assert!(!f.sim.is_live(&new));
    assert!(f.sim.is_live(&f.old));
}

#[tokio::test]
async fn rollback_without_a_previous_key_is_refused() {
    let f = fixture(Setup::default()).await;
    let error = f.engine.rollback(&f.rt, "test").await.unwrap_err();
    assert!(matches!(error, RotationError::Refused(_)), "{error}");
}

#[tokio::test]
async fn the_current_key_cannot_be_revoked() {
    let f = fixture(Setup::default()).await;
    let current = f.current().await;
    let error = f
        .engine
        .revoke_version(&f.rt, &current, "test", "operator")
        .await
        .unwrap_err();
    assert!(matches!(error, RotationError::Refused(_)), "{error}");
    assert!(f.sim.is_live(&f.old));
    assert_eq!(f.current().await.id, current.id);
    assert!(f.current().await.has_secret);
}

#[tokio::test]
async fn without_an_issuer_rotate_asks_for_an_imported_key_and_adopts_it() {
    let f = fixture(Setup {
        no_issuer: true,
        ..Setup::default()
    })
    .await;
    assert!(f.rt.issuer.is_none());
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(matches!(error, RotationError::NoIssuer(_)), "{error}");
    assert!(f.store.rotations_in_flight().await.unwrap().is_empty());

    let replacement = format!("sim-op-{}", uuid_like());
    f.sim.add_key(&replacement);
    let pending = f
        .store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(replacement.clone()),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            },
            "operator",
            f.clock.now(),
        )
        .await
        .unwrap();
    assert_eq!(pending.stage, Stage::Pending);
    let rotated = f.engine.rotate(&f.rt, "operator").await.unwrap();
    assert_eq!(rotated.version_id, pending.id);
    assert_eq!(f.current_secret().await, replacement);
    assert_eq!(f.delivered(), replacement);
    let kinds = f.event_kinds().await;
    for kind in ["adopted", "verified", "delivered", "promoted"] {
        assert!(kinds.contains(&kind.to_string()), "no {kind} in {kinds:?}");
    }
}

#[tokio::test]
async fn an_imported_key_refused_by_the_provider_is_never_promoted() {
    let f = fixture(Setup {
        no_issuer: true,
        ..Setup::default()
    })
    .await;
    let bogus = format!("sim-bogus-{}", uuid_like());
    f.store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(bogus),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            },
            "operator",
            f.clock.now(),
        )
        .await
        .unwrap();
    let error = f.engine.rotate(&f.rt, "operator").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::Failed { step: "verify", .. }),
        "{error}"
    );
    assert_eq!(f.current_secret().await, f.old);
    assert!(f.in_stage(Stage::Pending).await.is_empty());
    assert_eq!(f.delivered(), "", "a refused key is never delivered");
}

#[tokio::test]
async fn an_imported_key_whose_delivery_failed_can_be_retried() {
    // A transient failure keeps the operator's key pending for a retry: the retry must be
    // able to take it (not "no issuer") and promote it.
    let f = fixture(Setup {
        no_issuer: true,
        file_dir: Some("missing"),
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    let replacement = format!("sim-op-{}", uuid_like());
    f.sim.add_key(&replacement);
    f.store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(replacement.clone()),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            },
            "operator",
            f.clock.now(),
        )
        .await
        .unwrap();
    let error = f.engine.rotate(&f.rt, "operator").await.unwrap_err();
    // The only target took neither key: the rotation waits in attention until it takes
    // the old one back, then is wound up with the operator's key kept for a retry.
    assert!(
        matches!(&error, RotationError::NeedsAttention { .. }),
        "{error}"
    );
    f.assert_needs_attention().await;
    std::fs::create_dir(f.dir.path().join("missing")).unwrap();
    f.pass_until_cleared().await;
    assert_eq!(f.current_secret().await, f.old);
    assert_eq!(
        f.in_stage(Stage::Pending).await.len(),
        1,
        "kept for a retry"
    );
    // The scheduler must not hammer a retry before the backoff is over.
    f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(
        f.current_secret().await,
        f.old,
        "retried before the backoff"
    );
    let retry_at = f
        .store
        .credential(CRED)
        .await
        .unwrap()
        .unwrap()
        .next_rotation_at
        .unwrap();
    f.clock.set(retry_at);
    f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(f.current_secret().await, replacement);
    assert_eq!(f.delivered(), replacement);
}

#[tokio::test]
async fn tick_records_the_due_time_rotates_when_due_and_catches_up_once() {
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"",
        ..Setup::default()
    })
    .await;
    let day = 86_400;
    let wake = f.engine.tick(&f.rt).await.unwrap();
    assert!(wake > START && wake <= START + day, "wakes by the due time");
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.next_rotation_at, Some(START + day));
    assert_eq!(f.current_secret().await, f.old, "rotated before due");

    f.clock.set(START + day);
    f.engine.tick(&f.rt).await.unwrap();
    let second = f.current_secret().await;
    assert_ne!(second, f.old, "not rotated when due");
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.next_rotation_at, Some(START + 2 * day));

    // Down for ten periods: one rotation at start-up, not ten.
    f.clock.set(START + 12 * day);
    for _ in 0..5 {
        f.engine.tick(&f.rt).await.unwrap();
    }
    let snapshot = f.store.snapshot().await.unwrap();
    assert_eq!(snapshot.credentials[0].rotations_succeeded, 2);
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.next_rotation_at, Some(START + 13 * day));
    // The catch-up's previous key is inside its grace; the older ones are revoked.
    assert_eq!(f.in_stage(Stage::Previous).await.len(), 1);
    assert!(!f.sim.is_live(&f.old));
    // Keys keyrotd issues die at the provider on their own: the one issued before the
    // downtime expired at its planned replacement plus grace plus the 7-day default margin.
    assert!(
        !f.sim.is_live(&second),
        "the key issued before the downtime is dead at the provider"
    );
    f.assert_no_orphans().await;
}

/// Problem 8: the provider's keys live an hour, the policy rotates two hours before expiry.
/// Every new key is due the moment it is promoted; without the runaway guard each pass
/// would issue and deliver again. Over twelve simulated hours of passes every quarter hour
/// (and a second pass straight after each, as the daemon does after a rotation), the
/// default guard (an hour) allows at most one rotation an hour.
#[tokio::test]
async fn keys_expiring_inside_the_margin_rotate_at_most_once_per_min_age() {
    let f = fixture(Setup {
        rotation: "rotate_before_expiry = \"2h\"",
        ..Setup::default()
    })
    .await;
    // The provider's keys live an hour, less than the two-hour margin: from the engine's view
    // every issued key is past its margin at once.
    f.sim
        .expire_after(Some(std::time::Duration::from_secs(3600)));
    let hours = 12;
    let mut now = START;
    // The seeded key has no expiry: make the first rotation happen through `rotate now`.
    f.engine.rotate(&f.rt, "test").await.unwrap();
    for _ in 0..hours * 4 {
        now += 900;
        f.clock.set(now);
        f.engine.tick(&f.rt).await.unwrap();
        f.engine.tick(&f.rt).await.unwrap();
    }
    let snapshot = f.store.snapshot().await.unwrap();
    let rotations = snapshot.credentials[0].rotations_succeeded;
    assert!(
        (hours - 1..=hours + 1).contains(&rotations),
        "{rotations} rotations in {hours} simulated hours (one an hour expected)"
    );
    // Each key served for at least the guard's hour.
    let current = f.in_stage(Stage::Current).await;
    assert_eq!(current.len(), 1);
    assert_eq!(f.delivered(), f.current_secret().await);
}

#[tokio::test]
async fn tick_retries_a_failed_rotation_after_the_backoff() {
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"\nretry_backoff = \"10m\"",
        ..Setup::default()
    })
    .await;
    f.clock.set(START + 86_400);
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.tick(&f.rt).await.unwrap();
    f.assert_failed_cleanly(1, "").await;
    let retry_at = f
        .store
        .credential(CRED)
        .await
        .unwrap()
        .unwrap()
        .next_rotation_at
        .unwrap();
    assert!(retry_at >= f.clock.now() + 300 && retry_at <= f.clock.now() + 600);
    // Not before the backoff is over...
    let wake = f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(wake, retry_at);
    assert_eq!(f.current_secret().await, f.old);
    // ...then once.
    f.clock.set(retry_at);
    f.engine.tick(&f.rt).await.unwrap();
    assert_ne!(f.current_secret().await, f.old);
    assert_eq!(
        f.store
            .credential(CRED)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        0
    );
}

#[tokio::test]
async fn a_short_retry_backoff_still_schedules_the_retry_in_the_future() {
    let f = fixture(Setup {
        rotation: "retry_backoff = \"1s\"",
        ..Setup::default()
    })
    .await;
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.rotate(&f.rt, "test").await.unwrap_err();
    f.assert_failed_cleanly(1, "").await;
}

#[tokio::test]
async fn the_scheduler_leaves_a_rotation_under_a_live_lease_to_its_owner() {
    // A `key rotate` running beside the daemon owns its rotation: the daemon neither waits
    // for it in a spin nor takes it over while its lease is live, however long it runs.
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"",
        ..Setup::default()
    })
    .await;
    f.store
        .plan_rotation(
            CRED,
            "20260101T000000-a11ce000",
            "cli:alive",
            &live_owner(),
            START + 86_390,
        )
        .await
        .unwrap();
    f.clock.set(START + 86_400);
    let wake = f.engine.tick(&f.rt).await.unwrap();
    assert!(
        wake > f.clock.now(),
        "must not spin while another rotation runs"
    );
    // Even a day later on the engine's clock: only the database's clock judges the lease.
    f.clock.advance(86_400);
    f.engine.tick(&f.rt).await.unwrap();
    f.engine.resume(&f.rt).await.unwrap();
    assert_eq!(f.current_secret().await, f.old);
    let in_flight = f.store.rotations_in_flight().await.unwrap();
    assert_eq!(in_flight.len(), 1);
    assert_eq!(in_flight[0].owner, live_owner().owner);
    assert_eq!(in_flight[0].owner_epoch, 1, "never taken over");
    let error = f.engine.rotate(&f.rt, "test").await.unwrap_err();
    assert!(
        matches!(&error, RotationError::InFlight { owner, .. } if *owner == live_owner().owner),
        "{error}"
    );
    assert!(error.to_string().contains("lease until"), "{error}");
}

#[tokio::test]
async fn the_scheduler_takes_over_a_rotation_whose_owner_s_lease_expired() {
    // A `key rotate` killed right after planning (while the daemon runs) leaves a rotation
    // in flight; once its lease has expired the daemon takes it over and finishes it.
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"",
        ..Setup::default()
    })
    .await;
    f.store
        .plan_rotation(
            CRED,
            "20260101T000000-deadbeef",
            "cli:dead",
            &dead_owner(),
            START + 86_390,
        )
        .await
        .unwrap();
    f.clock.set(START + 86_400);
    let wake = f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(
        wake,
        f.clock.now(),
        "after a takeover, what is due is looked at again at once"
    );
    assert!(f.store.rotations_in_flight().await.unwrap().is_empty());
    let new = f.current_secret().await;
    assert_ne!(new, f.old, "the abandoned rotation was not completed");
    assert_eq!(f.delivered(), new);
    assert_eq!(
        f.current().await.rotation_id.as_deref(),
        Some("20260101T000000-deadbeef")
    );
    assert!(f
        .event_kinds()
        .await
        .contains(&"rotation_taken_over".into()));
    f.assert_no_orphans().await;
}

#[tokio::test]
async fn a_key_bound_to_a_rotation_in_flight_cannot_be_revoked() {
    // Problem 4c: `key revoke` of the new key of a rotation in flight was accepted, so the
    // key being delivered could die under its consumers. Refused now, by the engine before
    // it asks the provider and by the store in the revoking transaction.
    let f = fixture(Setup::default()).await;
    use keyrotd::store::RotationStep;
    let id = "20260101T000000-cafebabe";
    let (_, lease) = f
        .store
        .plan_rotation(CRED, id, "test", &dead_owner(), START)
        .await
        .unwrap();
    let new = format!("sim-x-{}", uuid_like());
    let remote = f.sim.add_key(&new);
    let pending = f
        .store
        .record_issued(
            &lease,
            NewKey {
                secret: SecretString::from(new.clone()),
                expires_at: None,
                provider_key_id: Some(remote),
                rotation_id: Some(id.into()),
            },
            START,
        )
        .await
        .unwrap();
    for (from, to) in [
        (RotationStep::Issued, RotationStep::Verified),
        (RotationStep::Verified, RotationStep::Delivered),
    ] {
        f.store
            .advance_rotation(&lease, from, to, "test", START)
            .await
            .unwrap();
    }
    let error = f
        .engine
        .revoke_version(&f.rt, &pending, "operator", "test")
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            RotationError::Store(StoreError::VersionInFlight { .. })
        ),
        "{error}"
    );
    assert!(f.sim.is_live(&new), "the provider was asked to revoke it");
    let error = f
        .store
        .mark_revoked(pending.id, "operator", "test", START)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StoreError::VersionInFlight { .. }),
        "{error}"
    );
    // The rotation finishes (taken over: its owner's lease expired) with that key.
    f.engine.resume(&f.rt).await.unwrap();
    assert!(f.store.rotations_in_flight().await.unwrap().is_empty());
    assert_eq!(f.current_secret().await, new);
}

#[tokio::test]
async fn rollback_is_not_undone_by_the_scheduler_straight_away() {
    // Under a max_age policy the restored key is overdue; a rollback counts as a failed
    // rotation and holds automatic rotation off for the grace period, so the operator's
    // rollback is not undone by the next scheduling pass.
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"",
        ..Setup::default()
    })
    .await;
    f.clock.set(START + 86_400);
    f.engine.tick(&f.rt).await.unwrap();
    assert_ne!(f.current_secret().await, f.old);
    f.clock.advance(60);
    f.engine.rollback(&f.rt, "operator").await.unwrap();
    assert_eq!(f.current_secret().await, f.old);
    f.clock.advance(1);
    f.engine.tick(&f.rt).await.unwrap();
    assert_eq!(f.current_secret().await, f.old, "the rollback was undone");
}

/// What `Store::rotation_outlooks` must answer, from the per-credential reads `tick` uses.
async fn outlook_by_hand(f: &Fixture) -> RotationOutlook {
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    let versions = f.store.versions(CRED).await.unwrap();
    let oldest = |stage: Stage| {
        versions
            .iter()
            .filter(|v| v.stage == stage && v.has_secret)
            .map(|v| v.stage_changed_at)
            .min()
    };
    RotationOutlook {
        credential: CRED.to_string(),
        next_rotation_at: credential.next_rotation_at,
        last_rotated_at: credential.last_rotated_at,
        consecutive_failures: credential.consecutive_failures,
        current: versions
            .iter()
            .find(|v| v.stage == Stage::Current)
            .map(|v| (v.created_at, v.expires_at)),
        imported_pending: versions
            .iter()
            .any(|v| v.stage == Stage::Pending && v.rotation_id.is_none() && v.has_secret),
        // Judged by the database's clock: only whether it is live or expired is compared.
        in_flight_lease_left: f
            .store
            .rotations_in_flight()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.credential == CRED)
            .map(|r| (r.lease_expires_at - unix_now()).max(0)),
        oldest_previous: oldest(Stage::Previous),
        oldest_discarded: oldest(Stage::Failed),
    }
}

async fn survey_of(f: &Fixture) -> RotationOutlook {
    let mut all = f.store.rotation_outlooks().await.unwrap();
    assert_eq!(all.len(), 1, "{all:#?}");
    let mut outlook = all.remove(0);
    outlook.in_flight_lease_left = outlook.in_flight_lease_left.map(|left| left.max(0));
    outlook
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn the_start_up_survey_agrees_with_what_a_pass_reads_through_a_key_s_life() {
    // The daemon schedules every credential from one query (`rotation_outlooks`) and only
    // then runs `tick` for the ones due: the two must see the same bookkeeping, or a due
    // rotation or revocation would be missed (or run early) after a restart.
    let f = fixture(Setup {
        rotation: "max_age = \"1d\"\nretry_backoff = \"10m\"",
        ..Setup::default()
    })
    .await;
    let day = 86_400;
    let can_issue = f.rt.issuer.is_some();
    let next =
        |o: &RotationOutlook, now| pass_queue::plan_pass(&f.rt.policy, can_issue, o, now).pass;

    let fresh = survey_of(&f).await;
    assert_eq!(fresh, outlook_by_hand(&f).await);
    assert_eq!(fresh.current.map(|(created, _)| created), Some(START));
    assert_eq!(next(&fresh, START), Some(START + day), "due by max_age");
    let (version, secret) = f.store.current_key(CRED).await.unwrap().unwrap();
    assert_eq!(version, f.current().await);
    assert_eq!(secret.expose_secret(), f.old);

    // A failed attempt: the retry time is the store's, not the policy's.
    f.clock.set(START + day);
    f.sim.fail_next(Op::Issue, Fault::ServerError, 1);
    f.engine.tick(&f.rt).await.unwrap();
    let failed = survey_of(&f).await;
    assert_eq!(failed, outlook_by_hand(&f).await);
    assert_eq!(failed.consecutive_failures, 1);
    let retry_at = failed.next_rotation_at.unwrap();
    assert!(retry_at > f.clock.now());
    assert_eq!(next(&failed, f.clock.now()), Some(retry_at));

    // Another process plans a rotation and dies: looked at once its lease has expired.
    f.clock.set(retry_at);
    f.store
        .plan_rotation(
            CRED,
            "20260101T000000-deadbeef",
            "cli:dead",
            &dead_owner(),
            retry_at,
        )
        .await
        .unwrap();
    let in_flight = survey_of(&f).await;
    assert_eq!(in_flight, outlook_by_hand(&f).await);
    assert_eq!(in_flight.in_flight_lease_left, Some(0));
    assert_eq!(next(&in_flight, retry_at), Some(retry_at + 1));

    // Taken over and completed: the previous key waits for its grace period.
    f.engine.tick(&f.rt).await.unwrap();
    let now = f.clock.now();
    let rotated = survey_of(&f).await;
    assert_eq!(rotated, outlook_by_hand(&f).await);
    assert_eq!(rotated.in_flight_lease_left, None);
    assert_eq!(rotated.consecutive_failures, 0);
    assert_eq!(rotated.oldest_previous, Some(now));
    assert_eq!(next(&rotated, now), Some(now + GRACE), "revocation first");
    let (version, secret) = f.store.current_key(CRED).await.unwrap().unwrap();
    assert_eq!(version, f.current().await);
    assert_eq!(secret.expose_secret(), f.current_secret().await);

    // The batch write records due times like one write each.
    f.store
        .set_next_rotations(&[(CRED.to_string(), Some(now + 42))])
        .await
        .unwrap();
    assert_eq!(survey_of(&f).await.next_rotation_at, Some(now + 42));
}

#[test]
fn checks_and_rotations_share_one_set_of_adapters_per_provider() {
    // Each adapter holds an HTTP client and its pool: the daemon builds them once per
    // provider and hands the same ones to every credential's checks and rotations.
    let text =
        "[[provider]]\nname = \"sim\"\nkind = \"simulated\"\nbase_url = \"http://127.0.0.1:9\"\n\n\
                [[credential]]\nname = \"a\"\nprovider = \"sim\"\n\n\
                [[credential]]\nname = \"b\"\nprovider = \"sim\"\n";
    let config = Config::parse(Path::new("share.toml"), text).unwrap();
    let adapters = keyrotd::providers::build_all(&config, &ProviderTelemetry::new()).unwrap();
    let targets = keyrotd::checks::targets_from(&config, &adapters);
    let runtimes = rotation::runtimes_from(&config, &adapters).unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(runtimes.len(), 2);
    let shared = &adapters["sim"].checker;
    for target in &targets {
        let runtime = &runtimes[&*target.credential];
        assert!(
            Arc::ptr_eq(&target.provider, shared),
            "{}",
            target.credential
        );
        assert!(
            Arc::ptr_eq(&runtime.provider, shared),
            "{}",
            target.credential
        );
        assert!(Arc::ptr_eq(&target.provider_name, &runtime.provider_name));
    }
    // One pacer per provider, shared by its credentials.
    assert!(Arc::ptr_eq(&targets[0].pacer, &targets[1].pacer));
}

#[tokio::test]
async fn an_owner_taken_over_while_paused_is_fenced_and_touches_nothing() {
    // Two processes on one store. A drives a rotation and stalls in a delivery hook past its
    // lease; B takes the rotation over and finishes it. When A wakes up, its next step is
    // fenced: it must not wind the rotation up (no restore of the old key to the targets,
    // no revocation of the new key), because the rotation is B's.
    let f = fixture(Setup {
        extra_targets: r#"[[credential.deliver]]
kind = "exec"
command = ["sh", "-c", "if [ ! -e {dir}/held ]; then touch {dir}/held; while [ ! -e {dir}/go ]; do sleep 0.05; done; fi"]
"#,
        ..Setup::default()
    })
    .await;
    let store = f.store.clone() as Arc<dyn Store>;
    // A's lease is over as soon as it is granted (it renews it only at each step), so B
    // may take over while A is stalled.
    let a = Arc::new(
        Engine::new(store.clone(), Arc::new(f.clock.clone()))
            .with_role("cli")
            .with_lease(std::time::Duration::ZERO),
    );
    let b = Engine::new(store, Arc::new(f.clock.clone())).with_role("daemon");
    let driving = {
        let (a, rt) = (a.clone(), f.rt.clone());
        tokio::spawn(async move { a.rotate(&rt, "cli").await })
    };
    let held = f.dir.path().join("held");
    let deadline = std::time::Instant::now() + HANG_BOUND;
    while !held.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "A never reached the hook"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // B takes over and finishes (its own run of the hook passes straight through).
    b.resume(&f.rt).await.unwrap();
    assert!(f.store.rotations_in_flight().await.unwrap().is_empty());
    let new = f.current_secret().await;
    assert_ne!(new, f.old);
    assert_eq!(f.delivered(), new);
    let events_before = f.event_kinds().await.len();

    // A wakes up.
    std::fs::write(f.dir.path().join("go"), "").unwrap();
    let outcome = tokio::time::timeout(HANG_BOUND, driving)
        .await
        .expect("A hung")
        .unwrap();
    let error = outcome.expect_err("A must not report success for B's rotation");
    assert!(matches!(error, RotationError::Fenced { .. }), "{error}");
    assert!(error.to_string().contains("taken over"), "{error}");
    // Nothing of A's winding-up happened.
    assert_eq!(f.current_secret().await, new);
    assert_eq!(f.delivered(), new, "A restored the old key to a target");
    assert!(f.sim.is_live(&new), "A revoked the new key");
    assert!(
        f.sim.is_live(&f.old),
        "the previous key stays for its grace"
    );
    let credential = f.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.consecutive_failures, 0);
    assert_eq!(
        f.event_kinds().await.len(),
        events_before,
        "A wrote to the audit trail after it was fenced"
    );
    f.assert_no_orphans().await;
}

/// A `key rotate` that died after the provider issued its key but before storing it leaves
/// that key under its rotation's name. When the rotation is taken over and adopts an
/// operator's imported key instead of issuing, the orphan is still swept: adoption gives
/// the imported key this rotation's id, after which the orphan's name would pass for it.
#[tokio::test]
async fn a_takeover_that_adopts_an_imported_key_still_sweeps_the_dead_owners_orphan() {
    let f = fixture(Setup::default()).await;
    let rotation = "20260101T000000-dead0001";
    f.store
        .plan_rotation(CRED, rotation, "cli:dead", &dead_owner(), START)
        .await
        .unwrap();
    let installation = f.store.installation_id().await.unwrap();
    let orphan = "sk-test-issued-by-the-dead-owner".to_string();
    f.sim.add_named_key(
        &orphan,
        &format!("keyrotd/{installation}/{CRED}/{rotation}"),
    );
    let imported = "sk-test-imported-by-the-operator".to_string();
    f.sim.add_key(&imported);
    f.store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(imported.clone()),
                expires_at: None,
                provider_key_id: None,
                rotation_id: None,
            },
            "test",
            START,
        )
        .await
        .unwrap();
    let done = f.engine.rotate(&f.rt, "test").await.unwrap();
    assert_eq!(
        done.rotation_id, rotation,
        "the dead owner's rotation is finished"
    );
    assert_eq!(f.current_secret().await, imported);
    assert!(
        !f.sim.is_live(&orphan),
        "the key the dead owner issued and never stored is left live at the provider"
    );
    assert!(
        f.sim.is_live(&f.old),
        "the previous key stays for its grace"
    );
}
