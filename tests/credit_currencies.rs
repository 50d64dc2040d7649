//! Credit in two currencies, end to end: a DeepSeek-shaped fake reports a CNY and a USD
//! balance; the real daemon's check stores both, `/metrics` exports one
//! `keyrotd_key_credit_remaining` series per unit (from the store: they survive a restart
//! with the fake gone), and the one-shot `keyrotd check --json` and `keyrotd key show` report
//! both.

mod common;

use common::*;
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const CREDIT: &str = "keyrotd_key_credit_remaining";

fn credit(metrics: &str, unit: &str) -> Option<f64> {
    series(metrics, CREDIT, &[("credential", "ds"), ("unit", unit)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_currencies_reach_the_store_metrics_and_check_output() {
    let key = canary();
    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/user/balance"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "is_available": true,
            "balance_infos": [
                {"currency": "CNY", "total_balance": "110.00",
                 "granted_balance": "10.00", "topped_up_balance": "100.00"},
                {"currency": "USD", "total_balance": "5.25",
                 "granted_balance": "0.00", "topped_up_balance": "5.25"},
            ],
        })))
        .mount(&fake)
        .await;
    let env = Env::new();
    // Checked once at start-up, then not again for an hour.
    env.write_config(&format!(
        "[checks]\ninterval = \"1h\"\n\n[[provider]]\nname = \"deepseek\"\nkind = \"deepseek\"\nbase_url = \"{}\"\n\n[[credential]]\nname = \"ds\"\nprovider = \"deepseek\"\n",
        fake.uri()
    ));
    env.import("ds", &key, &[]);

    let daemon = env.start();
    let metrics = daemon.wait_for_metrics("two credit series", |m| {
        credit(m, "cny").is_some() && credit(m, "usd").is_some()
    });
    assert_eq!(credit(&metrics, "cny"), Some(110.0), "{metrics}");
    assert_eq!(credit(&metrics, "usd"), Some(5.25), "{metrics}");
    let units: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{CREDIT}{{")))
        .collect();
    assert_eq!(units.len(), 2, "one series per currency: {units:?}");
    daemon.stop();

    // The one-shot check reports both, as the provider's currencies in lower case.
    let out = env.run(&["check", "--json"]);
    assert_success(&out, "check --json");
    let items: Value = serde_json::from_slice(&out.stdout).expect("check --json is JSON");
    assert_eq!(
        items[0]["credit"],
        json!([{"unit": "cny", "remaining": 110.0}, {"unit": "usd", "remaining": 5.25}])
    );

    // The fake is gone: what the restarted daemon exports comes from the store.
    let checks = fake.received_requests().await.unwrap().len();
    assert!(checks >= 2, "{checks} checks reached the fake");
    drop(fake);
    let daemon = env.start();
    let metrics = daemon.wait_for_metrics("the stored credit", |m| {
        credit(m, "cny").is_some() && credit(m, "usd").is_some()
    });
    assert_eq!(credit(&metrics, "cny"), Some(110.0), "{metrics}");
    assert_eq!(credit(&metrics, "usd"), Some(5.25), "{metrics}");
    let log = daemon.stop();
    assert!(!log.contains(&key), "the key leaked into the log");

    // `key show` reads the stored balances too, as JSON and as a line for people.
    let out = env.run(&["key", "show", "ds", "--json"]);
    assert_success(&out, "key show --json");
    let shown: Value = serde_json::from_slice(&out.stdout).expect("key show --json is JSON");
    assert_eq!(
        shown["credit"],
        json!([{"unit": "cny", "remaining": 110.0}, {"unit": "usd", "remaining": 5.25}])
    );
    let out = env.run(&["key", "show", "ds"]);
    assert_success(&out, "key show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l == "credit:       110 cny, 5.25 usd"),
        "{text}"
    );
    for output in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(output).contains(&key));
    }
}
