//! OpenAI key management against local fakes that answer as the vendor's API reference does
//! (errors `{"error":{"message","type","param","code"}}`): provider-side expiry with
//! `expires_in_seconds`, the mandatory-expiry policy error, a service account per key (the
//! orphan sweep over the paged account listing, accounts in use, deletion after grace),
//! keys of one service account, admin keys, and keyrotd rotating its own admin key end to
//! end.

#[macro_use]
mod providers_support;

use keyrotd::clock::ManualClock;
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::providers::{build_issuer, IssueRequest, Issuer, ProviderError, ProviderTelemetry};
use keyrotd::rotation::{self, Engine};
use keyrotd::store::{CredentialStore, KeyStore, NewKey, SqliteStore, Store};
use providers_support::provider_config;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wiremock::matchers::{any, body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The admin key of the adapter tests (a canary: it must never come back in an error).
const ADMIN: &str = "sk-admin-canary-5e1d";
const NOW: i64 = 1_800_000_000;
const PROJECT: &str = "/v1/organization/projects/proj_abc";

fn admin_file(value: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{value}\n")).unwrap();
    file
}

/// The issuer of `toml` (`{base}` replaced) with the admin key read from `file`.
fn issuer_with(toml: &str, server: &MockServer, file: &Path) -> Arc<dyn Issuer> {
    let config = provider_config(&format!(
        "timeout = \"30s\"\nmanagement_key = {{ file = {:?} }}\n{}",
        file.display().to_string(),
        toml.replace("{base}", &format!("{}/v1", server.uri()))
    ));
    build_issuer(&config, &ProviderTelemetry::new())
        .expect("issuer builds")
        .expect("kind has an issuer")
}

fn request(name: &str, expires_at: Option<i64>) -> IssueRequest<'_> {
    IssueRequest {
        name,
        replaces: None,
        expires_at,
        now: NOW,
    }
}

/// The policy refusal OpenAI sends when an organisation or project policy requires expiry.
fn policy_refusal(message: &str) -> ResponseTemplate {
    ResponseTemplate::new(400).set_body_json(json!({"error": {
        "message": message, "type": "invalid_request_error",
        "param": "expires_in_seconds", "code": "invalid_value"}}))
}

fn no_admin_in(err: &ProviderError) {
    let text = format!("{err} {err:?}");
    assert!(!text.contains(ADMIN), "admin key leaked: {text}");
}

mod service_accounts {
    use super::*;

    const TOML: &str = "kind = \"openai\"\nbase_url = \"{base}\"\nproject = \"proj_abc\"";

    #[tokio::test]
    async fn expires_in_seconds_is_sent_and_the_answered_expiry_recorded() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .and(body_json(
                json!({"name": "keyrotd/i/c/r1", "expires_in_seconds": 86_400}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.service_account", "id": "svc_acct_1",
                "name": "keyrotd/i/c/r1", "role": "member", "created_at": NOW,
                "api_key": {"object": "organization.project.service_account.api_key",
                    "value": "sk-svcacct-new", "name": "Secret Key", "created_at": NOW,
                    "id": "key_1", "expires_at": NOW + 86_400 - 3}})))
            .expect(1)
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let key = issuer_with(TOML, &server, file.path())
            .issue(&request("keyrotd/i/c/r1", Some(NOW + 86_400)))
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "sk-svcacct-new");
        assert_eq!(key.remote_id, "svc_acct_1");
        assert_eq!(
            key.expires_at,
            Some(NOW + 86_400 - 3),
            "the vendor's answer"
        );
    }

    #[tokio::test]
    async fn a_lifetime_past_the_vendor_maximum_is_clamped_and_the_real_expiry_kept() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(body_json(
                json!({"name": "n", "expires_in_seconds": 31_536_000}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.service_account", "id": "svc_acct_1", "name": "n",
                "api_key": {"value": "sk-svcacct-new", "id": "key_1"}})))
            .expect(1)
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let key = issuer_with(TOML, &server, file.path())
            .issue(&request("n", Some(NOW + 2 * 31_536_000)))
            .await
            .unwrap();
        assert_eq!(key.expires_at, Some(NOW + 31_536_000));
    }

    #[tokio::test]
    async fn without_an_expiry_none_is_sent() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(body_json(json!({"name": "n"})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": "svc_acct_1", "name": "n",
                "api_key": {"value": "sk-svcacct-new", "id": "key_1", "expires_at": null}})))
            .expect(1)
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let key = issuer_with(TOML, &server, file.path())
            .issue(&request("n", None))
            .await
            .unwrap();
        assert_eq!(key.expires_at, None);
    }

    #[tokio::test]
    async fn a_policy_that_requires_expiry_is_named_with_what_to_change() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(policy_refusal(&format!(
                "Your organization requires API keys to expire. {ADMIN}"
            )))
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let err = issuer_with(TOML, &server, file.path())
            .issue(&request("n", None))
            .await
            .err()
            .unwrap();
        let ProviderError::ExpiryPolicy(text) = &err else {
            panic!("not classified as the expiry policy: {err:?}");
        };
        assert!(text.contains("requires every API key to expire"), "{text}");
        assert!(text.contains("provider_expiry_margin"), "{text}");
        assert!(text.contains("max_age"), "{text}");
        assert!(text.contains("HTTP 400"), "{text}");
        assert!(!err.is_transient());
        no_admin_in(&err);
    }

    #[tokio::test]
    async fn a_policy_that_caps_the_lifetime_names_the_lifetime_asked_for() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(policy_refusal(
                "expires_in_seconds exceeds the maximum of 7776000 allowed by the project's API key expiration policy",
            ))
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let err = issuer_with(TOML, &server, file.path())
            .issue(&request("n", Some(NOW + 100 * 86_400)))
            .await
            .err()
            .unwrap();
        let ProviderError::ExpiryPolicy(text) = &err else {
            panic!("not classified as the expiry policy: {err:?}");
        };
        assert!(text.contains("8640000s"), "{text}");
        assert!(
            text.contains("grace") && text.contains("provider_expiry_margin"),
            "{text}"
        );
        assert!(
            text.contains("7776000"),
            "the vendor's limit is shown: {text}"
        );
    }

    #[tokio::test]
    async fn another_bad_request_stays_a_plain_rejection() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
                "message": "Invalid project", "type": "invalid_request_error",
                "param": "project_id", "code": null}})))
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let err = issuer_with(TOML, &server, file.path())
            .issue(&request("n", Some(NOW + 86_400)))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ProviderError::Rejected { status: 400, .. }),
            "{err:?}"
        );
    }
    fn account(id: &str, name: &str) -> Value {
        json!({"object": "organization.project.service_account", "id": id, "name": name,
            "role": "member", "created_at": NOW})
    }

    /// The first page of the project's service accounts: `limit=100`, no cursor.
    async fn first_page(server: &MockServer, data: &[Value], has_more: bool) {
        Mock::given(method("GET"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .and(query_param("limit", "100"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": data, "first_id": data.first().map(|a| a["id"].clone()),
                "last_id": data.last().map(|a| a["id"].clone()), "has_more": has_more})),
            )
            .with_priority(10)
            .expect(1)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn accounts_are_listed_page_by_page_and_deleted_with_their_key() {
        let server = MockServer::start().await;
        first_page(
            &server,
            &[
                account("svc_acct_1", "keyrotd/i/c/r1"),
                account("svc_acct_2", "ops (by hand)"),
            ],
            true,
        )
        .await;
        Mock::given(method("GET"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(query_param("limit", "100"))
            .and(query_param("after", "svc_acct_2"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [account("svc_acct_3", "keyrotd/i/c/r2")],
                "first_id": "svc_acct_3", "last_id": "svc_acct_3", "has_more": false})),
            )
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!("{PROJECT}/service_accounts/svc_acct_3")))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.service_account.deleted",
                "id": "svc_acct_3", "deleted": true})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!("{PROJECT}/service_accounts/svc_acct_gone")))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
                "message": "No such service account: svc_acct_gone",
                "type": "invalid_request_error", "param": null, "code": null}})))
            .expect(1)
            .mount(&server)
            .await;

        let file = admin_file(ADMIN);
        let issuer = issuer_with(TOML, &server, file.path());
        let found: Vec<(String, String)> = issuer
            .list("keyrotd/")
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.remote_id, k.name))
            .collect();
        assert_eq!(
            found,
            [
                ("svc_acct_1".to_string(), "keyrotd/i/c/r1".to_string()),
                ("svc_acct_3".to_string(), "keyrotd/i/c/r2".to_string()),
            ],
            "keyrotd's accounts of both pages, by account id"
        );
        issuer.revoke("svc_acct_3").await.unwrap();
        issuer
            .revoke("svc_acct_gone")
            .await
            .expect("an account already gone is success");
        let keys_touched = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path().contains("/api_keys"))
            .count();
        assert_eq!(
            keys_touched, 0,
            "the account is deleted, not its key on its own"
        );
    }

    #[tokio::test]
    async fn a_server_error_on_a_later_page_fails_the_whole_listing_as_transient() {
        let server = MockServer::start().await;
        first_page(&server, &[account("svc_acct_1", "keyrotd/i/c/r1")], true).await;
        Mock::given(method("GET"))
            .and(path(format!("{PROJECT}/service_accounts")))
            .and(query_param("after", "svc_acct_1"))
            .respond_with(ResponseTemplate::new(500).set_body_json(json!({"error": {
                "message": format!("The server had an error while processing your request. Sorry about that! {ADMIN}"),
                "type": "server_error", "param": null, "code": null}})))
            .expect(1)
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let err = issuer_with(TOML, &server, file.path())
            .list("keyrotd/")
            .await
            .expect_err("half a listing is no listing");
        assert!(
            matches!(err, ProviderError::Rejected { status: 500, .. }),
            "{err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
        no_admin_in(&err);
    }
}

mod service_account_keys {
    use super::*;

    const TOML: &str = "kind = \"openai\"\nbase_url = \"{base}\"\nproject = \"proj_abc\"\nservice_account = \"svc_acct_app\"\nscopes = [\"model.request\", \"api.model.read\"]";

    #[tokio::test]
    async fn keys_of_one_account_are_created_listed_and_deleted() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!(
                "{PROJECT}/service_accounts/svc_acct_app/api_keys"
            )))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .and(body_json(json!({"name": "keyrotd/i/c/r1",
                "scopes": ["model.request", "api.model.read"], "expires_in_seconds": 3600})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.service_account.api_key", "id": "key_new",
                "name": "keyrotd/i/c/r1", "created_at": NOW, "value": "sk-svcacct-k2",
                "expires_at": NOW + 3600})))
            .expect(1)
            .mount(&server)
            .await;
        let key = |id: &str, name: &str, owner: &str| {
            json!({"object": "organization.project.api_key", "id": id, "name": name,
                "redacted_value": "sk-...abc", "created_at": NOW, "last_used_at": null,
                "owner": {"type": "service_account", "service_account":
                    {"id": owner, "name": "app", "role": "member", "created_at": NOW}}})
        };
        Mock::given(method("GET"))
            .and(path(format!("{PROJECT}/api_keys")))
            .and(query_param("owner_project_access", "any"))
            .and(query_param("after", "key_b"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [key("key_c", "keyrotd/i/c/r3", "svc_acct_app")],
                "first_id": "key_c", "last_id": "key_c", "has_more": false})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("{PROJECT}/api_keys")))
            .and(query_param("owner_project_access", "any"))
            .and(query_param("limit", "100"))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [key("key_a", "keyrotd/i/c/r1", "svc_acct_app"),
                         key("key_x", "keyrotd/i/c/r2", "svc_acct_other"),
                         key("key_b", "hand-made", "svc_acct_app")],
                "first_id": "key_a", "last_id": "key_b", "has_more": true})),
            )
            .with_priority(10)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!("{PROJECT}/api_keys/key_a")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.api_key.deleted", "id": "key_a", "deleted": true})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!("{PROJECT}/api_keys/key_gone")))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {
                "message": "No such API key", "type": "invalid_request_error",
                "param": null, "code": null}})))
            .mount(&server)
            .await;

        let file = admin_file(ADMIN);
        let issuer = issuer_with(TOML, &server, file.path());
        let issued = issuer
            .issue(&request("keyrotd/i/c/r1", Some(NOW + 3600)))
            .await
            .unwrap();
        assert_eq!(issued.secret.expose_secret(), "sk-svcacct-k2");
        assert_eq!(
            issued.remote_id, "key_new",
            "the key's id, not the account's"
        );
        assert_eq!(issued.expires_at, Some(NOW + 3600));
        let found: Vec<_> = issuer
            .list("keyrotd/")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.remote_id)
            .collect();
        assert_eq!(
            found,
            ["key_a", "key_c"],
            "only this account's keyrotd keys"
        );
        issuer.revoke("key_a").await.unwrap();
        issuer.revoke("key_gone").await.unwrap();
        let accounts_touched = server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() != "POST" && r.url.path().contains("/service_accounts"))
            .count();
        assert_eq!(
            accounts_touched, 0,
            "the account itself is never listed or deleted"
        );
    }

    #[tokio::test]
    async fn the_policy_error_is_classified_for_account_keys_too() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(format!(
                "{PROJECT}/service_accounts/svc_acct_app/api_keys"
            )))
            .respond_with(policy_refusal(
                "An expiration is required by your organization's API key policy.",
            ))
            .mount(&server)
            .await;
        let file = admin_file(ADMIN);
        let err = issuer_with(TOML, &server, file.path())
            .issue(&request("n", None))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ProviderError::ExpiryPolicy(_)), "{err:?}");
    }
}

mod admin_keys {
    use super::*;

    const TOML: &str = "kind = \"openai_admin\"\nbase_url = \"{base}\"";
    const KEYS: &str = "/v1/organization/admin_api_keys";

    #[tokio::test]
    async fn admin_keys_are_created_listed_and_deleted_with_the_key_in_the_file_now() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(KEYS))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .and(body_json(
                json!({"name": "keyrotd/i/admin/r1", "expires_in_seconds": 600}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.admin_api_key", "id": "key_adm2",
                "name": "keyrotd/i/admin/r1", "redacted_value": "sk-admin...xyz",
                "value": "sk-admin-second", "created_at": NOW, "expires_at": NOW + 600,
                "last_used_at": null,
                "owner": {"type": "user", "object": "organization.user", "id": "user_1",
                    "name": "Ops", "created_at": NOW, "role": "owner"}})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(KEYS))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [
                    {"object": "organization.admin_api_key", "id": "key_adm1", "name": "ops laptop",
                     "redacted_value": "sk-admin...abc", "created_at": NOW, "expires_at": null, "last_used_at": NOW},
                    {"object": "organization.admin_api_key", "id": "key_adm2", "name": "keyrotd/i/admin/r1",
                     "redacted_value": "sk-admin...xyz", "created_at": NOW, "expires_at": NOW + 600, "last_used_at": null}],
                "first_id": "key_adm1", "last_id": "key_adm2", "has_more": false})))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path(format!("{KEYS}/key_adm1")))
            .and(header("authorization", "Bearer sk-admin-second"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.admin_api_key.deleted", "id": "key_adm1", "deleted": true})))
            .expect(1)
            .mount(&server)
            .await;

        let file = admin_file(ADMIN);
        let issuer = issuer_with(TOML, &server, file.path());
        let issued = issuer
            .issue(&request("keyrotd/i/admin/r1", Some(NOW + 600)))
            .await
            .unwrap();
        assert_eq!(issued.secret.expose_secret(), "sk-admin-second");
        assert_eq!(issued.remote_id, "key_adm2");
        assert_eq!(issued.expires_at, Some(NOW + 600));
        let found: Vec<_> = issuer.list("keyrotd/").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].remote_id, "key_adm2");
        // The new admin key replaces the old one in the file: the very next call uses it.
        std::fs::write(file.path(), "sk-admin-second\n").unwrap();
        issuer.revoke("key_adm1").await.unwrap();
    }

    #[tokio::test]
    async fn an_admin_key_is_checked_by_listing_admin_keys_with_it() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(KEYS))
            .and(query_param("limit", "1"))
            .and(header("authorization", "Bearer sk-admin-good"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"object": "list", "data": [], "has_more": false})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(KEYS))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
                "message": "Incorrect API key provided", "type": "invalid_request_error",
                "param": null, "code": "invalid_api_key"}})))
            .with_priority(10)
            .mount(&server)
            .await;
        let config = provider_config(&format!(
            "kind = \"openai_admin\"\nbase_url = \"{}/v1\"\nmanagement_key = {{ env = \"UNUSED\" }}",
            server.uri()
        ));
        let checker = keyrotd::providers::build(&config, &ProviderTelemetry::new()).unwrap();
        let good = checker.check(&SecretString::from("sk-admin-good")).await;
        assert_eq!(good.status, keyrotd::model::CheckStatus::Valid, "{good:?}");
        let project_key = checker.check(&SecretString::from("sk-proj-x")).await;
        assert_eq!(project_key.status, keyrotd::model::CheckStatus::Invalid);
    }
}

mod config {
    use super::*;

    fn issues(text: &str) -> String {
        match Config::parse(Path::new("t.toml"), text) {
            Ok(_) => String::new(),
            Err(err) => err.to_string(),
        }
    }

    const ADMIN_PROVIDER: &str = r#"
[[provider]]
name = "openai-admin"
kind = "openai_admin"
management_key = { file = "/etc/keyrotd/openai-admin-key" }
"#;

    #[test]
    fn a_self_rotating_admin_key_must_be_delivered_to_the_file_it_is_read_from() {
        let good = format!(
            "{ADMIN_PROVIDER}\n[[credential]]\nname = \"admin\"\nprovider = \"openai-admin\"\n[[credential.deliver]]\nkind = \"file\"\npath = \"/etc/keyrotd/openai-admin-key\"\n"
        );
        assert_eq!(issues(&good), "", "{good}");
        let elsewhere = good.replace(
            "path = \"/etc/keyrotd/openai-admin-key\"\n",
            "path = \"/run/other\"\n",
        );
        let err = issues(&elsewhere);
        assert!(
            err.contains("must deliver to /etc/keyrotd/openai-admin-key"),
            "{err}"
        );
        let env = good.replace(
            "management_key = { file = \"/etc/keyrotd/openai-admin-key\" }",
            "management_key = { env = \"OPENAI_ADMIN_KEY\" }",
        );
        let err = issues(&env);
        assert!(
            err.contains("must be a `file` keyrotd can rewrite"),
            "{err}"
        );
    }

    #[test]
    fn service_account_fields_are_checked() {
        let base = "[[provider]]\nname = \"o\"\nkind = \"openai\"\n";
        let err = issues(&format!(
            "{base}scopes = [\"model.request\"]\nproject = \"proj_a\"\n"
        ));
        assert!(err.contains("`scopes` only applies"), "{err}");
        let err = issues(&format!("{base}service_account = \"svc_acct_a\"\n"));
        assert!(err.contains("needs `project`"), "{err}");
        let err = issues(
            "[[provider]]\nname = \"o\"\nkind = \"anthropic\"\nservice_account = \"svc_acct_a\"\n",
        );
        assert!(err.contains("only applies to kind openai"), "{err}");
        assert_eq!(
            issues(&format!(
                "{base}project = \"proj_a\"\nservice_account = \"svc_acct_a\"\nscopes = [\"model.request\"]\n"
            )),
            ""
        );
    }
}

/// A stateful OpenAI organisation: admin keys, one project with its service accounts (the
/// `svc_acct_app` account's keys, and accounts created with their first key), and the model
/// listing that answers for live project keys. Every request's method, path and bearer
/// token is logged.
#[derive(Default)]
struct Org {
    /// value → (id, name)
    admin_keys: BTreeMap<String, (String, String)>,
    /// value → (id, name, expires_at): the keys of `svc_acct_app`.
    project_keys: BTreeMap<String, (String, String, Option<i64>)>,
    /// The project's other service accounts, in creation order (the listing's order).
    accounts: Vec<Account>,
    /// While set, every page of the service-account listing after the first answers 500.
    fail_later_account_pages: bool,
    /// The query of every service-account listing request.
    account_listings: Vec<String>,
    log: Vec<(String, String, String)>,
    next: u32,
}

/// A project service account and the key OpenAI creates with it (`None` once that key has
/// expired: the account stays, empty).
struct Account {
    id: String,
    name: String,
    /// (value, id, expires_at)
    key: Option<(String, String, Option<i64>)>,
}

impl Org {
    fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.iter().find(|a| a.id == id)
    }

    /// A service account made by hand in the OpenAI console, with a live key.
    fn add_account(&mut self, id: &str, name: &str, value: &str) {
        self.accounts.push(Account {
            id: id.into(),
            name: name.into(),
            key: Some((value.into(), format!("key_of_{id}"), None)),
        });
    }

    fn key_is_live(&self, value: &str) -> bool {
        self.project_keys.contains_key(value)
            || self
                .accounts
                .iter()
                .any(|a| a.key.as_ref().is_some_and(|(v, _, _)| v == value))
    }

    /// `GET …/service_accounts`: `limit` (1 to 100, default 20) items after the account
    /// `after`, as OpenAI's reference documents the listing.
    fn account_page(&mut self, url: &reqwest::Url) -> ResponseTemplate {
        self.account_listings
            .push(url.query().unwrap_or_default().to_string());
        let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
            None => 20,
            Some(Ok(limit)) if (1..=100).contains(&limit) => limit,
            Some(_) => {
                return ResponseTemplate::new(400).set_body_json(json!({"error": {
                    "message": "Invalid 'limit': must be between 1 and 100.",
                    "type": "invalid_request_error", "param": "limit", "code": null}}))
            }
        };
        let start = match query.get("after") {
            None => 0,
            Some(_) if self.fail_later_account_pages => return server_error(),
            Some(after) => match self.accounts.iter().position(|a| a.id == *after) {
                Some(at) => at + 1,
                None => {
                    return ResponseTemplate::new(400).set_body_json(json!({"error": {
                        "message": format!("Invalid 'after': no service account {after}."),
                        "type": "invalid_request_error", "param": "after", "code": null}}))
                }
            },
        };
        let page: Vec<Value> = self.accounts[start.min(self.accounts.len())..]
            .iter()
            .take(limit)
            .map(|a| {
                json!({"object": "organization.project.service_account", "id": a.id,
                    "name": a.name, "role": "member", "created_at": NOW})
            })
            .collect();
        let has_more = start + page.len() < self.accounts.len();
        ResponseTemplate::new(200).set_body_json(json!({"object": "list",
            "first_id": page.first().map(|a| a["id"].clone()),
            "last_id": page.last().map(|a| a["id"].clone()),
            "data": page, "has_more": has_more}))
    }
}

#[derive(Clone, Default)]
struct FakeOpenAi(Arc<Mutex<Org>>);

fn error(status: u16, message: &str, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": code}}))
}

/// OpenAI's answer to a request its servers failed.
fn server_error() -> ResponseTemplate {
    ResponseTemplate::new(500).set_body_json(json!({"error": {
        "message": "The server had an error while processing your request. Sorry about that!",
        "type": "server_error", "param": null, "code": null}}))
}

impl Respond for FakeOpenAi {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut org = self.0.lock().unwrap();
        let bearer = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let path = request.url.path().to_string();
        let verb = request.method.to_string();
        org.log.push((verb.clone(), path.clone(), bearer.clone()));
        if path == "/v1/models" {
            return if org.key_is_live(&bearer) {
                ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": []}))
            } else {
                error(401, "Incorrect API key provided", "invalid_api_key")
            };
        }
        if !org.admin_keys.contains_key(&bearer) {
            return error(401, "Invalid admin key", "invalid_api_key");
        }
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let expires_at = body
            .get("expires_in_seconds")
            .and_then(Value::as_i64)
            .map(|s| NOW + s);
        let name = body["name"].as_str().unwrap_or_default().to_string();
        org.next += 1;
        let n = org.next;
        match (verb.as_str(), path.as_str()) {
            ("GET", "/v1/organization/admin_api_keys") => {
                let data: Vec<Value> = org
                    .admin_keys
                    .iter()
                    .map(|(value, (id, name))| json!({"object": "organization.admin_api_key", "id": id, "name": name,
                        "redacted_value": format!("{}...{}", &value[..8], &value[value.len() - 3..])}))
                    .collect();
                ResponseTemplate::new(200)
                    .set_body_json(json!({"object": "list", "data": data, "has_more": false}))
            }
            ("POST", "/v1/organization/admin_api_keys") => {
                let value = format!("sk-admin-{n}");
                let id = format!("key_adm{n}");
                org.admin_keys
                    .insert(value.clone(), (id.clone(), name.clone()));
                ResponseTemplate::new(200).set_body_json(json!({"object": "organization.admin_api_key",
                    "id": id, "name": name, "value": value, "created_at": NOW, "expires_at": expires_at}))
            }
            ("DELETE", p) if p.starts_with("/v1/organization/admin_api_keys/") => {
                let id = p.rsplit('/').next().unwrap().to_string();
                org.admin_keys.retain(|_, (kid, _)| *kid != id);
                ResponseTemplate::new(200).set_body_json(json!({"id": id, "deleted": true}))
            }
            (
                "POST",
                "/v1/organization/projects/proj_abc/service_accounts/svc_acct_app/api_keys",
            ) => {
                let value = format!("sk-svcacct-{n}");
                let id = format!("key_{n}");
                org.project_keys
                    .insert(value.clone(), (id.clone(), name.clone(), expires_at));
                ResponseTemplate::new(200).set_body_json(json!({"object": "organization.project.service_account.api_key",
                    "id": id, "name": name, "value": value, "created_at": NOW, "expires_at": expires_at}))
            }
            ("GET", "/v1/organization/projects/proj_abc/api_keys") => {
                let mut data: Vec<Value> = org.project_keys.values().map(|(id, name, _)| json!({
                    "object": "organization.project.api_key", "id": id, "name": name,
                    "owner": {"type": "service_account", "service_account": {"id": "svc_acct_app"}}})).collect();
                data.extend(org.accounts.iter().filter_map(|a| {
                    a.key.as_ref().map(|(_, id, _)| {
                        json!({
                    "object": "organization.project.api_key", "id": id, "name": "Secret Key",
                    "owner": {"type": "service_account", "service_account": {"id": a.id}}})
                    })
                }));
                ResponseTemplate::new(200)
                    .set_body_json(json!({"object": "list", "data": data, "has_more": false}))
            }
            ("DELETE", p) if p.starts_with("/v1/organization/projects/proj_abc/api_keys/") => {
                let id = p.rsplit('/').next().unwrap().to_string();
                let before = org.project_keys.len();
                org.project_keys.retain(|_, (kid, _, _)| *kid != id);
                if before == org.project_keys.len() {
                    return error(404, "No such API key", "not_found");
                }
                ResponseTemplate::new(200).set_body_json(json!({"id": id, "deleted": true}))
            }
            ("GET", "/v1/organization/projects/proj_abc/service_accounts") => {
                org.account_page(&request.url)
            }
            ("POST", "/v1/organization/projects/proj_abc/service_accounts") => {
                let id = format!("svc_acct_{n}");
                let value = format!("sk-svcacct-{n}");
                let key_id = format!("key_{n}");
                org.accounts.push(Account {
                    id: id.clone(),
                    name: name.clone(),
                    key: Some((value.clone(), key_id.clone(), expires_at)),
                });
                ResponseTemplate::new(200).set_body_json(
                    json!({"object": "organization.project.service_account",
                    "id": id, "name": name, "role": "member", "created_at": NOW,
                    "api_key": {"object": "organization.project.service_account.api_key",
                        "value": value, "name": "Secret Key", "created_at": NOW, "id": key_id,
                        "expires_at": expires_at}}),
                )
            }
            ("DELETE", p)
                if p.starts_with("/v1/organization/projects/proj_abc/service_accounts/") =>
            {
                let id = p.rsplit('/').next().unwrap().to_string();
                let before = org.accounts.len();
                // The account's key goes with it.
                org.accounts.retain(|a| a.id != id);
                if before == org.accounts.len() {
                    return error(404, &format!("No such service account: {id}"), "not_found");
                }
                ResponseTemplate::new(200).set_body_json(json!({
                    "object": "organization.project.service_account.deleted", "id": id, "deleted": true}))
            }
            _ => error(404, "Unknown endpoint", "not_found"),
        }
    }
}

impl FakeOpenAi {
    async fn start() -> (Self, MockServer) {
        let fake = FakeOpenAi::default();
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(fake.clone())
            .mount(&server)
            .await;
        (fake, server)
    }
    fn org(&self) -> std::sync::MutexGuard<'_, Org> {
        self.0.lock().unwrap()
    }
}

const GRACE: i64 = 3600;

struct Engined {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: ManualClock,
    engine: Engine,
    runtimes: std::collections::HashMap<String, Arc<rotation::CredentialRuntime>>,
}

/// Seeds are (credential, key, provider id): an imported key has no provider id.
/// The config of one credential `app` of an `openai` provider in project `proj_abc`, its key
/// delivered to `out`; `provider_extra` and `rotation_extra` are lines added to the provider
/// and to `[credential.rotation]`.
fn app_config(
    base: &str,
    admin: &Path,
    out: &Path,
    provider_extra: &str,
    rotation_extra: &str,
) -> String {
    format!(
        r#"[[provider]]
name = "openai"
kind = "openai"
base_url = "{base}/v1"
timeout = "30s"
project = "proj_abc"
{provider_extra}management_key = {{ file = {admin:?} }}

[[credential]]
name = "app"
provider = "openai"
[credential.rotation]
max_age = "30d"
grace = "1h"
{rotation_extra}[[credential.deliver]]
kind = "file"
path = {out:?}
"#,
        admin = admin.display().to_string(),
        out = out.display().to_string(),
    )
}

async fn engined(
    dir: tempfile::TempDir,
    text: &str,
    seeds: &[(&str, &str, Option<&str>)],
) -> Engined {
    let config = Config::parse(&dir.path().join("config.toml"), text)
        .unwrap_or_else(|e| panic!("config does not parse: {e}\n{text}"));
    let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("keyrotd.db"), Some(sealer))
            .await
            .unwrap(),
    );
    store
        .sync_credentials(&keyrotd::store::credential_specs(&config), NOW)
        .await
        .unwrap();
    for (credential, secret, remote) in seeds {
        store
            .import_key(
                credential,
                NewKey {
                    secret: SecretString::from(secret.to_string()),
                    expires_at: None,
                    provider_key_id: remote.map(str::to_string),
                    rotation_id: None,
                },
                "test",
                NOW,
            )
            .await
            .unwrap();
    }
    let clock = ManualClock::new(NOW);
    let engine = Engine::new(store.clone() as Arc<dyn Store>, Arc::new(clock.clone()));
    let runtimes = rotation::build_runtimes(&config, &ProviderTelemetry::new()).unwrap();
    Engined {
        _dir: dir,
        store,
        clock,
        engine,
        runtimes,
    }
}

impl Engined {
    async fn current(&self, credential: &str) -> (String, keyrotd::store::KeyVersion) {
        let versions = self.store.versions(credential).await.unwrap();
        let current = versions
            .into_iter()
            .find(|v| v.stage == Stage::Current)
            .expect("a current key");
        let secret = self.store.secret(current.id).await.unwrap();
        (secret.expose_secret().to_string(), current)
    }
}

#[tokio::test]
async fn a_rotation_in_service_account_keys_mode_overlaps_two_keys_of_one_account() {
    let (fake, server) = FakeOpenAi::start().await;
    fake.org()
        .admin_keys
        .insert(ADMIN.into(), ("key_adm0".into(), "ops".into()));
    fake.org().project_keys.insert(
        "sk-svcacct-seed".into(),
        ("key_seed".into(), "hand-made".into(), None),
    );
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin");
    std::fs::write(&admin, ADMIN).unwrap();
    let out = dir.path().join("app-key");
    let text = app_config(
        &server.uri(),
        &admin,
        &out,
        "service_account = \"svc_acct_app\"\n",
        "provider_expiry_margin = \"3d\"\n",
    );
    let e = engined(dir, &text, &[("app", "sk-svcacct-seed", Some("key_seed"))]).await;
    let rt = e.runtimes["app"].clone();
    e.engine.rotate(&rt, "test").await.unwrap();

    let (new, current) = e.current("app").await;
    let planned = NOW + 30 * 86_400 + GRACE + 3 * 86_400;
    assert_eq!(
        current.expires_at,
        Some(planned),
        "the successor carries the expiry"
    );
    assert_eq!(
        fake.org().project_keys[&new].2,
        Some(planned),
        "set at the provider"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), new);
    assert_eq!(
        current.provider_key_id.as_deref(),
        Some(fake.org().project_keys[&new].0.as_str())
    );
    assert!(
        fake.org().project_keys.contains_key("sk-svcacct-seed"),
        "both keys of the account live during grace"
    );
    let created_accounts = fake
        .org()
        .log
        .iter()
        .filter(|(verb, path, _)| verb == "POST" && path.ends_with("/service_accounts"))
        .count();
    assert_eq!(created_accounts, 0, "no service account is created");

    e.clock.advance(GRACE);
    e.engine.revoke_due(&rt).await.unwrap();
    let keys: Vec<String> = fake.org().project_keys.keys().cloned().collect();
    assert_eq!(
        keys,
        [new],
        "the old key of the account is deleted after grace"
    );
    assert!(fake.org().log.iter().any(|(verb, path, _)| verb == "DELETE"
        && path == "/v1/organization/projects/proj_abc/api_keys/key_seed"));
}

#[tokio::test]
async fn keyrotd_rotates_its_own_admin_key_and_uses_the_new_one_from_the_next_call() {
    let (fake, server) = FakeOpenAi::start().await;
    fake.org().admin_keys.insert(
        "sk-admin-first".into(),
        ("key_adm_first".into(), "ops".into()),
    );
    fake.org().project_keys.insert(
        "sk-svcacct-seed".into(),
        ("key_seed".into(), "hand-made".into(), None),
    );
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("openai-admin-key");
    std::fs::write(&admin, "sk-admin-first\n").unwrap();
    let app_out = dir.path().join("app-key");
    let text = format!(
        r#"[[provider]]
name = "openai"
kind = "openai"
base_url = "{base}/v1"
timeout = "30s"
project = "proj_abc"
service_account = "svc_acct_app"
management_key = {{ file = {admin:?} }}

[[provider]]
name = "openai-admin"
kind = "openai_admin"
base_url = "{base}/v1"
timeout = "30s"
management_key = {{ file = {admin:?} }}

[[credential]]
name = "openai-admin"
provider = "openai-admin"
[credential.rotation]
max_age = "30d"
grace = "1h"
[[credential.deliver]]
kind = "file"
path = {admin:?}

[[credential]]
name = "app"
provider = "openai"
[credential.rotation]
max_age = "30d"
grace = "1h"
[[credential.deliver]]
kind = "file"
path = {app_out:?}
"#,
        base = server.uri(),
        admin = admin.display().to_string(),
        app_out = app_out.display().to_string(),
    );
    let e = engined(
        dir,
        &text,
        &[
            // The operator imported the first admin key: keyrotd knows its value, not its id.
            ("openai-admin", "sk-admin-first", None),
            ("app", "sk-svcacct-seed", Some("key_seed")),
        ],
    )
    .await;

    let admin_rt = e.runtimes["openai-admin"].clone();
    e.engine.rotate(&admin_rt, "test").await.unwrap();
    let (second, current) = e.current("openai-admin").await;
    assert_ne!(second, "sk-admin-first");
    assert!(fake.org().admin_keys.contains_key(&second));
    assert_eq!(
        std::fs::read_to_string(&admin).unwrap().trim(),
        second,
        "the file management_key reads now holds the new admin key"
    );
    assert!(
        current.expires_at.is_some(),
        "the admin key dies on its own too"
    );
    let issued_with: Vec<String> = fake
        .org()
        .log
        .iter()
        .filter(|(verb, path, _)| verb == "POST" && path == "/v1/organization/admin_api_keys")
        .map(|(_, _, bearer)| bearer.clone())
        .collect();
    assert_eq!(
        issued_with,
        ["sk-admin-first"],
        "issued with the current admin key"
    );

    // The next management call of the other provider uses the new admin key.
    let seen = fake.org().log.len();
    e.engine.rotate(&e.runtimes["app"], "test").await.unwrap();
    let project_calls: Vec<String> = fake.org().log[seen..]
        .iter()
        .filter(|(_, path, _)| path.starts_with("/v1/organization/"))
        .map(|(_, _, bearer)| bearer.clone())
        .collect();
    assert!(!project_calls.is_empty());
    assert!(
        project_calls.iter().all(|bearer| *bearer == second),
        "{project_calls:?}"
    );

    // After grace the old admin key is deleted, with the new one.
    e.clock.advance(GRACE - 1);
    e.engine.revoke_due(&admin_rt).await.unwrap();
    assert!(
        fake.org().admin_keys.contains_key("sk-admin-first"),
        "kept in grace"
    );
    e.clock.advance(1);
    e.engine.revoke_due(&admin_rt).await.unwrap();
    assert!(!fake.org().admin_keys.contains_key("sk-admin-first"));
    let deleted_with: Vec<String> = fake
        .org()
        .log
        .iter()
        .filter(|(verb, path, _)| {
            verb == "DELETE" && path == "/v1/organization/admin_api_keys/key_adm_first"
        })
        .map(|(_, _, bearer)| bearer.clone())
        .collect();
    assert_eq!(deleted_with, [second]);
}

/// A service account per key: orphan accounts, accounts in use, revocation after grace.
mod account_per_key {
    use super::*;
    use keyrotd::rotation::RotationError;
    use keyrotd::store::{AuditStore, Claim, InstallationStore, RotationStore};

    /// Another installation's id, of the shape keyrotd gives installations.
    const OTHER_INSTALLATION: &str = "ba9876543210";
    /// Hand-made accounts listed before keyrotd's, enough to push those to a second page.
    const FILLERS: usize = 120;

    /// The claim of a process that planned a rotation and died: its lease ended at once.
    fn dead_owner() -> Claim {
        Claim {
            owner: "cli:host:1:dead".into(),
            lease_seconds: 0,
            leader: None,
        }
    }

    /// Credential `app`, issued as a service account per key, seeded with the operator's
    /// hand-made account `svc_acct_seed`.
    async fn setup() -> (FakeOpenAi, MockServer, Engined) {
        let (fake, server) = FakeOpenAi::start().await;
        fake.org()
            .admin_keys
            .insert(ADMIN.into(), ("key_adm0".into(), "ops".into()));
        fake.org()
            .add_account("svc_acct_seed", "app (by hand)", "sk-svcacct-seed");
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        std::fs::write(&admin, ADMIN).unwrap();
        let out = dir.path().join("app-key");
        let text = super::app_config(&server.uri(), &admin, &out, "", "");
        let e = engined(
            dir,
            &text,
            &[("app", "sk-svcacct-seed", Some("svc_acct_seed"))],
        )
        .await;
        (fake, server, e)
    }

    fn add_fillers(fake: &FakeOpenAi) {
        for i in 0..FILLERS {
            fake.org().add_account(
                &format!("svc_acct_fill{i:03}"),
                &format!("batch job {i}"),
                &format!("sk-svcacct-fill{i}"),
            );
        }
    }

    fn exists(fake: &FakeOpenAi, id: &str) -> bool {
        fake.org().account(id).is_some()
    }

    fn deletes(fake: &FakeOpenAi) -> Vec<String> {
        fake.org()
            .log
            .iter()
            .filter(|(verb, _, _)| verb == "DELETE")
            .map(|(_, path, _)| path.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    /// The accounts of the versions the store holds as current or previous.
    async fn accounts_in_use(e: &Engined) -> Vec<String> {
        e.store
            .versions("app")
            .await
            .unwrap()
            .into_iter()
            .filter(|v| matches!(v.stage, Stage::Current | Stage::Previous))
            .map(|v| v.provider_key_id.expect("issued with an account id"))
            .collect()
    }

    #[tokio::test]
    async fn the_account_a_killed_rotation_created_is_deleted_and_lookalikes_are_kept() {
        let (fake, _server, e) = setup().await;
        let installation = e.store.installation_id().await.unwrap();
        let rotation = "20270115T080000-dead0001";
        e.store
            .plan_rotation("app", rotation, "cli:dead", &dead_owner(), NOW)
            .await
            .unwrap();
        // Named like the orphan but not this installation's and credential's: never touched.
        let lookalikes = [
            (
                "svc_acct_other_installation",
                format!("keyrotd/{OTHER_INSTALLATION}/app/{rotation}"),
            ),
            (
                "svc_acct_other_credential",
                format!("keyrotd/{installation}/app-eu/{rotation}"),
            ),
            (
                "svc_acct_nested_credential",
                format!("keyrotd/{installation}/team/app/{rotation}"),
            ),
            (
                "svc_acct_suffixed",
                format!("keyrotd/{installation}/app/{rotation}/x"),
            ),
        ];
        fake.org().add_account(
            lookalikes[0].0,
            &lookalikes[0].1,
            "sk-svcacct-other-installation",
        );
        add_fillers(&fake);
        // The process that planned the rotation died after OpenAI created the account and
        // before the store recorded it; on the second page of the listing.
        fake.org().add_account(
            "svc_acct_orphan",
            &format!("keyrotd/{installation}/app/{rotation}"),
            "sk-svcacct-orphan",
        );
        for (id, name) in &lookalikes[1..] {
            fake.org().add_account(id, name, &format!("sk-{id}"));
        }

        let done = e.engine.rotate(&e.runtimes["app"], "test").await.unwrap();
        assert_eq!(
            done.rotation_id, rotation,
            "the dead owner's rotation is finished"
        );

        assert!(
            !exists(&fake, "svc_acct_orphan"),
            "the orphan account is left"
        );
        assert!(
            !fake.org().key_is_live("sk-svcacct-orphan"),
            "its key went with it"
        );
        for (id, name) in &lookalikes {
            assert!(exists(&fake, id), "{name} was deleted");
        }
        assert_eq!(
            deletes(&fake),
            ["svc_acct_orphan"],
            "nothing else is deleted"
        );
        let (new, current) = e.current("app").await;
        let new_account = current.provider_key_id.clone().unwrap();
        assert_ne!(new_account, "svc_acct_orphan");
        assert!(fake.org().key_is_live(&new), "the new key works");
        assert!(
            exists(&fake, "svc_acct_seed"),
            "the previous key stays for its grace"
        );
        assert_eq!(
            fake.org().accounts.len(),
            FILLERS + lookalikes.len() + 2,
            "the fillers, the lookalikes, the seed and the new account"
        );
        let listings = fake.org().account_listings.clone();
        assert_eq!(
            listings,
            ["limit=100", "limit=100&after=svc_acct_fill097"],
            "one sweep, over both pages"
        );
        let events = e.store.events("app").await.unwrap();
        let deleted: Vec<_> = events
            .iter()
            .filter(|ev| ev.kind == "orphan_deleted")
            .collect();
        assert_eq!(deleted.len(), 1, "{events:?}");
        assert!(
            deleted[0].detail.contains("svc_acct_orphan"),
            "{:?}",
            deleted[0]
        );
        // Another installation's account of this credential is reported and left alone;
        // another credential's is that credential's sweep's to judge.
        let unplaced: Vec<_> = events
            .iter()
            .filter(|ev| ev.kind == "orphan_unplaced")
            .collect();
        assert_eq!(unplaced.len(), 1, "{events:?}");
        assert!(
            unplaced[0].detail.contains("svc_acct_other_installation"),
            "{:?}",
            unplaced[0]
        );
    }

    #[tokio::test]
    async fn accounts_in_use_are_kept_and_deleted_with_their_key_after_grace() {
        let (fake, _server, e) = setup().await;
        let rt = e.runtimes["app"].clone();
        e.engine.rotate(&rt, "test").await.unwrap();
        e.clock.advance(60);
        e.engine.rotate(&rt, "test").await.unwrap();
        // Both keyrotd accounts are now in use: one current, one previous in its grace. The
        // previous one's key expired on its own at OpenAI: still the store's, still kept.
        let in_use = accounts_in_use(&e).await;
        assert_eq!(
            in_use.len(),
            3,
            "the seed, the first and the second: {in_use:?}"
        );
        let first_issued = e
            .store
            .versions("app")
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.stage == Stage::Previous && v.rotation_id.is_some())
            .unwrap();
        let first_account = first_issued.provider_key_id.unwrap();
        fake.org()
            .accounts
            .iter_mut()
            .find(|a| a.id == first_account)
            .unwrap()
            .key = None;

        e.clock.advance(60);
        e.engine.rotate(&rt, "test").await.unwrap();
        for id in &in_use {
            assert!(exists(&fake, id), "{id} was in use and is gone");
        }
        assert_eq!(
            deletes(&fake),
            Vec::<String>::new(),
            "the sweep deleted an account in use"
        );
        let listings = fake.org().account_listings.len();
        assert_eq!(listings, 3, "every rotation swept");

        // After grace the old keys go, each with its account.
        e.clock.advance(GRACE);
        e.engine.revoke_due(&rt).await.unwrap();
        let (new, current) = e.current("app").await;
        let left: Vec<String> = fake.org().accounts.iter().map(|a| a.id.clone()).collect();
        assert_eq!(left, [current.provider_key_id.unwrap()]);
        assert!(fake.org().key_is_live(&new));
        let mut deleted = deletes(&fake);
        deleted.sort();
        let mut expected = in_use.clone();
        expected.sort();
        assert_eq!(deleted, expected, "each old account is deleted once");
        let revoked = e
            .store
            .versions("app")
            .await
            .unwrap()
            .into_iter()
            .filter(|v| v.stage == Stage::Revoked)
            .count();
        assert_eq!(revoked, 3);
    }

    #[tokio::test]
    async fn a_listing_that_fails_half_way_deletes_nothing_and_fails_the_issue_as_transient() {
        let (fake, _server, e) = setup().await;
        let installation = e.store.installation_id().await.unwrap();
        let rotation = "20270115T080000-dead0002";
        e.store
            .plan_rotation("app", rotation, "cli:dead", &dead_owner(), NOW)
            .await
            .unwrap();
        // On the first page: classified before the listing fails, and still not deleted.
        fake.org().add_account(
            "svc_acct_orphan",
            &format!("keyrotd/{installation}/app/{rotation}"),
            "sk-svcacct-orphan",
        );
        add_fillers(&fake);
        fake.org().fail_later_account_pages = true;
        let rt = e.runtimes["app"].clone();

        let error = e.engine.rotate(&rt, "test").await.unwrap_err();
        let RotationError::Failed {
            step: "issue",
            reason,
            ..
        } = &error
        else {
            panic!("expected an issue failure, got {error}");
        };
        assert!(
            reason.contains("listing keys for orphans failed") && reason.contains("HTTP 500"),
            "{reason}"
        );
        assert!(!reason.contains(ADMIN), "{reason}");
        assert!(
            exists(&fake, "svc_acct_orphan"),
            "deleted on half a listing"
        );
        assert_eq!(deletes(&fake), Vec::<String>::new());
        let created = fake
            .org()
            .log
            .iter()
            .filter(|(verb, _, _)| verb == "POST")
            .count();
        assert_eq!(created, 0, "nothing is issued before the sweep succeeds");
        let (current, _) = e.current("app").await;
        assert_eq!(current, "sk-svcacct-seed", "the old key stays current");
        let credential = e.store.credential("app").await.unwrap().unwrap();
        assert_eq!(credential.consecutive_failures, 1);

        // OpenAI recovers: the retry sweeps the orphan and rotates.
        fake.org().fail_later_account_pages = false;
        e.clock.advance(3600);
        e.engine.rotate(&rt, "test").await.unwrap();
        assert!(!exists(&fake, "svc_acct_orphan"));
        assert_eq!(deletes(&fake), ["svc_acct_orphan"]);
    }
}
