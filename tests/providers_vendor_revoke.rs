//! Deactivating keys keyrotd did not issue, and Azure's dual-slot rotation, against local
//! servers shaped like the vendors' management APIs: the Anthropic Admin API
//! (`GET/POST /v1/organizations/api_keys`) and Azure Resource Manager
//! (`regenerateKey`/`listKeys`). Ends with the engine driving both end to end.

#[macro_use]
mod providers_support;

use keyrotd::clock::{Clock, ManualClock};
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::providers::{
    build_issuer, build_revoker, CurrentKey, IssueRequest, Issuer, ProviderError,
    ProviderTelemetry, Revoker,
};
use keyrotd::rotation::{self, Engine};
use keyrotd::store::{AuditStore, CredentialStore, KeyStore, NewKey, SqliteStore, Store};
use providers_support::provider_config;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockBuilder, MockServer, ResponseTemplate};

/// The management key / token (a canary: it must never come back in an error).
const ADMIN: &str = "adm-canary-5d1e";
/// An Anthropic key being deactivated (a canary too).
const OLD: &str = "sk-ant-api03-OLDcanary0000000000000000000000-oldA";

fn admin_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{ADMIN}\n")).unwrap();
    file
}

fn fields(toml: &str, server: &MockServer, admin: &tempfile::NamedTempFile) -> String {
    format!(
        "timeout = \"30s\"\nmanagement_key = {{ file = {:?} }}\n{}",
        admin.path().display().to_string(),
        toml.replace("{base}", &server.uri())
    )
}

async fn assert_admin_only_in(server: &MockServer, name: &str, value: &str) {
    let requests = server.received_requests().await.unwrap_or_default();
    assert!(!requests.is_empty());
    for request in requests {
        assert!(!request.url.as_str().contains(ADMIN));
        assert!(!String::from_utf8_lossy(&request.body).contains(ADMIN));
        let carriers: Vec<_> = request
            .headers
            .iter()
            .filter(|(_, v)| v.to_str().unwrap_or_default().contains(ADMIN))
            .collect();
        assert_eq!(carriers.len(), 1, "{:?}", request.url);
        assert_eq!(carriers[0].0.as_str(), name);
        assert_eq!(carriers[0].1.to_str().unwrap(), value);
    }
}

fn assert_clean(err: &ProviderError, secrets: &[&str]) {
    for secret in secrets {
        assert!(!err.to_string().contains(secret), "{err}");
    }
}

mod anthropic {
    use super::*;
    const TOML: &str = "kind = \"anthropic\"\nbase_url = \"{base}/v1\"";
    const KEYS: &str = "/v1/organizations/api_keys";

    fn item(id: &str, hint: &str, status: &str) -> serde_json::Value {
        json!({"id": id, "type": "api_key", "name": id, "partial_key_hint": hint, "status": status,
               "created_at": "2025-01-01T00:00:00Z", "expires_at": null, "workspace_id": null,
               "created_by": {"id": "user_1", "type": "user"}})
    }

    fn revoker(server: &MockServer, admin: &tempfile::NamedTempFile) -> Arc<dyn Revoker> {
        build_revoker(
            &provider_config(&fields(TOML, server, admin)),
            &ProviderTelemetry::new(),
        )
        .expect("revoker builds")
        .expect("anthropic with an admin key has a revoker")
    }

    /// Two pages: the match is on the second, behind `after_id`.
    async fn two_pages(server: &MockServer, second: Vec<serde_json::Value>) {
        Mock::given(method("GET"))
            .and(path(KEYS))
            .and(query_param("after_id", "apikey_2"))
            .and(header("x-api-key", ADMIN))
            .and(header("anthropic-version", "2023-06-01"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": second, "has_more": false, "first_id": "apikey_3", "last_id": "apikey_9"})))
            .mount(server)
            .await;
        Mock::given(method("GET"))
            .and(path(KEYS))
            .and(header("x-api-key", ADMIN))
            .and(header("anthropic-version", "2023-06-01"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "data": [item("apikey_1", "sk-ant-api03-OLD...xxxx", "active"),
                         item("apikey_2", "sk-ant-api03-ABC...oldA", "active")],
                "has_more": true, "first_id": "apikey_1", "last_id": "apikey_2"})))
            .with_priority(10)
            .mount(server)
            .await;
    }

    #[tokio::test]
    async fn finds_the_key_by_its_hint_across_pages_and_deactivates_it() {
        let server = MockServer::start().await;
        two_pages(
            &server,
            vec![
                item("apikey_3", "sk-ant-api03-OLD...oldB", "active"),
                item("apikey_4", "sk-ant-api03-OLD...oldA", "active"),
            ],
        )
        .await;
        Mock::given(method("POST"))
            .and(path(format!("{KEYS}/apikey_4")))
            .and(header("x-api-key", ADMIN))
            .and(header("anthropic-version", "2023-06-01"))
            .and(body_json(json!({"status": "inactive"})))
            .respond_with(ResponseTemplate::new(200).set_body_json(item(
                "apikey_4",
                "sk-ant-api03-OLD...oldA",
                "inactive",
            )))
            .expect(1)
            .mount(&server)
            .await;
        let admin = admin_file();
        revoker(&server, &admin)
            .deactivate(&SecretString::from(OLD), None)
            .await
            .unwrap();
        assert_admin_only_in(&server, "x-api-key", ADMIN).await;
        for request in server.received_requests().await.unwrap() {
            assert!(!request.url.as_str().contains(OLD));
            assert!(!String::from_utf8_lossy(&request.body).contains(OLD));
            for (_, value) in request.headers.iter() {
                assert!(!value.to_str().unwrap_or_default().contains(OLD));
            }
        }
    }

    #[tokio::test]
    async fn an_already_inactive_key_is_left_alone_and_a_known_id_skips_the_listing() {
        let server = MockServer::start().await;
        two_pages(
            &server,
            vec![item("apikey_4", "sk-ant-api03-OLD...oldA", "inactive")],
        )
        .await;
        Mock::given(method("POST"))
            .and(path(format!("{KEYS}/apikey_7")))
            .and(body_json(json!({"status": "inactive"})))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(item("apikey_7", "x...y", "inactive")),
            )
            .expect(1)
            .mount(&server)
            .await;
        let admin = admin_file();
        let revoker = revoker(&server, &admin);
        revoker
            .deactivate(&SecretString::from(OLD), None)
            .await
            .unwrap();
        let lists = server.received_requests().await.unwrap().len();
        revoker
            .deactivate(&SecretString::from(OLD), Some("apikey_7"))
            .await
            .unwrap();
        assert_eq!(server.received_requests().await.unwrap().len(), lists + 1);
    }

    #[tokio::test]
    async fn no_match_or_two_matches_is_refused_without_touching_anything() {
        for (second, expected) in [
            (
                vec![item("apikey_3", "sk-ant-api03-OLD...oldB", "active")],
                "no API key",
            ),
            (
                vec![
                    item("apikey_3", "sk-ant-api03-OLD...oldA", "active"),
                    item("apikey_4", "sk-ant-api03-OL...ldA", "active"),
                ],
                "2 API keys",
            ),
        ] {
            let server = MockServer::start().await;
            two_pages(&server, second).await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(200))
                .expect(0)
                .mount(&server)
                .await;
            let admin = admin_file();
            let err = revoker(&server, &admin)
                .deactivate(&SecretString::from(OLD), None)
                .await
                .unwrap_err();
            assert!(matches!(err, ProviderError::Unidentified(_)), "{err:?}");
            assert!(err.to_string().contains(expected), "{err}");
            assert!(!err.is_transient());
            assert_clean(&err, &[ADMIN, OLD, "OLD...oldA"]);
        }
    }

    #[tokio::test]
    async fn errors_echoing_the_keys_are_sanitised_and_classified() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(KEYS))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({"type": "error",
                "error": {"type": "authentication_error", "message": format!("invalid x-api-key {ADMIN} for {OLD}")}})))
            .mount(&server)
            .await;
        let admin = admin_file();
        let err = revoker(&server, &admin)
            .deactivate(&SecretString::from(OLD), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ProviderError::Rejected { status: 401, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("authentication_error"), "{err}");
        assert_clean(&err, &[ADMIN, OLD]);
    }

    #[test]
    fn without_an_admin_key_there_is_no_revoker() {
        let config = provider_config("kind = \"anthropic\"");
        assert!(build_revoker(&config, &ProviderTelemetry::new())
            .unwrap()
            .is_none());
        assert!(build_issuer(&config, &ProviderTelemetry::new())
            .unwrap()
            .is_none());
    }
}

mod azure {
    use super::*;
    const TOML: &str = "kind = \"azure_openai\"\nbase_url = \"{base}\"\nmanagement_url = \"{base}\"\nsubscription_id = \"sub-1\"\nresource_group = \"rg-1\"\naccount_name = \"acct-1\"";
    pub const ACCOUNT: &str =
        "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.CognitiveServices/accounts/acct-1";

    pub fn keys(key1: &str, key2: &str) -> ResponseTemplate {
        ResponseTemplate::new(200).set_body_json(json!({"key1": key1, "key2": key2}))
    }

    pub fn regenerate(slot: &str) -> MockBuilder {
        Mock::given(method("POST"))
            .and(path(format!("{ACCOUNT}/regenerateKey")))
            .and(query_param("api-version", "2024-10-01"))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
            .and(body_json(json!({ "keyName": slot })))
    }

    pub fn list_keys() -> MockBuilder {
        Mock::given(method("POST"))
            .and(path(format!("{ACCOUNT}/listKeys")))
            .and(query_param("api-version", "2024-10-01"))
            .and(header("authorization", format!("Bearer {ADMIN}").as_str()))
    }

    fn issuer(server: &MockServer, admin: &tempfile::NamedTempFile) -> Arc<dyn Issuer> {
        build_issuer(
            &provider_config(&fields(TOML, server, admin)),
            &ProviderTelemetry::new(),
        )
        .expect("issuer builds")
        .expect("azure with the management plane has an issuer")
    }

    #[tokio::test]
    async fn issue_regenerates_the_slot_not_in_use() {
        let server = MockServer::start().await;
        regenerate("Key1")
            .respond_with(keys("new-in-slot-1", "in-use-2"))
            .expect(1)
            .mount(&server)
            .await;
        regenerate("Key2")
            .respond_with(keys("in-use-1", "new-in-slot-2"))
            .expect(1)
            .mount(&server)
            .await;
        let admin = admin_file();
        let issuer = issuer(&server, &admin);
        let current = SecretString::from("in-use-2");
        let issued = issuer
            .issue(&IssueRequest {
                name: "keyrotd/az/r1",
                replaces: Some(CurrentKey {
                    remote_id: Some("key2"),
                    secret: Some(&current),
                }),
                expires_at: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(issued.secret.expose_secret(), "new-in-slot-1");
        assert_eq!(issued.remote_id, "key1");
        let issued = issuer
            .issue(&IssueRequest {
                name: "keyrotd/az/r2",
                replaces: Some(CurrentKey {
                    remote_id: Some("key1"),
                    secret: None,
                }),
                expires_at: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(issued.secret.expose_secret(), "new-in-slot-2");
        assert_eq!(issued.remote_id, "key2");
        assert_admin_only_in(&server, "authorization", &format!("Bearer {ADMIN}")).await;
    }

    #[tokio::test]
    async fn an_imported_current_key_is_located_with_list_keys() {
        let server = MockServer::start().await;
        list_keys()
            .respond_with(keys("other", "imported-value"))
            .expect(2)
            .mount(&server)
            .await;
        regenerate("Key1")
            .respond_with(keys("fresh-1", "imported-value"))
            .expect(1)
            .mount(&server)
            .await;
        let admin = admin_file();
        let issuer = issuer(&server, &admin);
        let current = SecretString::from("imported-value");
        let issued = issuer
            .issue(&IssueRequest {
                name: "n",
                replaces: Some(CurrentKey {
                    remote_id: None,
                    secret: Some(&current),
                }),
                expires_at: None,
                now: 0,
            })
            .await
            .unwrap();
        assert_eq!(
            (issued.secret.expose_secret(), issued.remote_id.as_str()),
            ("fresh-1", "key1")
        );
        // Neither slot holds the key, or no current key at all: refused, nothing regenerated.
        let stranger = SecretString::from("not-in-any-slot");
        let err = issuer
            .issue(&IssueRequest {
                name: "n",
                replaces: Some(CurrentKey {
                    remote_id: None,
                    secret: Some(&stranger),
                }),
                expires_at: None,
                now: 0,
            })
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ProviderError::Unidentified(_)), "{err:?}");
        let err = issuer.issue(&IssueRequest::named("n")).await.err().unwrap();
        assert!(matches!(err, ProviderError::Unidentified(_)), "{err:?}");
        assert!(issuer.list("keyrotd/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn revoke_regenerates_the_given_slot_and_deactivate_only_a_live_value() {
        let server = MockServer::start().await;
        regenerate("Key2")
            .respond_with(keys("a", "b"))
            .expect(2)
            .mount(&server)
            .await;
        list_keys()
            .respond_with(keys("current-1", "old-2"))
            .expect(2)
            .mount(&server)
            .await;
        let admin = admin_file();
        let issuer = issuer(&server, &admin);
        issuer.revoke("key2").await.unwrap();
        let err = issuer.revoke("key3").await.unwrap_err();
        assert!(matches!(err, ProviderError::Unidentified(_)), "{err:?}");
        let revoker = build_revoker(
            &provider_config(&fields(TOML, &server, &admin)),
            &ProviderTelemetry::new(),
        )
        .unwrap()
        .unwrap();
        // Still in slot 2: regenerated. Gone from both slots already: nothing to do.
        revoker
            .deactivate(&SecretString::from("old-2"), Some("key2"))
            .await
            .unwrap();
        revoker
            .deactivate(&SecretString::from("long-gone"), Some("key1"))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn arm_errors_are_classified_and_sanitised() {
        let canary = "azure-canary-key-31f0";
        for (status, transient) in [
            (401, false),
            (403, false),
            (429, true),
            (500, true),
            (503, true),
        ] {
            let server = MockServer::start().await;
            let mut response = ResponseTemplate::new(status).set_body_json(json!({"error": {
                "code": "AuthorizationFailed",
                "message": format!("The client with token {ADMIN} cannot act on key {canary}")}}));
            if status == 429 {
                response = response.insert_header("retry-after", "17");
            }
            Mock::given(method("POST"))
                .respond_with(response)
                .mount(&server)
                .await;
            let admin = admin_file();
            let issuer = issuer(&server, &admin);
            let err = issuer.revoke("key1").await.unwrap_err();
            match &err {
                ProviderError::Rejected {
                    status: s,
                    detail,
                    retry_after,
                } => {
                    assert_eq!(*s, status);
                    assert!(detail.contains("AuthorizationFailed"), "{detail}");
                    if status == 429 {
                        assert_eq!(retry_after.map(|d| d.as_secs()), Some(17));
                    }
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(err.is_transient(), transient, "{status}");
            assert_clean(&err, &[ADMIN]);
            // Through listKeys the key being deactivated is masked too.
            let revoker = build_revoker(
                &provider_config(&fields(TOML, &server, &admin)),
                &ProviderTelemetry::new(),
            )
            .unwrap()
            .unwrap();
            let err = revoker
                .deactivate(&SecretString::from(canary), None)
                .await
                .unwrap_err();
            assert_clean(&err, &[ADMIN, canary]);
        }
    }

    #[test]
    fn the_management_plane_is_optional_but_complete() {
        let config =
            provider_config("kind = \"azure_openai\"\nbase_url = \"https://r.openai.azure.com\"");
        assert!(build_issuer(&config, &ProviderTelemetry::new())
            .unwrap()
            .is_none());
        let err = Config::parse(
            Path::new("t.toml"),
            "[[provider]]\nname = \"a\"\nkind = \"azure_openai\"\nbase_url = \"https://r\"\nsubscription_id = \"s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("go together"), "{err}");
        let err = Config::parse(
            Path::new("t.toml"),
            "[[provider]]\nname = \"a\"\nkind = \"azure_openai\"\nbase_url = \"https://r\"\nsubscription_id = \"s\"\nresource_group = \"g\"\naccount_name = \"n\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("management_key"), "{err}");
        let err = Config::parse(
            Path::new("t.toml"),
            "[[provider]]\nname = \"o\"\nkind = \"openai\"\naccount_name = \"n\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("only applies to kind azure_openai"), "{err}");
    }
}

/// The engine over a real store, with providers parsed from TOML pointing at the mocks.
mod engine {
    use super::*;

    const START: i64 = 1_750_000_000;

    struct Setup {
        _dir: tempfile::TempDir,
        _admin: tempfile::NamedTempFile,
        store: Arc<SqliteStore>,
        clock: ManualClock,
        engine: Engine,
        runtime: Arc<rotation::CredentialRuntime>,
    }

    async fn setup(provider: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let admin = admin_file();
        let text = format!(
            "[[provider]]\nname = \"p\"\ntimeout = \"30s\"\nmanagement_key = {{ file = {:?} }}\n{provider}\n\n[[credential]]\nname = \"c\"\nprovider = \"p\"\nrotation = {{ grace = \"1h\" }}\n",
            admin.path().display().to_string()
        );
        let config = Config::parse(Path::new("t.toml"), &text).unwrap();
        let sealer = Arc::new(Sealer::new(&MasterKey::generate()));
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("k.db"), Some(sealer))
                .await
                .unwrap(),
        );
        store
            .sync_credentials(&keyrotd::store::credential_specs(&config), START)
            .await
            .unwrap();
        let clock = ManualClock::new(START);
        let engine = Engine::new(store.clone() as Arc<dyn Store>, Arc::new(clock.clone()));
        let runtime = rotation::build_runtimes(&config, &ProviderTelemetry::new())
            .unwrap()
            .remove("c")
            .unwrap();
        Setup {
            _dir: dir,
            _admin: admin,
            store,
            clock,
            engine,
            runtime,
        }
    }

    async fn import(s: &Setup, key: &str) {
        s.store
            .import_key(
                "c",
                NewKey {
                    secret: SecretString::from(key),
                    expires_at: None,
                    provider_key_id: None,
                    rotation_id: None,
                },
                "test",
                s.clock.now(),
            )
            .await
            .unwrap();
    }

    fn models_accepting(header_name: &str, key: &str, at: &str) -> Mock {
        Mock::given(method("GET"))
            .and(path(at))
            .and(header(header_name, key))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"data": [], "object": "list"})),
            )
    }

    #[tokio::test]
    async fn azure_rotates_key1_to_key2_then_regenerates_key1_after_the_grace_period() {
        use super::azure::{keys, list_keys, regenerate};
        let server = MockServer::start().await;
        let toml = format!(
            "kind = \"azure_openai\"\nbase_url = \"{0}\"\nmanagement_url = \"{0}\"\nsubscription_id = \"sub-1\"\nresource_group = \"rg-1\"\naccount_name = \"acct-1\"",
            server.uri()
        );
        let s = setup(&toml).await;
        import(&s, "az-key1-original").await;
        // Before the rotation key2 holds an unused value; afterwards the new one.
        list_keys()
            .respond_with(keys("az-key1-original", "az-key2-unused"))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        list_keys()
            .respond_with(keys("az-key1-original", "az-key2-new"))
            .with_priority(2)
            .mount(&server)
            .await;
        regenerate("Key2")
            .respond_with(keys("az-key1-original", "az-key2-new"))
            .expect(1)
            .mount(&server)
            .await;
        regenerate("Key1")
            .respond_with(keys("az-key1-discarded", "az-key2-new"))
            .expect(1)
            .mount(&server)
            .await;
        models_accepting("api-key", "az-key2-new", "/openai/models")
            .expect(1..)
            .mount(&server)
            .await;

        let rotated = s.engine.rotate(&s.runtime, "test").await.unwrap();
        let versions = s.store.versions("c").await.unwrap();
        let current = versions.iter().find(|v| v.stage == Stage::Current).unwrap();
        assert_eq!(current.id, rotated.version_id);
        assert_eq!(current.provider_key_id.as_deref(), Some("key2"));
        assert_eq!(
            s.store.secret(current.id).await.unwrap().expose_secret(),
            "az-key2-new"
        );
        let previous = versions
            .iter()
            .find(|v| v.stage == Stage::Previous)
            .unwrap();
        let regenerations = |requests: &[wiremock::Request], slot: &str| {
            requests
                .iter()
                .filter(|r| {
                    r.url.path().ends_with("/regenerateKey")
                        && String::from_utf8_lossy(&r.body).contains(slot)
                })
                .count()
        };
        let requests = server.received_requests().await.unwrap();
        assert_eq!(regenerations(&requests, "Key1"), 0, "key1 is in use");

        // Inside the grace period nothing happens; after it, key1 is regenerated.
        s.clock.advance(1800);
        s.engine.revoke_due(&s.runtime).await.unwrap();
        let requests = server.received_requests().await.unwrap();
        assert_eq!(regenerations(&requests, "Key1"), 0);
        s.clock.advance(1801);
        s.engine.revoke_due(&s.runtime).await.unwrap();
        let requests = server.received_requests().await.unwrap();
        assert_eq!(regenerations(&requests, "Key1"), 1);
        let old = s
            .store
            .versions("c")
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.id == previous.id)
            .unwrap();
        assert_eq!(old.stage, Stage::Revoked);
        assert!(!old.has_secret);
        // The token goes to the management plane only, in `Authorization`; the data-plane
        // check carries the account key in `api-key` and no token.
        for request in server.received_requests().await.unwrap() {
            let management = request.url.path().starts_with("/subscriptions/");
            let auth = request
                .headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(
                auth,
                management.then(|| format!("Bearer {ADMIN}")),
                "{}",
                request.url
            );
            assert!(!request.url.as_str().contains(ADMIN));
            assert!(!String::from_utf8_lossy(&request.body).contains(ADMIN));
            assert_eq!(request.headers.get("api-key").is_some(), !management);
        }
    }

    #[tokio::test]
    async fn anthropic_operator_rotation_deactivates_the_old_key_after_grace() {
        let server = MockServer::start().await;
        let s = setup(&format!(
            "kind = \"anthropic\"\nbase_url = \"{}/v1\"",
            server.uri()
        ))
        .await;
        let new = "sk-ant-api03-NEWcanary1111111111111111111111-newZ";
        import(&s, OLD).await;
        import(&s, new).await;
        models_accepting("x-api-key", new, "/v1/models")
            .expect(1..)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/organizations/api_keys"))
            .and(header("x-api-key", ADMIN))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
                {"id": "apikey_old", "partial_key_hint": "sk-ant-api03-OLD...oldA", "status": "active"},
                {"id": "apikey_new", "partial_key_hint": "sk-ant-api03-NEW...newZ", "status": "active"}],
                "has_more": false, "first_id": "apikey_old", "last_id": "apikey_new"})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/organizations/api_keys/apikey_old"))
            .and(header("x-api-key", ADMIN))
            .and(body_json(json!({"status": "inactive"})))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"id": "apikey_old", "status": "inactive"})),
            )
            .expect(1)
            .mount(&server)
            .await;

        assert!(s.runtime.issuer.is_none());
        assert!(s.runtime.revoker.is_some());
        let rotated = s.engine.rotate(&s.runtime, "test").await.unwrap();
        let versions = s.store.versions("c").await.unwrap();
        let current = versions.iter().find(|v| v.stage == Stage::Current).unwrap();
        assert_eq!(current.id, rotated.version_id);
        let previous = versions
            .iter()
            .find(|v| v.stage == Stage::Previous)
            .unwrap();

        s.engine.revoke_due(&s.runtime).await.unwrap();
        assert!(
            !server
                .received_requests()
                .await
                .unwrap()
                .iter()
                .any(|r| r.url.path().starts_with("/v1/organizations")),
            "nothing is deactivated inside the grace period"
        );
        s.clock.advance(3601);
        s.engine.revoke_due(&s.runtime).await.unwrap();
        let old = s
            .store
            .versions("c")
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.id == previous.id)
            .unwrap();
        assert_eq!(old.stage, Stage::Revoked);
        assert!(!old.has_secret);
        let events = s.store.events("c").await.unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.detail.contains("deactivated at the provider")),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_deactivation_leaves_the_previous_key_for_a_retry() {
        let server = MockServer::start().await;
        let s = setup(&format!(
            "kind = \"anthropic\"\nbase_url = \"{}/v1\"",
            server.uri()
        ))
        .await;
        let new = "sk-ant-api03-NEWcanary1111111111111111111111-newZ";
        import(&s, OLD).await;
        import(&s, new).await;
        models_accepting("x-api-key", new, "/v1/models")
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/organizations/api_keys"))
            .respond_with(ResponseTemplate::new(503).set_body_string("busy"))
            .mount(&server)
            .await;
        s.engine.rotate(&s.runtime, "test").await.unwrap();
        s.clock.advance(3601);
        let next = s.engine.revoke_due(&s.runtime).await.unwrap();
        assert!(next.is_some(), "a retry is scheduled");
        let previous = s
            .store
            .versions("c")
            .await
            .unwrap()
            .into_iter()
            .find(|v| v.stage == Stage::Previous)
            .expect("still previous");
        assert!(previous.has_secret);
    }
}
