//! The command adapter: the key reaches the command through stdin or an environment
//! variable (never argv), the JSON it prints is the answer, and failures are classified.

#[macro_use]
mod providers_support;

use keyrotd::model::CheckStatus;
use keyrotd::providers::{build, CheckReport, Credit, ProviderTelemetry};
use providers_support::{canary, provider_config, CANARY};
use std::time::Duration;

async fn check_with(script: &str, extra: &str) -> CheckReport {
    let toml = format!(
        "kind = \"exec\"\n[provider.exec]\ncommand = [\"sh\", \"-c\", {}]\n{extra}",
        serde_json::to_string(script).unwrap()
    );
    let provider = build(&provider_config(&toml), &ProviderTelemetry::new()).unwrap();
    let report = provider.check(&canary()).await;
    assert!(
        !report.detail.contains(CANARY),
        "key in detail: {}",
        report.detail
    );
    report
}

#[tokio::test]
async fn key_on_stdin_and_full_answer() {
    let script = r#"read key; [ "$KEYROTD_OPERATION" = check ] || exit 3
if [ "$key" = "kr-canary-7f3a" ]; then
  echo '{"status":"valid","credit":[{"unit":"USD","remaining":3.5}],"expires_at":123}'
else echo '{"status":"invalid"}'; fi"#;
    let report = check_with(script, "").await;
    assert_eq!(report.status, CheckStatus::Valid, "{report:?}");
    assert_eq!(
        report.credit,
        vec![Credit {
            unit: "usd".into(),
            remaining: 3.5
        }]
    );
    assert_eq!(report.expires_at, Some(123));
}

#[tokio::test]
async fn key_in_env_var_and_not_in_argv() {
    let script = r#"case "$0 $*" in *kr-canary*) echo '{"status":"invalid","detail":"argv"}'; exit 0;; esac
if [ "$MY_KEY" = "kr-canary-7f3a" ]; then echo '{"status":"valid"}'; else echo '{"status":"invalid"}'; fi"#;
    let report = check_with(script, "key_via = \"env\"\nkey_env = \"MY_KEY\"").await;
    assert_eq!(report.status, CheckStatus::Valid, "{report:?}");
}

#[tokio::test]
async fn every_status_is_understood() {
    for status in ["invalid", "exhausted", "rate_limited", "unreachable"] {
        let report = check_with(
            &format!("echo '{{\"status\":\"{status}\",\"retry_after\":9}}'"),
            "",
        )
        .await;
        assert_eq!(report.status.as_str(), status);
        assert_eq!(report.retry_after, Some(Duration::from_secs(9)));
    }
}

#[tokio::test]
async fn nonzero_exit_with_an_answer_counts() {
    let report = check_with(
        r#"echo '{"status":"invalid","detail":"revoked"}'; exit 1"#,
        "",
    )
    .await;
    assert_eq!(report.status, CheckStatus::Invalid);
    assert_eq!(report.detail, "revoked");
}

#[tokio::test]
async fn nonzero_exit_without_an_answer_is_unreachable() {
    let report = check_with("echo kr-canary-7f3a >&2; exit 4", "").await;
    assert_eq!(report.status, CheckStatus::Unreachable);
    assert!(report.detail.contains("status 4"), "{}", report.detail);
}

#[tokio::test]
async fn garbage_or_unknown_status_is_unreachable() {
    for script in [
        "echo not json",
        r#"echo '{"status":"great"}'"#,
        r#"echo '{"status":"valid","credit":"lots"}'"#,
        "true",
    ] {
        let report = check_with(script, "").await;
        assert_eq!(report.status, CheckStatus::Unreachable, "{script}");
    }
}

#[tokio::test]
async fn a_detail_echoing_the_key_is_masked() {
    let report = check_with(
        r#"read k; printf '{"status":"invalid","detail":"bad key %s"}' "$k""#,
        "",
    )
    .await;
    assert_eq!(report.status, CheckStatus::Invalid);
    assert!(report.detail.contains("[REDACTED]"), "{}", report.detail);
}

#[tokio::test]
async fn a_hanging_command_is_killed_at_the_timeout() {
    // A command left running would hold the check for its ten minutes; the bound only
    // catches that hang.
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        check_with("exec sleep 600", "timeout = \"300ms\""),
    )
    .await
    .expect("the timeout did not end the check");
    assert_eq!(report.status, CheckStatus::Unreachable);
    assert!(report.detail.contains("timed out"), "{}", report.detail);
}

/// Bounds a hang only: a run that ends at all ends within moments of its timeout, and a
/// process that is killed is gone within moments of the kill.
const HANG_BOUND: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_timed_out_command_leaves_no_process_behind() {
    // The script starts a background child, records its pid (whole, through a rename), then
    // sleeps far past its timeout. That the child started before the kill is the premise,
    // and how soon a busy machine runs the script is not the adapter's promise: a kill before
    // the record is a do-over with a longer timeout, never a pass.
    for timeout in ["500ms", "2s", "8s", "30s"] {
        let dir = tempfile::tempdir().unwrap();
        let (recording, pid_file) = (dir.path().join("bg.tmp"), dir.path().join("bg.pid"));
        let script = format!(
            "sleep 600 & echo $! > {recording}; mv {recording} {pid_file}; sleep 600",
            recording = recording.display(),
            pid_file = pid_file.display()
        );
        let report = tokio::time::timeout(
            HANG_BOUND,
            check_with(&script, &format!("timeout = \"{timeout}\"")),
        )
        .await
        .expect("the timeout did not end the check");
        assert_eq!(report.status, CheckStatus::Unreachable, "{report:?}");
        assert!(
            report
                .detail
                .contains(&format!("timed out after {timeout}")),
            "{}",
            report.detail
        );
        let Ok(pid) = std::fs::read_to_string(&pid_file) else {
            eprintln!(
                "the command was killed within {timeout} before it recorded its child: again"
            );
            continue;
        };
        // The background child was in the command's process group and is gone too.
        let pid = nix::unistd::Pid::from_raw(pid.trim().parse().unwrap());
        let deadline = std::time::Instant::now() + HANG_BOUND;
        loop {
            // Reaped by init or a zombie: either way, /proc/<pid>/stat shows it is not
            // sleeping.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            if std::time::Instant::now() >= deadline {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                panic!(
                    "background child still alive {HANG_BOUND:?} after the command timed out: {stat}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("the command never got as far as recording its child, even with 30s");
}

#[tokio::test]
async fn oversized_output_is_refused() {
    let report = check_with("head -c 2000000 /dev/zero", "").await;
    assert_eq!(report.status, CheckStatus::Unreachable);
    assert!(report.detail.contains("more than"), "{}", report.detail);
}

#[tokio::test]
async fn a_missing_program_is_unreachable() {
    let toml = "kind = \"exec\"\n[provider.exec]\ncommand = [\"/nonexistent/checker\"]";
    let provider = build(&provider_config(toml), &ProviderTelemetry::new()).unwrap();
    let report = provider.check(&canary()).await;
    assert_eq!(report.status, CheckStatus::Unreachable);
}

#[tokio::test]
async fn telemetry_records_the_exit_code() {
    let telemetry = ProviderTelemetry::new();
    let toml = "kind = \"exec\"\n[provider.exec]\ncommand = [\"sh\", \"-c\", \"exit 2\"]";
    let provider = build(&provider_config(toml), &telemetry).unwrap();
    provider.check(&canary()).await;
    assert_eq!(telemetry.requests("p", "check", "2"), 1);
}
