//! The shipped Grafana dashboard (`dashboards/keyrotd.json`) only queries metrics keyrotd
//! exports: every `keyrotd_*` name in every panel's `expr` must be documented in
//! `docs/metrics.md` AND appear as a string literal in `src/`. Both checks, so a typo in
//! the dashboard, the docs or the code fails here. And since every replica of a
//! PostgreSQL installation serves the per-key series of the shared store, a panel over
//! them must aggregate by credential, or it shows each credential once per replica.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Metrics the dashboard must show (the operator's questions it answers).
const REQUIRED_ON_DASHBOARD: &[&str] = &[
    "keyrotd_key_expires_in_seconds",
    "keyrotd_key_age_seconds",
    "keyrotd_key_valid",
    "keyrotd_key_check_status",
    "keyrotd_key_last_check_timestamp_seconds",
    "keyrotd_rotations_total",
    "keyrotd_rotation_consecutive_failures",
    "keyrotd_key_next_rotation_timestamp_seconds",
    "keyrotd_key_last_rotation_timestamp_seconds",
    "keyrotd_key_credit_remaining",
    "keyrotd_provider_requests_total",
    "keyrotd_provider_request_duration_seconds",
    "keyrotd_scheduler_heartbeat_timestamp_seconds",
    "keyrotd_leader",
    "keyrotd_leader_epoch",
    "keyrotd_store_up",
    "keyrotd_instance_info",
    "keyrotd_relay_requests_total",
    "keyrotd_relay_request_duration_seconds",
    "keyrotd_relay_retries_total",
    "keyrotd_relay_key_cooldown_seconds",
    "keyrotd_relay_route_keys",
    "keyrotd_relay_in_flight",
    "keyrotd_relay_tokens_total",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard() -> Value {
    let path = root().join("dashboards/keyrotd.json");
    let text = std::fs::read_to_string(&path).expect("dashboards/keyrotd.json exists");
    serde_json::from_str(&text).expect("dashboards/keyrotd.json is valid JSON")
}

/// Every panel, including those nested in (collapsed) rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, expr) of every query.
fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}

/// `keyrotd_[a-z_]+` tokens of a PromQL expression.
fn metric_tokens(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("keyrotd_") {
        let start = i + pos;
        // not the tail of a longer identifier (e.g. `my_keyrotd_x`)
        let inside_word =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "keyrotd_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if !inside_word && end > start + "keyrotd_".len() {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// A histogram's `_bucket` / `_sum` / `_count` series map to the histogram's name when
/// that name is one of `known`; anything else is returned unchanged.
fn base_name(token: &str, known: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = token.strip_suffix(suffix) {
            if known.contains(base) {
                return base.to_string();
            }
        }
    }
    token.to_string()
}

/// Metric names in the first column of the tables of docs/metrics.md
/// (`| \`keyrotd_name{labels}\` | ...`).
fn documented_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            name.starts_with("keyrotd_").then_some(name)
        })
        .collect();
    assert!(
        names.len() >= 10,
        "found only {names:?} in docs/metrics.md; did the table format change?"
    );
    names
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// All of `src/` as one string.
fn source_text() -> String {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("readable source"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn metric_tokens_and_histogram_suffixes() {
    let known: BTreeSet<String> = ["keyrotd_provider_request_duration_seconds".to_string()].into();
    let tokens = metric_tokens(
        "histogram_quantile(0.9, sum by (le) (rate(keyrotd_provider_request_duration_seconds_bucket{x=\"keyrotd_no\"}[5m]))) / my_keyrotd_other + keyrotd_key_valid",
    );
    assert_eq!(
        tokens,
        [
            "keyrotd_provider_request_duration_seconds_bucket",
            "keyrotd_no",
            "keyrotd_key_valid"
        ]
    );
    assert_eq!(
        base_name("keyrotd_provider_request_duration_seconds_bucket", &known),
        "keyrotd_provider_request_duration_seconds"
    );
    assert_eq!(
        base_name("keyrotd_provider_request_duration_seconds_count", &known),
        "keyrotd_provider_request_duration_seconds"
    );
    // not a histogram: the suffix stays, so the name is checked as written
    assert_eq!(
        base_name("keyrotd_thing_count", &known),
        "keyrotd_thing_count"
    );
}

#[test]
fn dashboard_queries_only_metrics_keyrotd_exports() {
    let dashboard = dashboard();
    let documented = documented_metrics();
    let source = source_text();
    let queries = exprs(&dashboard);
    assert!(!queries.is_empty(), "the dashboard has no queries");

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (title, expr) in &queries {
        for token in metric_tokens(expr) {
            let name = base_name(&token, &documented);
            if !documented.contains(&name) {
                problems.push(format!(
                    "panel {title:?}: {token} is not documented in docs/metrics.md"
                ));
            }
            let literal = format!("\"{name}\"");
            if !source.contains(&literal) {
                problems.push(format!(
                    "panel {title:?}: {token} is not exported by the code (no {literal} in src/)"
                ));
            }
            used.insert(name);
        }
    }
    for name in REQUIRED_ON_DASHBOARD {
        if !used.contains(*name) {
            problems.push(format!("no panel shows {name}"));
        }
    }
    assert!(
        problems.is_empty(),
        "dashboards/keyrotd.json:\n{}",
        problems.join("\n")
    );
}

#[test]
fn dashboard_is_well_formed() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));

    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let credential = variable("credential");
    assert_eq!(credential["type"], "query");
    let query = credential["query"]["query"]
        .as_str()
        .or(credential["query"].as_str())
        .expect("credential query");
    assert_eq!(query, "label_values(keyrotd_key_age_seconds, credential)");

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "duplicate panel id {id}");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "panel {title:?}: gridPos.{key}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "panel {title:?} is wider than the dashboard"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {title:?} must use the $datasource variable"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?}: empty expr"
            );
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "panel {title:?}: duplicate refId"
            );
        }
    }
}

/// The metric names of the tables under the `## ` headings of docs/metrics.md that start
/// with one of `headings`.
fn documented_in_sections(headings: &[&str]) -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut inside = false;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            inside = headings.iter().any(|h| heading.starts_with(h));
        } else if let Some(rest) = line.strip_prefix("| `").filter(|_| inside) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name.starts_with("keyrotd_") {
                names.insert(name);
            }
        }
    }
    names
}

/// Every `<aggregator> by (<labels>)` of a PromQL expression: the aggregator, the labels,
/// and the byte offset just past the closing parenthesis of the label list.
fn aggregations(expr: &str) -> Vec<(String, Vec<String>, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(pos) = expr[from..].find(" by (") {
        let by = from + pos;
        let open = by + " by (".len();
        let Some(len) = expr[open..].find(')') else {
            break;
        };
        let labels = expr[open..open + len]
            .split(',')
            .map(|l| l.trim().to_string())
            .collect();
        let aggregator: String = expr[..by]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphabetic())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        out.push((aggregator, labels, open + len + 1));
        from = open + len + 1;
    }
    out
}

#[test]
fn aggregations_are_found_with_their_labels() {
    let expr = "time() - max by (credential, provider) (x) + sum by (le) (rate(y[5m]))";
    let found = aggregations(expr);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].0, "max");
    assert_eq!(found[0].1, ["credential", "provider"]);
    assert_eq!(&expr[found[0].2..], " (x) + sum by (le) (rate(y[5m]))");
    assert_eq!(found[1].0, "sum");
    assert_eq!(found[1].1, ["le"]);
}

/// Every replica serves the per-key series of the one store, so a panel over them shows
/// a credential once only if it aggregates `by (credential, …)` without `instance` (or
/// reduces everything to one number with `min(…)`/`max(…)`), and never `sum`s them: a
/// sum of a store total over three replicas counts each rotation three times.
#[test]
fn per_key_panels_show_each_credential_once() {
    let store_backed = documented_in_sections(&["Per key", "Rotations", "Revocations"]);
    assert!(
        store_backed.contains("keyrotd_key_valid")
            && store_backed.contains("keyrotd_rotations_total"),
        "found only {store_backed:?} under the per-key headings of docs/metrics.md"
    );
    let starts_with_store_series = |text: &str| {
        let mut text = text.trim_start();
        for function in ["increase(", "rate(", "irate(", "delta("] {
            if let Some(rest) = text.strip_prefix(function) {
                text = rest.trim_start();
            }
        }
        metric_tokens(text)
            .first()
            .is_some_and(|t| text.starts_with(t.as_str()) && store_backed.contains(t))
    };

    let mut problems = Vec::new();
    for (title, expr) in exprs(&dashboard()) {
        if !metric_tokens(&expr)
            .iter()
            .any(|t| store_backed.contains(t))
        {
            continue;
        }
        let found = aggregations(&expr);
        let whole = expr.contains("min(") || expr.contains("max(");
        let by_credential = found.iter().any(|(_, labels, _)| {
            labels.iter().any(|l| l == "credential") && !labels.iter().any(|l| l == "instance")
        });
        if !whole && !by_credential {
            problems.push(format!(
                "panel {title:?} shows each credential once per replica: aggregate by (credential, …): {expr}"
            ));
        }
        for (aggregator, _, end) in &found {
            let after = expr[*end..].trim_start();
            if aggregator == "sum"
                && after
                    .strip_prefix('(')
                    .is_some_and(starts_with_store_series)
            {
                problems.push(format!(
                    "panel {title:?} sums a store series over replicas (use max): {expr}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "dashboards/keyrotd.json:\n{}",
        problems.join("\n")
    );
}
