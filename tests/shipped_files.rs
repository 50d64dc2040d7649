//! The shipped operational files are tested with the real tools: the alert rules with
//! promtool (unit tests for every rule) and amtool, the systemd unit with
//! `systemd-analyze verify` and its exposure score; and alerting end to end (keyrotd,
//! Prometheus, Alertmanager and a webhook on loopback: `tests/alerting_e2e.sh`).
//!
//! These tools come from Debian packages (`prometheus`, `prometheus-alertmanager`,
//! `systemd`; the end-to-end test also needs `python3` and `curl`). On a machine without
//! them the tests say so and pass; CI sets `KEYROTD_REQUIRE_TOOLS=1` (and installs the
//! packages) so there they cannot be skipped.

mod common;

use common::tool_available;
use std::path::Path;
use std::process::Command;

fn run_script(script: &str, args: &[&str], envs: &[(&str, &str)]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(root.join(script))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    println!("{stdout}");
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests_and_routes() {
    if !tool_available("promtool") {
        return;
    }
    let require_amtool = if std::env::var_os("KEYROTD_REQUIRE_TOOLS").is_some() {
        "1"
    } else {
        "0"
    };
    run_script(
        "tests/alert_rules.sh",
        &[],
        &[("REQUIRE_AMTOOL", require_amtool)],
    );
}

#[test]
fn systemd_unit_verifies_and_scores_at_most_two() {
    if !tool_available("systemd-analyze") {
        return;
    }
    run_script(
        "tests/systemd_unit.sh",
        &[env!("CARGO_BIN_EXE_keyrotd")],
        &[],
    );
}

#[test]
fn alerts_reach_alertmanager_end_to_end() {
    // keyrotd -> Prometheus (the shipped rules) -> Alertmanager -> webhook, on loopback;
    // the script bounds its own run time and kills everything it started.
    let tools = [
        "prometheus",
        "promtool",
        "prometheus-alertmanager",
        "python3",
        "curl",
    ];
    // Look at every tool (each missing one is reported, or fails under KEYROTD_REQUIRE_TOOLS).
    let missing = tools.iter().filter(|tool| !tool_available(tool)).count();
    if missing > 0 {
        return;
    }
    run_script(
        "tests/alerting_e2e.sh",
        &[env!("CARGO_BIN_EXE_keyrotd")],
        &[],
    );
}
