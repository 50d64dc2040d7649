//! Restore before discard with the real binary: a rotation whose delivery fails on a target
//! that took the new key, and whose restore fails on that target, waits in `attention`
//! with both keys live at the provider and the consumer holding a live key; `/metrics`
//! says so, and once the target is fixed the daemon restores and winds it up.
//!
//! Run with a multi-threaded runtime: the simulator keeps answering while the test body
//! blocks on child processes.

mod common;

use common::*;
use keyrotd::simulator::Simulator;
use std::path::Path;

const CRED: &str = "app";
const GAUGE: &str = "keyrotd_rotation_needs_attention";

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_failing_on_one_target_needs_attention_until_the_target_is_fixed() {
    let (sim, _) = Simulator::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let env = Env::with_credentials(&[]);
    let dir = env.path().to_path_buf();
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("mgmt"), sim.management_key()).unwrap();
    // The hook's consumer reads `hook.key`. While `b-fails` exists the hook takes the key
    // and then fails, leaving `restore-breaks`; while that exists it fails before taking
    // anything, so the restore that follows the failed delivery fails on it.
    let hook = format!(
        "test -e {d}/restore-breaks && exit 1; printf '%s\\n' \"$KEYROTD_KEY\" > {d}/hook.key.tmp && mv {d}/hook.key.tmp {d}/hook.key; test -e {d}/b-fails && {{ touch {d}/restore-breaks; exit 1; }}; exit 0",
        d = dir.display()
    );
    env.write_config(&format!(
        r#"[checks]
interval = "1h"

[[provider]]
name = "sim"
kind = "simulated"
base_url = "{base}"
management_key = {{ file = {mgmt} }}
timeout = "30s"

[[credential]]
name = "{CRED}"
provider = "sim"
[credential.rotation]
retry_backoff = "1s"

[[credential.deliver]]
kind = "file"
path = {key}

[[credential.deliver]]
kind = "exec"
key_via = "env"
command = ["sh", "-c", {hook:?}]
"#,
        base = sim.base_url(),
        mgmt = quoted(&dir.join("mgmt")),
        key = quoted(&dir.join("out/key")),
    ));
    let seed = format!("sim-seed-canary-{}", &canary()[16..]);
    sim.add_key(&seed);
    let out = env.run_with_stdin(&["key", "import", CRED], &format!("{seed}\n"));
    assert_success(&out, "key import");
    std::fs::write(dir.join("b-fails"), "").unwrap();

    let out = env.run(&["key", "rotate", CRED]);
    assert!(!out.status.success(), "the delivery failed");
    assert!(stderr(&out).contains("needs attention"), "{}", stderr(&out));
    // The hook's consumer holds the new key, and both keys are live at the provider.
    let held = std::fs::read_to_string(dir.join("hook.key")).unwrap();
    let held = held.trim_end().to_string();
    assert_ne!(held, seed);
    assert!(sim.is_live(&held), "the consumer's key was revoked");
    assert!(sim.is_live(&seed), "the current key was revoked");
    // A second `key rotate` says so (retrying the restore if the backoff is over) and
    // starts no rotation: no third key at the provider.
    let again = env.run(&["key", "rotate", CRED]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("needs attention"),
        "{}",
        stderr(&again)
    );
    assert_eq!(sim.live_keys().len(), 2, "{:?}", sim.live_keys());
    let show = env.run(&["key", "show", CRED]);
    assert!(
        stdout(&show).contains("NEEDS ATTENTION"),
        "{}",
        stdout(&show)
    );
    // Who holds the rotation, and until when.
    let in_flight = stdout(&show)
        .lines()
        .find(|line| line.starts_with("in flight:"))
        .unwrap_or_else(|| panic!("no in-flight line:\n{}", stdout(&show)))
        .to_string();
    assert!(
        in_flight.contains("step attention")
            && in_flight.contains("owned by ")
            && in_flight.contains("lease "),
        "{in_flight}"
    );
    let shown: serde_json::Value =
        serde_json::from_slice(&env.run(&["key", "show", CRED, "--json"]).stdout).unwrap();
    assert_eq!(shown["in_flight"]["step"], "attention", "{shown}");
    assert!(
        shown["in_flight"]["owner"]
            .as_str()
            .is_some_and(|o| !o.is_empty()),
        "{shown}"
    );
    assert!(
        shown["in_flight"]["lease_expires_at"].as_i64().is_some(),
        "{shown}"
    );
    let list = env.run(&["key", "list", "--json"]);
    assert!(
        stdout(&list).contains("\"needs_attention\": true")
            || stdout(&list).contains("\"needs_attention\":true"),
        "{}",
        stdout(&list)
    );

    // The daemon picks the rotation up at start-up and retries the restore with the backoff.
    let daemon = env.start();
    daemon.wait_for_metrics("the rotation needing attention", |m| {
        sample(m, GAUGE, CRED) == Some(1.0)
    });
    // The daemon's retries change nothing while the target stays broken.
    assert!(sim.is_live(&held), "the consumer's key was revoked");
    assert!(sim.is_live(&seed));

    // The operator fixes the target.
    std::fs::remove_file(dir.join("b-fails")).unwrap();
    std::fs::remove_file(dir.join("restore-breaks")).unwrap();
    daemon.wait_for_metrics("the state cleared", |m| sample(m, GAUGE, CRED) == Some(0.0));
    let restored = std::fs::read_to_string(dir.join("out/key")).unwrap();
    assert_eq!(
        restored.trim_end(),
        seed,
        "the file holds the current key again"
    );
    assert!(sim.is_live(&seed));
    assert!(
        wait_for(HANG_TIMEOUT, || (!sim.is_live(&held)).then_some(())).is_some(),
        "the discarded key was never revoked"
    );
    // Wound up: nothing is in flight any more.
    let shown: serde_json::Value =
        serde_json::from_slice(&env.run(&["key", "show", CRED, "--json"]).stdout).unwrap();
    assert!(shown["in_flight"].is_null(), "{shown}");
    daemon.stop();
}
