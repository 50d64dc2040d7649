//! `keyrotd demo`: the whole product on one machine with no network and no config, like
//! `vault server -dev`. Two simulated providers on loopback (one steady, one that fails now
//! and then), two credentials rotated every minute and checked every 10 s, keys delivered to
//! files, metrics live, and a relay route over `demo-app` with a client token of its own, so
//! the printed `curl` reaches the simulator through the relay with whatever key is current.
//! Everything lives in a throw-away directory unless `--dir` is given.

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::crypto::MasterKey;
use crate::daemon::{self, DaemonSettings};
use crate::simulator::{Op, Simulator};
use crate::store::{credential_specs, open_store, MasterKeyNeed, NewKey, StoreLocation};
use anyhow::Context;
use rand::RngCore;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The demo's credentials: (credential, provider, every how many key issues its provider
/// fails; 0 = never). The flaky one fails its 4th, 8th, ... issue and its 20th, 40th, ...
/// check: the first key always arrives, and later failures show the retries.
const CREDENTIALS: [(&str, &str, u64); 2] = [
    ("demo-app", "demo-steady", 0),
    ("demo-batch", "demo-flaky", 4),
];

/// The relay route's prefix: `demo-app`'s simulator under it, OpenAI-style.
const RELAY_PREFIX: &str = "/demo-app/v1";

/// How often the demo rotates by default: every minute.
pub(crate) const DEFAULT_SCHEDULE: &str = "* * * * *";

pub(crate) struct DemoOptions {
    /// Keep state here (created if absent) instead of a temporary directory.
    pub dir: Option<PathBuf>,
    pub listen_address: SocketAddr,
    /// Cron expression of the demo credentials' rotations (`--schedule`).
    pub schedule: String,
}

/// Runs the demo until SIGINT/SIGTERM.
pub(crate) async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let temporary = match &options.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("keyrotd-demo-").tempdir()?),
    };
    let dir = match (&options.dir, &temporary) {
        (Some(dir), _) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            // Absolute, so the config's paths and the printed commands hold from any
            // working directory ("in another terminal").
            std::path::absolute(dir).with_context(|| format!("cannot resolve {}", dir.display()))?
        }
        (None, Some(temp)) => temp.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory exists when no --dir is given"),
    };

    let mut simulators = Vec::new();
    for (_, provider, fail_every) in CREDENTIALS {
        let (simulator, _) = Simulator::start("127.0.0.1:0".parse()?).await?;
        // Keys live three hours, so the expiry gauges have something to show.
        simulator.expire_after(Some(Duration::from_secs(3 * 3600)));
        simulator.fail_every(Op::Issue, fail_every);
        simulator.fail_every(Op::Check, fail_every * 5);
        write_private(
            &dir.join(format!("{provider}.management-key")),
            &simulator.management_key(),
        )?;
        simulators.push(simulator);
    }

    let master_key = dir.join("master.key");
    if !master_key.exists() {
        MasterKey::generate().write_new(&master_key)?;
    }
    let relay = DemoRelay::prepare(&dir)?;
    let listen = printable_listen_address(options.listen_address)?;
    let config_path = dir.join("keyrotd.toml");
    std::fs::write(
        &config_path,
        demo_config(&dir, &simulators, listen, &options.schedule, &relay),
    )?;
    let config = Config::load(&config_path)?;
    let database = dir.join("keyrotd.db");
    seed_keys(&config, &database, &master_key, &simulators).await?;

    print_banner(
        &dir,
        listen,
        temporary.is_some(),
        &options.schedule,
        relay.address,
    );
    let result = daemon::run(DaemonSettings {
        config_path,
        config,
        location: StoreLocation::Sqlite(database),
        master_key: Some(master_key),
        web_config: None,
    })
    .await;
    for simulator in &simulators {
        simulator.shutdown().await;
    }
    drop(temporary);
    result
}

/// The metrics address to configure and print: `--listen-address` with port 0 becomes a
/// free port now, so the banner's `curl …/metrics` lines name a port that answers. The
/// port is free now and nothing else on loopback is racing the demo for it (as for the
/// relay's).
fn printable_listen_address(requested: SocketAddr) -> anyhow::Result<SocketAddr> {
    if requested.port() != 0 {
        return Ok(requested);
    }
    std::net::TcpListener::bind(requested)
        .and_then(|listener| listener.local_addr())
        .with_context(|| format!("cannot find a free port on {}", requested.ip()))
}

/// The demo's relay: where it listens and the hash of the client token it made.
struct DemoRelay {
    address: SocketAddr,
    token_sha256: String,
}

impl DemoRelay {
    /// A free loopback port for the relay, and a new client token. The token goes to a
    /// 0600 file as a header line, so the printed `curl -H @FILE` puts it in no argv.
    fn prepare(dir: &Path) -> anyhow::Result<DemoRelay> {
        use secrecy::ExposeSecret;
        // The daemon binds the relay's address itself; the port is free now and nothing
        // else on loopback is racing the demo for it.
        let address = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free port for the demo's relay")?;
        let (token, token_sha256) = crate::relay::new_token();
        write_private(
            &dir.join("relay.header"),
            &format!("Authorization: Bearer {}\n", token.expose_secret()),
        )?;
        Ok(DemoRelay {
            address,
            token_sha256,
        })
    }
}

fn demo_config(
    dir: &Path,
    simulators: &[Simulator],
    listen: SocketAddr,
    schedule: &str,
    relay: &DemoRelay,
) -> String {
    let mut text = format!(
        "# Written by `keyrotd demo`.\n[daemon]\nlisten_address = \"{listen}\"\ndatabase = \"{}\"\n\n[checks]\ninterval = \"10s\"\njitter = 0.1\n",
        dir.join("keyrotd.db").display()
    );
    for ((credential, provider, _), simulator) in CREDENTIALS.iter().zip(simulators) {
        text.push_str(&format!(
            r#"
[[provider]]
name = "{provider}"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = "{key}" }}
timeout = "2s"

[[credential]]
name = "{credential}"
provider = "{provider}"
rotation = {{ schedule = "{schedule}", grace = "2m", retry_backoff = "10s", retry_backoff_max = "1m" }}
deliver = [{{ kind = "file", path = "{target}" }}]
"#,
            base = simulator.base_url(),
            // A bad --schedule is caught by Config::load below, with file, line and column.
            schedule = schedule.replace(['"', '\\'], ""),
            key = dir.join(format!("{provider}.management-key")).display(),
            target = dir.join(format!("{credential}.key")).display(),
        ));
    }
    text.push_str(&format!(
        r#"
[relay]
listen = "{address}"

[[relay.client]]
name = "demo"
token_sha256 = "{hash}"

[[relay.route]]
prefix = "{RELAY_PREFIX}"
upstream = "{upstream}/v1"
credentials = ["{credential}"]
clients = ["demo"]
"#,
        address = relay.address,
        hash = relay.token_sha256,
        upstream = simulators[0].base_url(),
        credential = CREDENTIALS[0].0,
    ));
    text
}

/// Gives each credential a first key (issued by its simulator) unless it has one.
async fn seed_keys(
    config: &Config,
    database: &Path,
    master_key: &Path,
    simulators: &[Simulator],
) -> anyhow::Result<()> {
    let store = open_store(
        &StoreLocation::Sqlite(database.to_path_buf()),
        Some(master_key),
        MasterKeyNeed::Always,
    )
    .await?;
    let now = SystemClock.now();
    store
        .sync_credentials(&credential_specs(config), now)
        .await?;
    for ((credential, _, _), simulator) in CREDENTIALS.iter().zip(simulators) {
        let has_current = store
            .versions(credential)
            .await?
            .iter()
            .any(|v| v.stage == crate::model::Stage::Current);
        // A restarted demo with --dir has new simulators: their old keys are gone, so
        // every demo start seeds a fresh key (the old one becomes history via rotation).
        if has_current {
            continue;
        }
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let secret = format!("sim-{}", hex::encode(bytes));
        simulator.add_key(&secret);
        store
            .import_key(
                credential,
                NewKey {
                    secret: SecretString::from(secret),
                    expires_at: Some(now + 3 * 3600),
                    provider_key_id: None,
                    rotation_id: None,
                },
                "demo",
                now,
            )
            .await?;
    }
    store.close().await;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn print_banner(
    dir: &Path,
    listen: SocketAddr,
    temporary: bool,
    schedule: &str,
    relay: SocketAddr,
) {
    let keyrotd = command_name();
    let file = |name: &str| shell_quote(&dir.join(name).to_string_lossy());
    println!(
        r#"keyrotd demo: two simulated providers on loopback, no network needed.

  credentials   demo-app   (steady provider)   rotated on "{schedule}" (cron), checked every 10 s
                demo-batch (flaky provider)    its provider fails now and then: watch the retries
  state         {dir}{temp}

Try, in another terminal:
  curl -s http://{listen}/metrics | grep '^keyrotd_key'
  curl -s http://{listen}/metrics | grep -E 'rotations_total|consecutive_failures'
  {keyrotd} --config {config} key list
  {keyrotd} --config {config} --master-key {master_key} key history demo-batch
  cat {delivered} | wc -c     # the delivered key file (0600), replaced atomically
  curl -s -H @{header} http://{relay}{RELAY_PREFIX}/models   # through the relay: demo-app's current key

Press Ctrl-C to stop.
"#,
        dir = dir.display(),
        temp = if temporary {
            " (removed on exit; keep it with --dir)"
        } else {
            ""
        },
        config = file("keyrotd.toml"),
        master_key = file("master.key"),
        delivered = file("demo-app.key"),
        header = file("relay.header"),
    );
}

/// How the printed commands call keyrotd: by its bare name when that finds this very
/// binary on PATH, else by the running executable's path — after `cargo run -- demo`,
/// `keyrotd` is not installed, or is an older one.
fn command_name() -> String {
    match std::env::current_exe() {
        Ok(exe) if !bare_name_finds(&exe) => shell_quote(&exe.to_string_lossy()),
        _ => "keyrotd".into(),
    }
}

/// Whether a shell would run `exe` for `keyrotd`: the first executable file of that name
/// on PATH is `exe`, links and relative directories resolved.
fn bare_name_finds(exe: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join("keyrotd"))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        });
    match (found.map(std::fs::canonicalize), exe.canonicalize()) {
        (Some(Ok(found)), Ok(exe)) => found == exe,
        _ => false,
    }
}

/// `text` as one shell word: unchanged when no character is special to a POSIX shell,
/// else in single quotes.
fn shell_quote(text: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@%+,".contains(c);
    if !text.is_empty() && text.chars().all(plain) {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(
            shell_quote("/tmp/keyrotd-demo-x1/keyrotd.toml"),
            "/tmp/keyrotd-demo-x1/keyrotd.toml"
        );
        assert_eq!(shell_quote("/tmp/demo state/x"), "'/tmp/demo state/x'");
        assert_eq!(shell_quote("/tmp/it's"), r"'/tmp/it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote(""), "''");
    }
}
