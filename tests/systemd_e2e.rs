//! The Debian package, installed into a booted Debian 12 under systemd-nspawn and driven
//! with systemctl as an operator would: `tests/systemd_e2e.sh` has the steps, each one an
//! assertion. This test hosts the simulated provider the packaged daemon rotates keys at,
//! on the host's loopback, which the container shares.
//!
//! It needs root and `debootstrap`, `systemd-nspawn` (package `systemd-container`),
//! `nsenter`, `flock` (`util-linux`), `curl` and `cargo-deb`; without them it prints a
//! `SKIPPED` line, a failure under `KEYROTD_REQUIRE_TOOLS`. The first run on a machine
//! debootstraps Debian from its mirror (about a minute) into a cache outside the repository;
//! later runs take about a minute once the package is built, half of it the watchdog's 30 s.

mod common;

use common::{is_root, run_script, skip_or_fail, tool_available};
use keyrotd::simulator::{Op, Simulator};

#[tokio::test(flavor = "multi_thread")]
async fn debian_package_works_under_a_booted_systemd() {
    if !is_root() {
        skip_or_fail("needs root to debootstrap and boot a container");
        return;
    }
    let tools = [
        "debootstrap",
        "systemd-nspawn",
        "nsenter",
        "flock",
        "curl",
        "cargo-deb",
    ];
    // Look at every tool (each missing one is reported, or fails under KEYROTD_REQUIRE_TOOLS).
    let missing = tools.iter().filter(|tool| !tool_available(tool)).count();
    if missing > 0 {
        return;
    }
    let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let management_key = dir.path().join("sim.mgmt");
    std::fs::write(&management_key, sim.management_key()).unwrap();
    // The key the operator imports first; the daemon's rotations replace it.
    let first_key = dir.path().join("first.key");
    let secret = format!("sk-sim-e2e-{:032x}", rand::random::<u128>());
    sim.add_key(&secret);
    std::fs::write(&first_key, format!("{secret}\n")).unwrap();
    // A port for the daemon's /metrics, free a moment ago on the loopback the container
    // shares.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let envs = [
        ("KEYROTD_E2E_SIM_URL", sim.base_url()),
        (
            "KEYROTD_E2E_SIM_KEY_FILE",
            management_key.display().to_string(),
        ),
        (
            "KEYROTD_E2E_FIRST_KEY_FILE",
            first_key.display().to_string(),
        ),
        ("KEYROTD_E2E_PORT", port.to_string()),
    ];
    // The simulator answers on the runtime's other threads while this one waits.
    let script = tokio::task::spawn_blocking(move || {
        let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_script("tests/systemd_e2e.sh", &[], &envs)
    });
    // The script's failure as it is, not shortened by the join error.
    if let Err(error) = script.await {
        std::panic::resume_unwind(error.into_panic());
    }
    // The keys the packaged daemon delivered came from this simulator.
    assert!(
        sim.request_count(Op::Issue) >= 2,
        "the daemon in the container issued {} keys at the simulator",
        sim.request_count(Op::Issue)
    );
}
