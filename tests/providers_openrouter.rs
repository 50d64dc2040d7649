//! OpenRouter's key API as issue 19 asks keyrotd to use it: a provider-side `expires_at` on
//! every issued key, the replaced key's spending cap (`limit`, `limit_reset`,
//! `include_byok_in_limit`) copied onto its successor, `workspace_id`, and the vendor's error
//! shape `{error:{code,message,metadata}}`.
//!
//! The adapter tests pin each request's exact JSON; the engine tests run whole rotations
//! against a stateful fake OpenRouter (a wiremock server with a key book behind it); the
//! real daemon exports a key's limit left and its spend per period from one check.

mod common;
#[macro_use]
mod providers_support;

use keyrotd::clock::{Clock, ManualClock};
use keyrotd::config::Config;
use keyrotd::crypto::{MasterKey, Sealer};
use keyrotd::model::Stage;
use keyrotd::providers::{
    build_issuer, CurrentKey, IssueRequest, Issuer, ProviderError, ProviderTelemetry,
};
use keyrotd::rotation::{self, CredentialRuntime, Engine};
use keyrotd::store::{CredentialStore, KeyStore, NewKey, SqliteStore, Store};
use providers_support::provider_config;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The management key (a canary: it must never come back in an error).
const ADMIN: &str = "or-mgmt-canary-5d1e";
/// 2027-01-15T08:00:00Z.
const JAN_15_2027: i64 = 1_800_000_000;

const TOML: &str = "kind = \"openrouter\"\nbase_url = \"{base}/api/v1\"";

fn issuer(server: &MockServer, extra: &str) -> Arc<dyn Issuer> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{ADMIN}\n")).unwrap();
    let config = provider_config(&format!(
        "timeout = \"30s\"\nmanagement_key = {{ file = {:?} }}\n{}\n{extra}",
        file.path().display().to_string(),
        TOML.replace("{base}", &server.uri()),
    ));
    build_issuer(&config, &ProviderTelemetry::new())
        .expect("issuer builds")
        .expect("openrouter has an issuer")
}

fn created(hash: &str, extra: Value) -> ResponseTemplate {
    let mut data = json!({"hash": hash, "name": "n", "label": "sk-or-v1-abc...xyz",
        "disabled": false, "limit": null, "created_at": "2026-11-30T00:00:00Z"});
    data.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ResponseTemplate::new(201).set_body_json(json!({"data": data, "key": "sk-or-v1-new-secret"}))
}

fn replacing(hash: &str) -> Option<CurrentKey<'_>> {
    Some(CurrentKey {
        remote_id: Some(hash),
        secret: None,
    })
}

mod adapter {
    use super::*;

    /// The successor is created with the replaced key's cap and the expiry keyrotd asks for,
    /// in the documented shapes: `limit_reset` one of daily/weekly/monthly, `expires_at`
    /// ISO-8601 in UTC with a `Z`.
    #[tokio::test]
    async fn a_create_carries_the_replaced_cap_and_an_iso_utc_expiry() {
        let server = MockServer::start().await;
        let auth = format!("Bearer {ADMIN}");
        Mock::given(method("GET"))
            .and(path("/api/v1/keys/h-old"))
            .and(header("authorization", auth.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": {
                "hash": "h-old", "name": "app", "label": "sk-or-v1-0e6...1c9", "disabled": false,
                "limit": 25, "limit_remaining": 20.5, "limit_reset": "weekly",
                "include_byok_in_limit": true, "usage": 4.5, "usage_daily": 0.5,
                "usage_weekly": 4.5, "usage_monthly": 4.5, "created_at": "2026-01-01T00:00:00Z",
                "updated_at": null, "expires_at": null, "workspace_id": null}})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .and(header("authorization", auth.as_str()))
            .and(body_json(json!({"name": "keyrotd/i/app/r1", "limit": 25,
                "limit_reset": "weekly", "include_byok_in_limit": true,
                "expires_at": "2027-01-15T08:00:00Z"})))
            .respond_with(created(
                "h-new",
                json!({"limit": 25, "limit_reset": "weekly", "include_byok_in_limit": true,
                       "expires_at": "2027-01-15T08:00:00.000Z"}),
            ))
            .expect(1)
            .mount(&server)
            .await;
        let key = issuer(&server, "")
            .issue(&IssueRequest {
                name: "keyrotd/i/app/r1",
                replaces: replacing("h-old"),
                expires_at: Some(JAN_15_2027),
                now: JAN_15_2027 - 30 * 86_400,
            })
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "sk-or-v1-new-secret");
        assert_eq!(key.remote_id, "h-new");
        assert_eq!(key.expires_at, Some(JAN_15_2027), "the expiry answered");
    }

    /// A key with no cap (`limit: null`) stays uncapped, and a vendor that accepts the expiry
    /// without echoing it is taken at its word.
    #[tokio::test]
    async fn an_uncapped_key_is_replaced_uncapped_and_an_unechoed_expiry_is_the_one_asked() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/keys/h-old"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": {
                "hash": "h-old", "name": "app", "limit": null, "limit_reset": null,
                "include_byok_in_limit": false, "disabled": false}})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .and(body_json(
                json!({"name": "n", "include_byok_in_limit": false,
                "expires_at": "2027-01-15T08:00:00Z"}),
            ))
            .respond_with(created("h-new", json!({})))
            .expect(1)
            .mount(&server)
            .await;
        let key = issuer(&server, "")
            .issue(&IssueRequest {
                name: "n",
                replaces: replacing("h-old"),
                expires_at: Some(JAN_15_2027),
                now: JAN_15_2027 - 30 * 86_400,
            })
            .await
            .unwrap();
        assert_eq!(key.expires_at, Some(JAN_15_2027));
    }

    /// `workspace_id` from the config goes with every create and every listing.
    #[tokio::test]
    async fn the_configured_workspace_is_sent_on_create_and_list() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .and(body_json(json!({"name": "n", "workspace_id": "ws_42"})))
            .respond_with(created("h-new", json!({"workspace_id": "ws_42"})))
            .expect(1)
            .mount(&server)
            .await;
        for (offset, data) in [
            ("0", json!([{"hash": "h-1", "name": "keyrotd/x"}])),
            ("1", json!([])),
        ] {
            Mock::given(method("GET"))
                .and(path("/api/v1/keys"))
                .and(query_param("offset", offset))
                .and(query_param("include_disabled", "true"))
                .and(query_param("workspace_id", "ws_42"))
                .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": data})))
                .expect(1)
                .mount(&server)
                .await;
        }
        let issuer = issuer(&server, "workspace_id = \"ws_42\"");
        let key = issuer.issue(&IssueRequest::named("n")).await.unwrap();
        assert_eq!(key.expires_at, None, "no expiry asked, none answered");
        let listed = issuer.list("keyrotd/").await.unwrap();
        assert_eq!(listed.len(), 1);
    }

    /// A key imported by value (no hash) has its cap read with the key itself (`GET /key`),
    /// the only answer that names that key for certain.
    #[tokio::test]
    async fn an_imported_key_without_a_hash_has_its_cap_read_with_the_key_itself() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/key"))
            .and(header("authorization", "Bearer sk-or-v1-imported"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": {
                "label": "sk-or-v1-imp...ted", "limit": "7.50", "limit_remaining": 7.5,
                "limit_reset": "daily", "include_byok_in_limit": false, "usage": 0,
                "is_free_tier": false, "is_management_key": false, "expires_at": null}})))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .and(body_json(
                json!({"name": "n", "limit": "7.50", "limit_reset": "daily",
                "include_byok_in_limit": false}),
            ))
            .respond_with(created("h-new", json!({})))
            .expect(1)
            .mount(&server)
            .await;
        let imported = SecretString::from("sk-or-v1-imported");
        issuer(&server, "")
            .issue(&IssueRequest {
                name: "n",
                replaces: Some(CurrentKey {
                    remote_id: None,
                    secret: Some(&imported),
                }),
                expires_at: None,
                now: JAN_15_2027 - 30 * 86_400,
            })
            .await
            .unwrap();
    }

    /// The vendor's error shape `{error:{code,message,metadata}}` comes back as status, code
    /// and message, never the management key; a refused expiry is a rejection, not a retry.
    #[tokio::test]
    async fn the_vendors_error_shape_is_reported_without_the_management_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
                "code": 400,
                "message": format!("expires_at must be in UTC and in the future (key {ADMIN})"),
                "metadata": {"field": "expires_at"}}})))
            .mount(&server)
            .await;
        let err = issuer(&server, "")
            .issue(&IssueRequest {
                name: "n",
                replaces: None,
                expires_at: Some(JAN_15_2027),
                now: JAN_15_2027 - 30 * 86_400,
            })
            .await
            .err()
            .unwrap();
        let ProviderError::Rejected { status, detail, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*status, 400);
        assert!(
            detail.starts_with("HTTP 400 400: expires_at must be in UTC"),
            "{detail}"
        );
        assert!(!err.to_string().contains(ADMIN), "{err}");
        assert!(!err.is_transient());
    }

    /// Whatever stops the replaced key's cap from being read, nothing is created and the
    /// failure is transient (retried): issuing without the cap would silently remove it.
    #[tokio::test]
    async fn an_unreadable_cap_issues_nothing_and_is_retried() {
        let answers = [
            ResponseTemplate::new(403).set_body_json(json!({"error": {"code": 403,
                "message": "Only management keys can perform this operation", "metadata": null}})),
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": {"code": 404, "message": "Key not found"}})),
            ResponseTemplate::new(502).set_body_json(json!({"error": {"code": 502,
                "message": "upstream error", "metadata": {"provider_name": null}}})),
            ResponseTemplate::new(429)
                .insert_header("retry-after", "30")
                .set_body_json(json!({"error": {"code": 429, "message": "Rate limit exceeded"}})),
            ResponseTemplate::new(200).set_body_json(json!({"data": {"limit": 10,
                "limit_reset": "fortnightly"}})),
            ResponseTemplate::new(200).set_body_string("<html>maintenance</html>"),
        ];
        for answer in answers {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path("/api/v1/keys/h-old"))
                .respond_with(answer)
                .mount(&server)
                .await;
            Mock::given(method("POST"))
                .and(path("/api/v1/keys"))
                .respond_with(created("h-new", json!({})))
                .expect(0)
                .mount(&server)
                .await;
            let err = issuer(&server, "")
                .issue(&IssueRequest {
                    name: "n",
                    replaces: replacing("h-old"),
                    expires_at: None,
                    now: JAN_15_2027 - 30 * 86_400,
                })
                .await
                .err()
                .expect("issued without reading the cap");
            assert!(err.is_transient(), "{err:?}");
            assert!(!err.to_string().contains(ADMIN), "{err}");
        }
    }

    /// A key imported by value that OpenRouter no longer accepts cannot have its cap read:
    /// nothing is issued, and the error tells the operator what to do instead.
    #[tokio::test]
    async fn a_refused_imported_key_says_how_to_replace_it_by_hand() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/key"))
            .respond_with(ResponseTemplate::new(401).set_body_json(
                json!({"error": {"code": 401, "message": "User not found.", "metadata": null}}),
            ))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .respond_with(created("h-new", json!({})))
            .expect(0)
            .mount(&server)
            .await;
        let imported = SecretString::from("sk-or-v1-disabled");
        let err = issuer(&server, "")
            .issue(&IssueRequest {
                name: "n",
                replaces: Some(CurrentKey {
                    remote_id: None,
                    secret: Some(&imported),
                }),
                expires_at: None,
                now: JAN_15_2027 - 30 * 86_400,
            })
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("imported without its hash"), "{text}");
        assert!(text.contains("keyrotd key import"), "{text}");
        assert!(text.contains("HTTP 401 401: User not found."), "{text}");
        assert!(!text.contains("sk-or-v1-disabled"), "{text}");
        assert!(err.is_transient());
    }

    #[test]
    fn workspace_id_is_an_openrouter_field() {
        let text = "[[provider]]\nname = \"p\"\nkind = \"openai\"\nworkspace_id = \"ws\"\n";
        let err = Config::parse(Path::new("t.toml"), text).unwrap_err();
        assert!(
            format!("{err:#}").contains("`workspace_id` only applies to kind openrouter"),
            "{err:#}"
        );
    }
}

/// A fake OpenRouter with a key book: `POST /keys`, `GET /keys/{hash}`, `GET /keys`,
/// `DELETE /keys/{hash}` with the management key, `GET /key` with a key itself.
#[derive(Clone, Default)]
struct FakeOpenRouter {
    book: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Status to answer `GET /keys/{hash}` with instead of the key (an outage).
    read_fails_with: Arc<Mutex<Option<u16>>>,
    created: Arc<Mutex<usize>>,
}

impl FakeOpenRouter {
    fn add(&self, hash: &str, secret: &str, fields: Value) {
        let mut key = json!({"hash": hash, "name": "seeded", "secret": secret,
            "disabled": false, "limit": null, "limit_reset": null,
            "include_byok_in_limit": false, "expires_at": null});
        key.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        self.book.lock().unwrap().insert(hash.into(), key);
    }

    fn key(&self, hash: &str) -> Option<Value> {
        self.book.lock().unwrap().get(hash).cloned()
    }

    fn public(key: &Value) -> Value {
        let mut key = key.clone();
        key.as_object_mut().unwrap().remove("secret");
        key
    }

    fn error(status: u16, message: &str) -> ResponseTemplate {
        ResponseTemplate::new(status)
            .set_body_json(json!({"error": {"code": status, "message": message}}))
    }
}

impl Respond for FakeOpenRouter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let route = request
            .url
            .path()
            .trim_start_matches("/api/v1/")
            .to_string();
        let verb = request.method.as_str().to_string();
        if route == "key" && verb == "GET" {
            let book = self.book.lock().unwrap();
            return match book.values().find(|k| k["secret"] == auth.as_str()) {
                Some(key) if key["disabled"] != true => {
                    let mut data = Self::public(key);
                    data["limit_remaining"] = key["limit"].clone();
                    ResponseTemplate::new(200).set_body_json(json!({"data": data}))
                }
                _ => Self::error(401, "No auth credentials found"),
            };
        }
        if auth != ADMIN {
            return Self::error(401, "Invalid management key");
        }
        match (verb.as_str(), route.split_once('/')) {
            ("POST", None) if route == "keys" => {
                let body: Value = serde_json::from_slice(&request.body).unwrap();
                let mut count = self.created.lock().unwrap();
                *count += 1;
                let hash = format!("h-new-{count}");
                let secret = format!("sk-or-v1-issued-{count}");
                let mut key = json!({"hash": hash, "secret": secret, "disabled": false,
                    "limit": null, "limit_reset": null, "include_byok_in_limit": false,
                    "expires_at": null});
                key.as_object_mut()
                    .unwrap()
                    .extend(body.as_object().unwrap().clone());
                self.book.lock().unwrap().insert(hash.clone(), key.clone());
                ResponseTemplate::new(201)
                    .set_body_json(json!({"data": Self::public(&key), "key": secret}))
            }
            ("GET", None) if route == "keys" => {
                let first = request
                    .url
                    .query_pairs()
                    .any(|(k, v)| k == "offset" && v == "0");
                let data: Vec<Value> = if first {
                    self.book
                        .lock()
                        .unwrap()
                        .values()
                        .map(Self::public)
                        .collect()
                } else {
                    Vec::new()
                };
                ResponseTemplate::new(200).set_body_json(json!({"data": data}))
            }
            ("GET", Some(("keys", hash))) => {
                if let Some(status) = *self.read_fails_with.lock().unwrap() {
                    return Self::error(status, "Service unavailable");
                }
                match self.key(hash) {
                    Some(key) => ResponseTemplate::new(200)
                        .set_body_json(json!({"data": Self::public(&key)})),
                    None => Self::error(404, "Key not found"),
                }
            }
            ("DELETE", Some(("keys", hash))) => match self.book.lock().unwrap().remove(hash) {
                Some(_) => ResponseTemplate::new(200).set_body_json(json!({"deleted": true})),
                None => Self::error(404, "Key not found"),
            },
            _ => Self::error(404, "Not found"),
        }
    }
}

const CRED: &str = "app";
/// 30 days before 2027-01-15T08:00:00Z minus the grace and the margin below, so the expiry
/// keyrotd asks for is that instant.
const START: i64 = JAN_15_2027 - 30 * 86_400 - 3600 - 3 * 86_400;

struct Rig {
    _dir: tempfile::TempDir,
    fake: FakeOpenRouter,
    _server: MockServer,
    store: Arc<SqliteStore>,
    engine: Engine,
    rt: Arc<CredentialRuntime>,
}

/// A store whose credential `app` has `seed` as its current key (`hash` = its OpenRouter
/// hash, `None` for a key imported by value), rotated through the fake.
async fn rig(seed: &str, hash: Option<&str>, cap: Value) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start().await;
    let fake = FakeOpenRouter::default();
    fake.add(hash.unwrap_or("h-imported"), seed, cap);
    Mock::given(wiremock::matchers::any())
        .respond_with(fake.clone())
        .mount(&server)
        .await;
    let mgmt = dir.path().join("mgmt");
    std::fs::write(&mgmt, ADMIN).unwrap();
    let text = format!(
        r#"[[provider]]
name = "or"
kind = "openrouter"
base_url = "{base}/api/v1"
management_key = {{ file = {mgmt:?} }}
timeout = "30s"

[[credential]]
name = "{CRED}"
provider = "or"
[credential.rotation]
max_age = "30d"
grace = "1h"
provider_expiry_margin = "3d"
[[credential.deliver]]
kind = "file"
path = {out:?}
"#,
        base = server.uri(),
        mgmt = mgmt.display().to_string(),
        out = dir.path().join("key").display().to_string(),
    );
    let config = Config::parse(&dir.path().join("config.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let store = Arc::new(
        SqliteStore::open(
            &dir.path().join("keyrotd.db"),
            Some(Arc::new(Sealer::new(&MasterKey::generate()))),
        )
        .await
        .unwrap(),
    );
    store
        .sync_credentials(&keyrotd::store::credential_specs(&config), START)
        .await
        .unwrap();
    store
        .import_key(
            CRED,
            NewKey {
                secret: SecretString::from(seed.to_string()),
                expires_at: None,
                provider_key_id: hash.map(str::to_string),
                rotation_id: None,
            },
            "test",
            START,
        )
        .await
        .unwrap();
    let clock = ManualClock::new(START);
    let engine = Engine::new(store.clone() as Arc<dyn Store>, Arc::new(clock.clone()));
    assert_eq!(clock.now(), START);
    let rt = rotation::build_runtimes(&config, &ProviderTelemetry::new())
        .unwrap()
        .remove(CRED)
        .unwrap();
    Rig {
        _dir: dir,
        fake,
        _server: server,
        store,
        engine,
        rt,
    }
}

impl Rig {
    async fn current(&self) -> keyrotd::store::KeyVersion {
        let versions = self.store.versions(CRED).await.unwrap();
        let current: Vec<_> = versions
            .into_iter()
            .filter(|v| v.stage == Stage::Current)
            .collect();
        assert_eq!(current.len(), 1);
        current[0].clone()
    }
}

/// The successor of a capped key carries the same cap (limit, reset period, BYOK rule) and
/// dies at the provider on its own at its planned replacement + grace + margin, which the
/// store records as its expiry.
#[tokio::test]
async fn a_rotation_hands_the_cap_and_a_provider_side_expiry_to_the_successor() {
    let cap = json!({"limit": 25, "limit_reset": "weekly", "include_byok_in_limit": true});
    let rig = rig("sk-or-v1-seed", Some("h-seed"), cap).await;
    rig.engine.rotate(&rig.rt, "test").await.unwrap();
    let current = rig.current().await;
    let hash = current
        .provider_key_id
        .clone()
        .expect("issued keys have a hash");
    assert_ne!(hash, "h-seed");
    let successor = rig
        .fake
        .key(&hash)
        .expect("the successor is at the provider");
    assert_eq!(successor["limit"], json!(25));
    assert_eq!(successor["limit_reset"], json!("weekly"));
    assert_eq!(successor["include_byok_in_limit"], json!(true));
    assert_eq!(successor["expires_at"], json!("2027-01-15T08:00:00Z"));
    assert_eq!(current.expires_at, Some(JAN_15_2027));
    assert!(
        rig.fake.key("h-seed").is_some(),
        "the old key lives out its grace"
    );
}

/// A key an operator imported by value: its cap is read with the key itself and copied.
#[tokio::test]
async fn a_rotation_of_an_imported_key_keeps_its_cap() {
    let cap = json!({"limit": 3, "limit_reset": "daily", "include_byok_in_limit": false});
    let rig = rig("sk-or-v1-imported-by-value", None, cap).await;
    rig.engine.rotate(&rig.rt, "test").await.unwrap();
    let hash = rig.current().await.provider_key_id.unwrap();
    let successor = rig.fake.key(&hash).unwrap();
    assert_eq!(successor["limit"], json!(3));
    assert_eq!(successor["limit_reset"], json!("daily"));
    assert_eq!(successor["include_byok_in_limit"], json!(false));
}

/// When the replaced key's cap cannot be read, the rotation fails before anything is
/// issued: the old key stays current, no uncapped key exists, and a retry follows.
#[tokio::test]
async fn a_rotation_that_cannot_read_the_cap_issues_nothing_and_retries() {
    let cap = json!({"limit": 25, "limit_reset": "monthly"});
    let rig = rig("sk-or-v1-seed", Some("h-seed"), cap).await;
    *rig.fake.read_fails_with.lock().unwrap() = Some(503);
    let err = rig.engine.rotate(&rig.rt, "test").await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(*rig.fake.created.lock().unwrap(), 0, "nothing was issued");
    assert_eq!(
        rig.current().await.provider_key_id.as_deref(),
        Some("h-seed")
    );
    let credential = rig.store.credential(CRED).await.unwrap().unwrap();
    assert_eq!(credential.consecutive_failures, 1);
    assert!(
        credential.next_rotation_at.unwrap() > START,
        "a retry is due"
    );
    *rig.fake.read_fails_with.lock().unwrap() = None;
    rig.engine.rotate(&rig.rt, "test").await.unwrap();
    let hash = rig.current().await.provider_key_id.unwrap();
    assert_eq!(
        rig.fake.key(&hash).unwrap()["limit_reset"],
        json!("monthly")
    );
}

/// One check of the real daemon reads the key's limit left and its spend this day, week and
/// month; `/metrics` exports them as two families, and the spend never passes for credit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_exports_limit_remaining_and_usage_per_period() {
    let key = common::canary();
    let fake = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/key"))
        .and(header("authorization", format!("Bearer {key}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": {
            "label": "sk-or-v1-can...ary", "limit": 20, "limit_remaining": 12.5,
            "limit_reset": "monthly", "include_byok_in_limit": false, "usage": 7.5,
            "usage_daily": 0.25, "usage_weekly": 1.5, "usage_monthly": 7.5,
            "is_free_tier": false, "is_management_key": false, "expires_at": null}})))
        .mount(&fake)
        .await;
    let env = common::Env::new();
    env.write_config(&format!(
        "[checks]\ninterval = \"1h\"\n\n[[provider]]\nname = \"or\"\nkind = \"openrouter\"\nbase_url = \"{}/api/v1\"\n\n[[credential]]\nname = \"app\"\nprovider = \"or\"\n",
        fake.uri()
    ));
    env.import("app", &key, &[]);
    let daemon = env.start();
    let usage = |m: &str, period: &str| {
        common::series(
            m,
            "keyrotd_key_usage",
            &[("credential", "app"), ("period", period), ("unit", "usd")],
        )
    };
    let metrics = daemon.wait_for_metrics("the usage series", |m| usage(m, "monthly").is_some());
    assert_eq!(usage(&metrics, "daily"), Some(0.25), "{metrics}");
    assert_eq!(usage(&metrics, "weekly"), Some(1.5), "{metrics}");
    assert_eq!(usage(&metrics, "monthly"), Some(7.5), "{metrics}");
    let credit: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("keyrotd_key_credit_remaining{"))
        .collect();
    assert_eq!(
        credit,
        ["keyrotd_key_credit_remaining{credential=\"app\",provider=\"or\",unit=\"usd\"} 12.5"],
        "{metrics}"
    );
    let log = daemon.stop();
    assert!(!log.contains(&key), "the key leaked into the log");

    // The CLI keeps the two apart too: credit left, and spend as `used`.
    let usage = json!([
        {"unit": "usd", "period": "daily", "used": 0.25},
        {"unit": "usd", "period": "weekly", "used": 1.5},
        {"unit": "usd", "period": "monthly", "used": 7.5},
    ]);
    let out = env.run(&["key", "show", "app", "--json"]);
    common::assert_success(&out, "key show --json");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["credit"], json!([{"unit": "usd", "remaining": 12.5}]));
    // As stored: by unit.
    assert_eq!(
        shown["usage"],
        json!([usage[0].clone(), usage[2].clone(), usage[1].clone()])
    );
    let out = env.run(&["key", "show", "app"]);
    assert!(
        common::stdout(&out).contains("credit:       12.5 usd, 0.25 usd used daily"),
        "{}",
        common::stdout(&out)
    );
    let out = env.run(&["check", "--json"]);
    common::assert_success(&out, "check --json");
    let checked: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        checked[0]["credit"],
        json!([{"unit": "usd", "remaining": 12.5}])
    );
    assert_eq!(checked[0]["usage"], usage);
}
