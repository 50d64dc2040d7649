//! The shipped operational files are tested with the real tools: the alert rules with
//! promtool (unit tests for every rule) and amtool, the systemd unit with
//! `systemd-analyze verify` and its exposure score; and alerting end to end (keyrotd,
//! Prometheus, Alertmanager and a webhook on loopback: `tests/alerting_e2e.sh`).
//!
//! These tools come from Debian packages (`prometheus`, `prometheus-alertmanager`,
//! `systemd`; the end-to-end test also needs `python3` and `curl`). A missing tool, or a
//! check a script reports it skipped, prints a `SKIPPED` line and the test passes; CI sets
//! `KEYROTD_REQUIRE_TOOLS=1` (and installs the packages), and there each skip is a failure.

mod common;

use common::{run_script, tool_available};

#[test]
fn alert_rules_pass_their_promtool_unit_tests_and_routes() {
    if !tool_available("promtool") {
        return;
    }
    // amtool is optional to the script: without it, it reports a skip (a failure under
    // KEYROTD_REQUIRE_TOOLS).
    run_script("tests/alert_rules.sh", &[], &[]);
}

#[test]
fn systemd_unit_verifies_and_scores_as_the_readme_says() {
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
