//! Gemini keys issued through Google Cloud's API Keys v2 API, against a local fake that
//! answers as Google documents (`google_fake`): the long-running create operation (done,
//! ending in `error`, never done), restrictions copied from the replaced key, display names
//! within Google's 63 characters, paged listing, deletion, Google's error shapes, and the
//! OAuth token read from its file at every call. Ends with the engine rotating a key.

#[macro_use]
mod providers_support;
mod google_fake;

use google_fake::{Fake, PROJECT_NUMBER};
use keyrotd::clock::{Clock, ManualClock};
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::providers::{
    build_issuer, revokes_keys, CurrentKey, IssueRequest, Issuer, ProviderError, ProviderTelemetry,
};
use keyrotd::rotation::{self, Engine};
use keyrotd::store::{CredentialStore, KeyStore, NewKey, SqliteStore, Store};
use providers_support::provider_config;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The OAuth access token (a canary: it must never come back in an error).
const TOKEN: &str = "ya29.tok-canary-4b7e";
const INSTALLATION: &str = "0123456789ab";

fn token_file(token: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{token}\n")).unwrap();
    file
}

/// The `[[provider]]` fields of a gemini provider issuing through `server`.
fn fields(server: &MockServer, token: &tempfile::NamedTempFile, extra: &str) -> String {
    format!(
        "kind = \"gemini\"\nbase_url = \"{uri}/v1beta\"\ntimeout = \"30s\"\n[provider.google]\nproject = \"my-project\"\ntoken = {{ file = {file:?} }}\napi_keys_url = \"{uri}\"\n{extra}",
        uri = server.uri(),
        file = token.path().display().to_string(),
    )
}

struct Rig {
    server: MockServer,
    fake: Fake,
    token: tempfile::NamedTempFile,
}

impl Rig {
    async fn new() -> Rig {
        let server = MockServer::start().await;
        let fake = Fake::new(TOKEN);
        google_fake::mount(&fake, &server).await;
        Rig {
            server,
            fake,
            token: token_file(TOKEN),
        }
    }

    fn issuer(&self, extra: &str) -> Arc<dyn Issuer> {
        let config = provider_config(&fields(&self.server, &self.token, extra));
        build_issuer(&config, &ProviderTelemetry::new())
            .expect("issuer builds")
            .expect("a gemini provider with [provider.google] issues")
    }

    /// Every request carried the token in `Authorization` only, as a bearer token.
    async fn assert_token_only_in_authorization(&self) {
        let requests = self.server.received_requests().await.unwrap();
        assert!(!requests.is_empty());
        for request in requests {
            assert!(!request.url.as_str().contains(TOKEN));
            assert!(!String::from_utf8_lossy(&request.body).contains(TOKEN));
            for (name, value) in request.headers.iter() {
                if value.to_str().unwrap_or_default().contains(TOKEN) {
                    assert_eq!(name.as_str(), "authorization");
                    assert_eq!(value.to_str().unwrap(), format!("Bearer {TOKEN}"));
                }
            }
        }
    }

    async fn creates(&self) -> Vec<serde_json::Value> {
        self.server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.method.as_str() == "POST")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }

    async fn operation_polls(&self) -> usize {
        self.server
            .received_requests()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.url.path().starts_with("/v2/operations/"))
            .count()
    }
}

fn name(credential: &str) -> String {
    format!("keyrotd/{INSTALLATION}/{credential}/20261130T042418-abcdef12")
}

fn assert_no_token(err: &ProviderError) {
    assert!(!err.to_string().contains(TOKEN), "{err}");
}

#[tokio::test]
async fn issue_copies_the_replaced_keys_restrictions_and_waits_for_the_operation() {
    let rig = Rig::new().await;
    let restrictions = json!({
        "serverKeyRestrictions": {"allowedIps": ["203.0.113.7", "2001:db8::/32"]},
        "apiTargets": [{"service": "generativelanguage.googleapis.com",
                        "methods": ["google.ai.generativelanguage.v1beta.GenerativeService.GenerateContent"]}]
    });
    let old = rig.fake.add_key(
        "by hand",
        "AIzaSyOldKeyxxxxxxxxxxxxxxxxxxxxxxxxxx",
        restrictions.clone(),
    );
    rig.fake.polls_until_done(3);
    let issuer = rig.issuer("");
    let name = name("gemini");
    let key = issuer
        .issue(&IssueRequest {
            name: &name,
            replaces: Some(CurrentKey {
                remote_id: Some(&old),
                secret: None,
            }),
            // The API has no expiry: the request's is ignored, none is reported.
            expires_at: Some(2_000_000_000),
            now: 1_900_000_000,
        })
        .await
        .unwrap();
    assert_eq!(key.expires_at, None);
    let created = rig.fake.live_keys().pop().unwrap();
    assert_eq!(key.remote_id, created.name);
    assert!(key
        .remote_id
        .starts_with(&format!("projects/{PROJECT_NUMBER}/locations/global/keys/")));
    assert_eq!(key.secret.expose_secret(), created.key_string);
    assert_eq!(
        created.restrictions, restrictions,
        "the successor is as restricted"
    );
    assert_eq!(created.display_name, name);
    assert_eq!(created.annotations, json!({"keyrotd-name": name}));
    assert_eq!(
        rig.operation_polls().await,
        3,
        "polled until done, not beyond"
    );
    rig.assert_token_only_in_authorization().await;
}

#[tokio::test]
async fn without_a_replaced_key_the_new_key_is_limited_to_the_gemini_api() {
    let rig = Rig::new().await;
    // keyString is read separately when the operation's Key leaves it out.
    rig.fake.omit_key_string(true);
    let issuer = rig.issuer("");
    let key = issuer
        .issue(&IssueRequest::named(&name("g")))
        .await
        .unwrap();
    let created = rig.fake.live_keys().pop().unwrap();
    assert_eq!(key.secret.expose_secret(), created.key_string);
    assert_eq!(
        created.restrictions,
        json!({"apiTargets": [{"service": "generativelanguage.googleapis.com"}]})
    );
    // An old key restricted by IP only keeps that and gains the API target.
    let old = rig.fake.add_key(
        "ip only",
        "AIzaSyIpOnlyxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        json!({"serverKeyRestrictions": {"allowedIps": ["198.51.100.1"]}}),
    );
    issuer
        .issue(&IssueRequest {
            name: &name("g2"),
            replaces: Some(CurrentKey {
                remote_id: Some(&old),
                secret: None,
            }),
            expires_at: None,
            now: 1_900_000_000,
        })
        .await
        .unwrap();
    let created = rig.fake.live_keys().pop().unwrap();
    assert_eq!(
        created.restrictions,
        json!({"serverKeyRestrictions": {"allowedIps": ["198.51.100.1"]},
               "apiTargets": [{"service": "generativelanguage.googleapis.com"}]})
    );
    let requests = rig.server.received_requests().await.unwrap();
    assert!(requests
        .iter()
        .any(|r| r.url.path().ends_with("/keyString")));
}

#[tokio::test]
async fn a_long_name_gets_a_short_display_name_and_is_listed_by_its_whole_name() {
    let rig = Rig::new().await;
    rig.fake.page_size(1);
    rig.fake.add_key(
        "someone's key",
        "AIzaSyHandxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        json!({}),
    );
    let issuer = rig.issuer("");
    let long = name(&"gemini-production-frontend-".repeat(2));
    let short = name("short");
    let long_key = issuer.issue(&IssueRequest::named(&long)).await.unwrap();
    let short_key = issuer.issue(&IssueRequest::named(&short)).await.unwrap();
    let created: Vec<_> = rig.fake.live_keys();
    let long_display = &created
        .iter()
        .find(|k| k.name == long_key.remote_id)
        .unwrap()
        .display_name;
    assert!(long_display.chars().count() <= 63, "{long_display}");
    assert!(long_display.starts_with(&format!("keyrotd/{INSTALLATION}/")));
    assert!(long_display.ends_with("/20261130T042418-abcdef12"));

    // Three pages of one key each; the hand-made key is not keyrotd's.
    let listed = issuer.list("keyrotd/").await.unwrap();
    let mut got: Vec<_> = listed
        .iter()
        .map(|k| (k.remote_id.clone(), k.name.clone()))
        .collect();
    got.sort();
    let mut want = vec![
        (long_key.remote_id.clone(), long),
        (short_key.remote_id.clone(), short),
    ];
    want.sort();
    assert_eq!(got, want);
    let pages = rig
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "GET" && r.url.path().ends_with("/locations/global/keys"))
        .count();
    assert_eq!(pages, 3);

    // Revoked keys are deleted (soft) and no longer listed; a second revoke is a no-op.
    issuer.revoke(&long_key.remote_id).await.unwrap();
    issuer.revoke(&long_key.remote_id).await.unwrap();
    assert!(
        rig.fake
            .keys()
            .iter()
            .find(|k| k.name == long_key.remote_id)
            .unwrap()
            .deleted
    );
    let listed = issuer.list("keyrotd/").await.unwrap();
    assert_eq!(listed.len(), 1);
    rig.assert_token_only_in_authorization().await;
}

#[tokio::test]
async fn an_operation_that_ends_in_error_is_a_classified_failure() {
    let rig = Rig::new().await;
    let issuer = rig.issuer("");
    rig.fake
        .fail_next_create(8, &format!("Quota exceeded for project; token {TOKEN}"));
    let err = issuer
        .issue(&IssueRequest::named(&name("g")))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::Rejected { status: 429, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("RESOURCE_EXHAUSTED"), "{err}");
    rig.fake
        .fail_next_create(7, "Permission 'apikeys.keys.create' denied");
    let err = issuer
        .issue(&IssueRequest::named(&name("g")))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ProviderError::Rejected { status: 403, .. }),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(err.to_string().contains("PERMISSION_DENIED"), "{err}");
    assert!(rig.fake.live_keys().is_empty(), "no key was made");
}

#[tokio::test]
async fn an_operation_that_never_finishes_is_a_transient_timeout_and_its_key_is_found_later() {
    let rig = Rig::new().await;
    rig.fake.hold(true);
    let issuer = rig.issuer("operation_timeout = \"2s\"");
    let started = Instant::now();
    let err = issuer
        .issue(&IssueRequest::named(&name("g")))
        .await
        .err()
        .unwrap();
    let took = started.elapsed();
    assert!(
        matches!(err, ProviderError::Timeout(d) if d == Duration::from_secs(2)),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(took >= Duration::from_secs(2), "gave up early: {took:?}");
    // Polled with growing pauses (0.25, 0.5, 1 s … within 2 s), not in a tight loop.
    let polls = rig.operation_polls().await;
    assert!((2..=4).contains(&polls), "{polls} polls");
    // The key the operation is making is found by its name by the next sweep.
    let listed = issuer.list("keyrotd/").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, name("g"));
}

#[tokio::test]
async fn google_errors_are_classified_and_never_carry_the_token() {
    let server = MockServer::start().await;
    let token = token_file(TOKEN);
    let config = provider_config(&fields(&server, &token, ""));
    let issuer = build_issuer(&config, &ProviderTelemetry::new())
        .unwrap()
        .unwrap();
    let error = |status: u16, name: &str| {
        ResponseTemplate::new(status).set_body_json(json!({"error": {
            "code": status, "message": format!("{name}: caller with token {TOKEN} refused"),
            "status": name, "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": name}]}}))
    };
    for (status, name, transient) in [
        (401, "UNAUTHENTICATED", false),
        (403, "PERMISSION_DENIED", false),
        (429, "RESOURCE_EXHAUSTED", true),
        (503, "UNAVAILABLE", true),
    ] {
        server.reset().await;
        Mock::given(method("POST"))
            .and(path("/v2/projects/my-project/locations/global/keys"))
            .respond_with(error(status, name))
            .mount(&server)
            .await;
        let err = issuer
            .issue(&IssueRequest::named("keyrotd/x/g/r"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ProviderError::Rejected { status: s, .. } if s == status),
            "{err:?}"
        );
        assert_eq!(err.is_transient(), transient, "{err}");
        assert!(err.to_string().contains(name), "{err}");
        assert_no_token(&err);
    }
    // A success status without an operation is malformed, not a panic.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>proxy</html>"))
        .mount(&server)
        .await;
    let err = issuer
        .issue(&IssueRequest::named("keyrotd/x/g/r"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn the_token_is_read_again_at_every_call() {
    let rig = Rig::new().await;
    let issuer = rig.issuer("");
    std::fs::write(rig.token.path(), "ya29.expired\n").unwrap();
    let err = issuer.list("keyrotd/").await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("UNAUTHENTICATED"), "{err}");
    // The refresher writes a new token: the next call works without a restart.
    std::fs::write(rig.token.path(), format!("{TOKEN}\n")).unwrap();
    issuer.list("keyrotd/").await.unwrap();
    std::fs::remove_file(rig.token.path()).unwrap();
    let err = issuer.list("keyrotd/").await.err().unwrap();
    assert!(matches!(err, ProviderError::Config(_)), "{err:?}");
}

#[tokio::test]
async fn a_delete_refused_for_a_key_deleted_already_counts_as_done() {
    let server = MockServer::start().await;
    let token = token_file(TOKEN);
    let issuer = build_issuer(
        &provider_config(&fields(&server, &token, "")),
        &ProviderTelemetry::new(),
    )
    .unwrap()
    .unwrap();
    let key = "projects/1/locations/global/keys/k1";
    Mock::given(method("DELETE"))
        .and(path(format!("/v2/{key}")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "code": 400, "message": "Key is already deleted", "status": "FAILED_PRECONDITION"}})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/v2/{key}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "name": key, "displayName": "x", "deleteTime": "2026-11-30T05:00:00Z"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    issuer.revoke(key).await.unwrap();
    // Not deleted after all: the refusal stands.
    Mock::given(method("GET"))
        .and(path(format!("/v2/{key}")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"name": key, "displayName": "x"})),
        )
        .mount(&server)
        .await;
    let err = issuer.revoke(key).await.err().unwrap();
    assert!(
        matches!(err, ProviderError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    // A remote id that is no key name is refused before any request.
    let err = issuer.revoke("key1").await.err().unwrap();
    assert!(matches!(err, ProviderError::Unidentified(_)), "{err:?}");
}

#[test]
fn provider_google_is_checked_with_positions() {
    let parse = |text: &str| {
        Config::parse(Path::new("t.toml"), text)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    // Without [provider.google] a gemini provider is check-only, as before.
    let check_only = provider_config("kind = \"gemini\"");
    assert!(build_issuer(&check_only, &ProviderTelemetry::new())
        .unwrap()
        .is_none());
    assert!(!revokes_keys(&check_only));
    let issuing = provider_config(
        "kind = \"gemini\"\n[provider.google]\nproject = \"my-project\"\ntoken = { file = \"/run/token\" }",
    );
    assert!(revokes_keys(&issuing));

    let err = parse("[[provider]]\nname = \"o\"\nkind = \"openai\"\n[provider.google]\nproject = \"p-1\"\ntoken = { file = \"/t\" }\n")
        .unwrap_err();
    assert!(
        err.contains("t.toml:5:11: `[provider.google]` only applies to kind gemini"),
        "{err}"
    );
    let err = parse("[[provider]]\nname = \"g\"\nkind = \"gemini\"\n[provider.google]\nproject = \"My Project\"\ntoken = { file = \"/t\", env = \"T\" }\napi_keys_url = \"ftp://x\"\noperation_timeout = \"0s\"\n")
        .unwrap_err();
    assert!(
        err.contains("t.toml:5:11: [provider.google] `project` must be"),
        "{err}"
    );
    assert!(
        err.contains(
            "t.toml:6:9: [provider.google] `token`: secret reference must set exactly one"
        ),
        "{err}"
    );
    assert!(
        err.contains("t.toml:7:16: [provider.google] `api_keys_url` must start with"),
        "{err}"
    );
    assert!(
        err.contains("t.toml:8:21: [provider.google] `operation_timeout` must be longer"),
        "{err}"
    );
    let err = parse(
        "[[provider]]\nname = \"g\"\nkind = \"gemini\"\n[provider.google]\nproject = \"p-1\"\n",
    )
    .unwrap_err();
    assert!(err.contains("token"), "{err}");
}

/// The engine over a real store rotates a Gemini key through the fake.
#[tokio::test]
async fn a_rotation_carries_the_restrictions_over_and_deletes_the_old_key_after_grace() {
    const START: i64 = 1_750_000_000;
    let rig = Rig::new().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[[provider]]\nname = \"p\"\n{}\n\n[[credential]]\nname = \"gemini-production-frontend-europe\"\nprovider = \"p\"\nrotation = {{ grace = \"1h\" }}\n",
        fields(&rig.server, &rig.token, "")
    );
    let config = Config::parse(Path::new("t.toml"), &text).unwrap();
    let store = Arc::new(
        SqliteStore::open(
            &dir.path().join("k.db"),
            Some(Arc::new(Sealer::new(&MasterKey::generate()))),
        )
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
        .remove("gemini-production-frontend-europe")
        .unwrap();
    let restrictions = json!({
        "browserKeyRestrictions": {"allowedReferrers": ["https://app.example.com/*"]},
        "apiTargets": [{"service": "generativelanguage.googleapis.com"}]
    });
    let old_string = "AIzaSySeedxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    let old = rig
        .fake
        .add_key("frontend", old_string, restrictions.clone());
    store
        .import_key(
            "gemini-production-frontend-europe",
            NewKey {
                secret: SecretString::from(old_string),
                expires_at: None,
                provider_key_id: Some(old.clone()),
                rotation_id: None,
            },
            "test",
            clock.now(),
        )
        .await
        .unwrap();

    let rotated = engine.rotate(&runtime, "test").await.unwrap();
    let versions = store
        .versions("gemini-production-frontend-europe")
        .await
        .unwrap();
    let current = versions.iter().find(|v| v.stage == Stage::Current).unwrap();
    assert_eq!(current.id, rotated.version_id);
    let new_id = current.provider_key_id.clone().unwrap();
    let new = rig
        .fake
        .keys()
        .into_iter()
        .find(|k| k.name == new_id)
        .unwrap();
    assert_eq!(
        store.secret(current.id).await.unwrap().expose_secret(),
        new.key_string
    );
    assert_eq!(
        new.restrictions, restrictions,
        "the successor is as restricted as the old key"
    );
    assert!(new.display_name.chars().count() <= 63);
    // The new key was verified at the Gemini API before it was made current.
    let models = rig.server.received_requests().await.unwrap();
    assert!(models.iter().any(|r| r.url.path() == "/v1beta/models"
        && r.headers.get("x-goog-api-key").map(|v| v.to_str().unwrap())
            == Some(new.key_string.as_str())));
    assert_eq!(rig.creates().await.len(), 1);

    // The old key lives through the grace period, then is deleted at Google.
    clock.advance(1800);
    engine.revoke_due(&runtime).await.unwrap();
    assert!(rig.fake.is_live(old_string));
    clock.advance(1801);
    engine.revoke_due(&runtime).await.unwrap();
    assert!(!rig.fake.is_live(old_string));
    assert!(rig.fake.is_live(&new.key_string));
    rig.assert_token_only_in_authorization().await;
}
