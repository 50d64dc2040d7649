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

/// The directives of a unit file's `[Service]`-style lines (`Key=value`), comments skipped;
/// a key given several times keeps every value.
fn directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The example config works under the shipped unit as the README installs it: every
/// directory a `file` / `env_file` target writes to is in a `ReadWritePaths=` of the unit or
/// of the README's drop-in (else EROFS), and no target asks for an owner or group while the
/// unit cannot chown (else EPERM on every delivery).
#[test]
fn example_config_targets_pass_under_the_shipped_unit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    let unit = directives(&read("systemd/keyrotd.service"));
    let readme = read("README.md");
    // The drop-ins the README's install section tells the operator to add.
    let install = readme
        .split("## Install")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has an Install section");
    let drop_in = directives(
        &install
            .split("```ini")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let values = |key: &str| -> Vec<String> {
        unit.iter()
            .chain(&drop_in)
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let writable: Vec<std::path::PathBuf> = values("ReadWritePaths")
        .iter()
        .flat_map(|v| {
            v.split_whitespace()
                .map(|p| p.trim_start_matches(['-', '+']))
        })
        .map(std::path::PathBuf::from)
        .collect();
    let capabilities = values("CapabilityBoundingSet").join(" ");
    let filters = values("SystemCallFilter");
    let can_chown = capabilities.contains("CAP_CHOWN")
        && !filters
            .iter()
            .any(|f| f.starts_with('~') && (f.contains("@chown") || f.contains("@privileged")))
        && !values("PrivateUsers")
            .iter()
            .any(|v| v == "yes" || v == "true");

    let example: toml::Table = toml::from_str(&read("config.example.toml")).unwrap();
    let mut problems = Vec::new();
    let credentials = example
        .get("credential")
        .and_then(|c| c.as_array())
        .expect("the example has credentials");
    for credential in credentials {
        let name = credential["name"].as_str().unwrap_or("?");
        let targets = credential.get("deliver").and_then(|d| d.as_array());
        for target in targets.into_iter().flatten() {
            let kind = target["kind"].as_str().unwrap_or("?");
            if !matches!(kind, "file" | "env_file") {
                continue;
            }
            let path = std::path::Path::new(target["path"].as_str().unwrap());
            let dir = path.parent().unwrap();
            if !writable.iter().any(|w| dir.starts_with(w)) {
                problems.push(format!(
                    "credential {name}: {kind} {}: {} is not in any ReadWritePaths= of the unit or the README's drop-in (EROFS)",
                    path.display(),
                    dir.display()
                ));
            }
            for field in ["owner", "group"] {
                if target.get(field).is_some() && !can_chown {
                    problems.push(format!(
                        "credential {name}: {kind} {}: sets `{field}`, but the shipped unit cannot chown (EPERM)",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
