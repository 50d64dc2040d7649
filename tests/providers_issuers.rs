//! Issuers (issue / list / revoke) against local servers shaped like the vendors' key APIs.
//! The management key travels only as the documented header, and never comes back in an
//! error message, even when the vendor echoes it.

#[macro_use]
mod providers_support;

use keyrotd::providers::{build_issuer, IssueRequest, Issuer, ProviderError, ProviderTelemetry};
use providers_support::provider_config;
use secrecy::ExposeSecret;
use serde_json::json;
use std::sync::Arc;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The management key (a canary: it must never come back in an error).
const ADMIN: &str = "adm-canary-91c2";

/// Builds the issuer of `toml` with the management key read from a file, as in production.
fn issuer_from(toml: &str) -> Arc<dyn Issuer> {
    // One file for the whole process: an issuer that reads its key at every call (OpenAI's
    // admin key) needs the file for as long as it lives.
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    let file = FILE.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("{ADMIN}\n")).unwrap();
        file
    });
    let config = provider_config(&format!(
        "timeout = \"30s\"\nmanagement_key = {{ file = {:?} }}\n{toml}",
        file.path().display().to_string()
    ));
    build_issuer(&config, &ProviderTelemetry::new())
        .expect("issuer builds")
        .expect("kind has an issuer")
}

fn issuer(toml: &str, server: &MockServer) -> Arc<dyn Issuer> {
    issuer_from(&toml.replace("{base}", &server.uri()))
}

async fn assert_admin_only_in_header(server: &MockServer, header_value: &str) {
    for request in server.received_requests().await.unwrap_or_default() {
        assert!(!request.url.as_str().contains(ADMIN));
        assert!(!String::from_utf8_lossy(&request.body).contains(ADMIN));
        let carriers: Vec<_> = request
            .headers
            .iter()
            .filter(|(_, v)| v.to_str().unwrap_or_default().contains(ADMIN))
            .collect();
        assert_eq!(carriers.len(), 1);
        assert_eq!(carriers[0].1.to_str().unwrap(), header_value);
    }
}

fn assert_no_admin(err: &ProviderError) {
    assert!(!err.to_string().contains(ADMIN), "{err}");
}

mod openrouter {
    use super::*;
    pub(super) const TOML: &str = "kind = \"openrouter\"\nbase_url = \"{base}/api/v1\"";

    #[tokio::test]
    async fn issue_list_revoke() {
        let server = MockServer::start().await;
        let auth = format!("Bearer {ADMIN}");
        Mock::given(method("POST")).and(path("/api/v1/keys")).and(header("authorization", auth.as_str()))
            .and(body_json(json!({"name": "keyrotd/or/r1"})))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "data": {"hash": "h-123", "name": "keyrotd/or/r1", "label": "sk-or-v1-abc...xyz", "disabled": false,
                         "limit": null, "created_at": "2025-01-01T00:00:00Z", "expires_at": "2030-01-01T00:00:00Z"},
                "key": "sk-or-v1-new-secret"})))
            .mount(&server).await;
        Mock::given(method("GET"))
            .and(path("/api/v1/keys"))
            .and(query_param("offset", "0"))
            .and(query_param("include_disabled", "true"))
            .and(header("authorization", auth.as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
                {"hash": "h-1", "name": "keyrotd/or/r0"}, {"hash": "h-2", "name": "other"}]})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/keys"))
            .and(query_param("offset", "2"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"data": [{"hash": "h-3", "name": "keyrotd/or/r9"}]})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/keys"))
            .and(query_param("offset", "3"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/api/v1/keys/h-123"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"deleted": true})))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/api/v1/keys/h-gone"))
            .respond_with(
                ResponseTemplate::new(404)
                    .set_body_json(json!({"error": {"code": 404, "message": "Not found"}})),
            )
            .mount(&server)
            .await;

        let issuer = issuer(TOML, &server);
        let key = issuer
            .issue(&IssueRequest::named("keyrotd/or/r1"))
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "sk-or-v1-new-secret");
        assert_eq!(key.remote_id, "h-123");
        assert_eq!(key.expires_at, Some(1_893_456_000));
        let listed = issuer.list("keyrotd/or/").await.unwrap();
        let ids: Vec<_> = listed.iter().map(|k| k.remote_id.as_str()).collect();
        assert_eq!(ids, ["h-1", "h-3"]);
        issuer.revoke("h-123").await.unwrap();
        issuer.revoke("h-gone").await.unwrap();
        assert_admin_only_in_header(&server, &auth).await;
    }

    #[tokio::test]
    async fn an_error_echoing_the_management_key_is_sanitised() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).and(path("/api/v1/keys"))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"code": 401, "message": format!("Invalid management key {ADMIN}")}})))
            .mount(&server).await;
        let err = issuer(TOML, &server)
            .issue(&IssueRequest::named("n"))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(err, ProviderError::Rejected { status: 401, .. }),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert_no_admin(&err);
    }

    #[tokio::test]
    async fn a_201_without_the_key_is_malformed_and_5xx_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/v1/keys"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"data": {"hash": "h"}})))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .respond_with(ResponseTemplate::new(503).set_body_string("<html>down</html>"))
            .mount(&server)
            .await;
        let issuer = issuer(TOML, &server);
        assert!(matches!(
            issuer.issue(&IssueRequest::named("n")).await.err().unwrap(),
            ProviderError::Malformed(_)
        ));
        let err = issuer.revoke("h").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(!err.to_string().contains("html"), "{err}");
    }
}

mod openai {
    use super::*;
    pub(super) const TOML: &str =
        "kind = \"openai\"\nbase_url = \"{base}/v1\"\nproject = \"proj_abc\"";
    const ACCOUNTS: &str = "/v1/organization/projects/proj_abc/service_accounts";

    #[tokio::test]
    async fn issue_list_revoke() {
        let server = MockServer::start().await;
        let auth = format!("Bearer {ADMIN}");
        Mock::given(method("POST")).and(path(ACCOUNTS)).and(header("authorization", auth.as_str()))
            .and(body_json(json!({"name": "keyrotd/oai/r1"})))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "object": "organization.project.service_account", "id": "svc_acct_1", "name": "keyrotd/oai/r1",
                "role": "member", "created_at": 1711471533,
                "api_key": {"object": "organization.project.service_account.api_key", "value": "sk-svcacct-new",
                            "name": "Secret Key", "created_at": 1711471533, "id": "key_abc"}})))
            .mount(&server).await;
        Mock::given(method("GET")).and(path(ACCOUNTS)).and(query_param("after", "svc_acct_2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [{"id": "svc_acct_3", "name": "keyrotd/oai/r3"}], "first_id": "svc_acct_3", "last_id": "svc_acct_3", "has_more": false})))
            .mount(&server).await;
        Mock::given(method("GET")).and(path(ACCOUNTS)).and(query_param("limit", "100"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list",
                "data": [{"id": "svc_acct_1", "name": "keyrotd/oai/r1"}, {"id": "svc_acct_2", "name": "ci-bot"}],
                "first_id": "svc_acct_1", "last_id": "svc_acct_2", "has_more": true})))
            .with_priority(10)
            .mount(&server).await;
        Mock::given(method("DELETE")).and(path(format!("{ACCOUNTS}/svc_acct_1")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "organization.project.service_account.deleted", "id": "svc_acct_1", "deleted": true})))
            .mount(&server).await;
        Mock::given(method("DELETE"))
            .and(path(format!("{ACCOUNTS}/svc_acct_gone")))
            .respond_with(ResponseTemplate::new(404).set_body_json(
                json!({"error": {"message": "not found", "type": "invalid_request_error"}}),
            ))
            .mount(&server)
            .await;

        let issuer = issuer(TOML, &server);
        let key = issuer
            .issue(&IssueRequest::named("keyrotd/oai/r1"))
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "sk-svcacct-new");
        assert_eq!(key.remote_id, "svc_acct_1");
        let ids: Vec<_> = issuer
            .list("keyrotd/")
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.remote_id)
            .collect();
        assert_eq!(ids, ["svc_acct_1", "svc_acct_3"]);
        issuer.revoke("svc_acct_1").await.unwrap();
        issuer.revoke("svc_acct_gone").await.unwrap();
        assert_admin_only_in_header(&server, &auth).await;
    }

    #[tokio::test]
    async fn rate_limited_issue_carries_retry_after_and_no_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).and(path(ACCOUNTS))
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "12")
                .set_body_json(json!({"error": {"message": format!("slow down {ADMIN}"), "type": "requests", "code": "rate_limit_exceeded"}})))
            .mount(&server).await;
        let err = issuer(TOML, &server)
            .issue(&IssueRequest::named("n"))
            .await
            .err()
            .unwrap();
        match &err {
            ProviderError::Rejected {
                status,
                retry_after,
                ..
            } => {
                assert_eq!(*status, 429);
                assert_eq!(*retry_after, Some(std::time::Duration::from_secs(12)));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.is_transient());
        assert_no_admin(&err);
    }

    #[test]
    fn without_project_or_key_there_is_no_issuer() {
        let config = provider_config("kind = \"openai\"");
        let err = build_issuer(&config, &ProviderTelemetry::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs `project`"), "{err}");
        let config = provider_config("kind = \"openai\"\nproject = \"proj_x\"");
        let err = build_issuer(&config, &ProviderTelemetry::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("needs `management_key`"), "{err}");
    }
}

#[test]
fn kinds_without_a_key_api_have_no_issuer() {
    for kind in ["anthropic", "deepseek", "gemini"] {
        let config = provider_config(&format!("kind = \"{kind}\""));
        assert!(
            build_issuer(&config, &ProviderTelemetry::new())
                .unwrap()
                .is_none(),
            "{kind}"
        );
    }
    let config = provider_config(
        "kind = \"openai_compatible\"\nbase_url = \"https://api.groq.com/openai/v1\"",
    );
    assert!(build_issuer(&config, &ProviderTelemetry::new())
        .unwrap()
        .is_none());
}

/// A HolySheep-style relay API: `POST /keys/rotate`, then `GET /keys/{name}/metadata`.
mod relay {
    use super::*;
    pub(super) const TOML: &str =
        "kind = \"relay\"\nbase_url = \"{base}/v1\"\nrotation_policy = \"7d\"";

    #[tokio::test]
    async fn rotate_then_metadata() {
        let server = MockServer::start().await;
        let auth = format!("Bearer {ADMIN}");
        Mock::given(method("POST"))
            .and(path("/v1/keys/rotate"))
            .and(header("authorization", auth.as_str()))
            .and(body_json(
                json!({"rotation_policy": "7d", "name": "keyrotd/relay/r1"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": "hs-new-key"})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/keys/keyrotd%2Frelay%2Fr1/metadata"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"created_at": 1700000000, "expires_at": 1700604800})),
            )
            .mount(&server)
            .await;
        let issuer = issuer(TOML, &server);
        let key = issuer
            .issue(&IssueRequest::named("keyrotd/relay/r1"))
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "hs-new-key");
        assert_eq!(key.remote_id, "keyrotd/relay/r1");
        assert_eq!(key.expires_at, Some(1_700_604_800));
        assert!(matches!(
            issuer.list("x").await,
            Err(ProviderError::Unsupported { .. })
        ));
        assert!(matches!(
            issuer.revoke("x").await,
            Err(ProviderError::Unsupported { .. })
        ));
        // So the engine retires its replaced keys locally instead of retrying forever.
        assert!(!issuer.can_revoke());
        assert_admin_only_in_header(&server, &auth).await;
    }

    #[tokio::test]
    async fn a_failed_metadata_lookup_does_not_lose_the_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/keys/rotate"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": "hs-new-key"})))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        let key = issuer(TOML, &server)
            .issue(&IssueRequest::named("n"))
            .await
            .unwrap();
        assert_eq!(key.secret.expose_secret(), "hs-new-key");
        assert_eq!(key.expires_at, None);
    }
}

mod simulated {
    use super::*;
    pub(super) const TOML: &str = "kind = \"simulated\"\nbase_url = \"{base}\"";

    #[tokio::test]
    async fn issue_list_revoke() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/keys"))
            .and(body_json(json!({"name": "keyrotd/demo/r1"})))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(json!({"id": "sim_7", "key": "sim-secret"})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET")).and(path("/v1/keys"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "sim_7", "name": "keyrotd/demo/r1"}, {"id": "sim_1", "name": "manual"}])))
            .mount(&server).await;
        Mock::given(method("DELETE"))
            .and(path("/v1/keys/sim_7"))
            .respond_with(ResponseTemplate::new(204))
            .mount(&server)
            .await;
        Mock::given(method("DELETE"))
            .and(path("/v1/keys/sim_0"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&server)
            .await;
        let issuer = issuer(TOML, &server);
        let key = issuer
            .issue(&IssueRequest::named("keyrotd/demo/r1"))
            .await
            .unwrap();
        assert_eq!(
            (key.secret.expose_secret(), key.remote_id.as_str()),
            ("sim-secret", "sim_7")
        );
        assert_eq!(issuer.list("keyrotd/demo/").await.unwrap().len(), 1);
        issuer.revoke("sim_7").await.unwrap();
        issuer.revoke("sim_0").await.unwrap();
        assert_admin_only_in_header(&server, &format!("Bearer {ADMIN}")).await;
    }
}

mod http_generic {
    use super::*;
    pub(super) const TOML: &str = r#"kind = "http"
base_url = "{base}/api"
[provider.http.check]
path = "/self"
headers = { Authorization = "Bearer {key}" }
[provider.http.issue]
path = "/keys"
headers = { X-Admin-Token = "{management_key}" }
body = '{"name": "{name}", "ttl": "30d"}'
key_pointer = "/secret/value"
id_pointer = "/id"
expires_at_pointer = "/expires_at"
[provider.http.list]
path = "/keys"
headers = { X-Admin-Token = "{management_key}" }
items_pointer = "/items"
id_pointer = "/id"
name_pointer = "/meta/name"
[provider.http.revoke]
method = "POST"
path = "/keys/{id}/disable"
headers = { X-Admin-Token = "{management_key}" }
success_status = [200]"#;

    #[tokio::test]
    async fn issue_list_revoke_from_config() {
        let server = MockServer::start().await;
        Mock::given(method("POST")).and(path("/api/keys")).and(header("x-admin-token", ADMIN))
            .and(body_json(json!({"name": "keyrotd/\"q\"/r1", "ttl": "30d"})))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 42, "secret": {"value": "in-house-key"}, "expires_at": "2030-01-01T00:00:00Z"})))
            .mount(&server).await;
        Mock::given(method("GET")).and(path("/api/keys"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"items": [{"id": "42", "meta": {"name": "keyrotd/x/1"}}, {"id": "7", "meta": {"name": "y"}}]})))
            .mount(&server).await;
        Mock::given(method("POST"))
            .and(path("/api/keys/42/disable"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/keys/43/disable"))
            .respond_with(ResponseTemplate::new(202))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/keys/44/disable"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&server)
            .await;
        let issuer = issuer(TOML, &server);
        // A name with a quote must stay valid JSON in the body template.
        let key = issuer
            .issue(&IssueRequest::named("keyrotd/\"q\"/r1"))
            .await
            .unwrap();
        assert_eq!(
            (key.secret.expose_secret(), key.remote_id.as_str()),
            ("in-house-key", "42")
        );
        assert_eq!(key.expires_at, Some(1_893_456_000));
        let listed = issuer.list("keyrotd/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "keyrotd/x/1");
        issuer.revoke("42").await.unwrap();
        // Outside the configured success statuses (and not 404): rejected.
        assert!(matches!(
            issuer.revoke("43").await,
            Err(ProviderError::Rejected { status: 202, .. })
        ));
        issuer.revoke("44").await.unwrap();
        assert_admin_only_in_header(&server, ADMIN).await;
    }

    /// An in-house service told the expiry keyrotd computed, in the body only.
    const WITH_EXPIRY: &str = r#"kind = "http"
base_url = "{base}/api"
[provider.http.check]
path = "/self"
headers = { Authorization = "Bearer {key}" }
[provider.http.issue]
path = "/keys"
headers = { X-Admin-Token = "{management_key}" }
body = '{"name": "{name}", "expires_at": "{expires_at}", "expires_unix": {expires_at_unix}, "ttl": {expires_in_seconds}}'
key_pointer = "/secret"
[provider.http.revoke]
path = "/keys/{id}"
headers = { X-Admin-Token = "{management_key}" }"#;

    #[tokio::test]
    async fn the_issue_body_carries_the_provider_side_expiry_and_null_without_one() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/api/keys"))
            .and(body_json(json!({
                "name": "with", "expires_at": "2026-12-01T00:00:00Z",
                "expires_unix": 1_796_083_200, "ttl": 2_592_000,
            })))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"secret": "k1"})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/api/keys"))
            .and(body_json(json!({
                "name": "without", "expires_at": null, "expires_unix": null, "ttl": null,
            })))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"secret": "k2"})))
            .mount(&server)
            .await;
        let issuer = issuer(WITH_EXPIRY, &server);
        let request = IssueRequest {
            expires_at: Some(1_796_083_200),
            now: 1_796_083_200 - 2_592_000,
            ..IssueRequest::named("with")
        };
        let key = issuer.issue(&request).await.expect("the expiry is sent");
        assert_eq!(key.secret.expose_secret(), "k1");
        assert_eq!(
            key.expires_at,
            Some(1_796_083_200),
            "the expiry sent is the key's when the answer names none"
        );
        let key = issuer
            .issue(&IssueRequest::named("without"))
            .await
            .expect("null is sent");
        assert_eq!(key.secret.expose_secret(), "k2");
        assert_eq!(key.expires_at, None);
        assert_admin_only_in_header(&server, ADMIN).await;
    }

    #[tokio::test]
    async fn without_issue_section_there_is_no_issuer() {
        let config = provider_config("kind = \"http\"\nbase_url = \"https://x\"\n[provider.http.check]\npath = \"/c\"\nheaders = { Authorization = \"Bearer {key}\" }");
        assert!(build_issuer(&config, &ProviderTelemetry::new())
            .unwrap()
            .is_none());
    }
}

mod exec {
    use super::*;

    fn exec_issuer(script: &str) -> Arc<dyn Issuer> {
        issuer_from(&format!(
            "kind = \"exec\"\n[provider.exec]\ncommand = [\"sh\", \"-c\", {}]\nissuer = true",
            serde_json::to_string(script).unwrap()
        ))
    }

    const SCRIPT: &str = r#"read admin; [ "$admin" = "adm-canary-91c2" ] || exit 9
case "$KEYROTD_OPERATION" in
  issue) printf '{"key":"exec-key","id":"id-%s","expires_at":99}' "$KEYROTD_NAME" ;;
  list) echo '[{"id":"1","name":"keyrotd/a"},{"id":"2","name":"b"}]' ;;
  revoke) [ "$KEYROTD_REMOTE_ID" = "id-n" ] || exit 3 ;;
esac"#;

    #[tokio::test]
    async fn issue_list_revoke_through_the_command() {
        let issuer = exec_issuer(SCRIPT);
        let key = issuer.issue(&IssueRequest::named("n")).await.unwrap();
        assert_eq!(
            (
                key.secret.expose_secret(),
                key.remote_id.as_str(),
                key.expires_at
            ),
            ("exec-key", "id-n", Some(99))
        );
        assert_eq!(issuer.list("keyrotd/").await.unwrap().len(), 1);
        issuer.revoke("id-n").await.unwrap();
        let err = issuer.revoke("other").await.unwrap_err();
        assert!(err.to_string().contains("status 3"), "{err}");
    }

    #[tokio::test]
    async fn the_command_is_told_the_provider_side_expiry_when_there_is_one() {
        let issuer = exec_issuer(
            r#"read admin; printf '{"key":"k","id":"i","expires_at":%s}' "${KEYROTD_EXPIRES_AT:-null}""#,
        );
        let request = IssueRequest {
            expires_at: Some(1_900_000_000),
            ..IssueRequest::named("n")
        };
        assert_eq!(
            issuer.issue(&request).await.unwrap().expires_at,
            Some(1_900_000_000)
        );
        let unset = issuer.issue(&IssueRequest::named("n")).await.unwrap();
        assert_eq!(unset.expires_at, None, "no variable without an expiry");
    }

    #[tokio::test]
    async fn garbage_output_is_malformed_without_echo() {
        let issuer = exec_issuer("read admin; echo \"oops $admin\"");
        let err = issuer.issue(&IssueRequest::named("n")).await.err().unwrap();
        assert!(matches!(err, ProviderError::Malformed(_)), "{err:?}");
        assert_no_admin(&err);
    }

    #[test]
    fn issuer_is_opt_in() {
        let config = provider_config("kind = \"exec\"\n[provider.exec]\ncommand = [\"true\"]");
        assert!(build_issuer(&config, &ProviderTelemetry::new())
            .unwrap()
            .is_none());
    }
}

/// A listing without a `data` array (a proxy's page, an API change) must fail the list, not
/// read as "no keys": an empty answer would tell the orphan sweep there is nothing to delete.
#[tokio::test]
async fn a_listing_without_a_data_array_is_malformed_not_empty() {
    let cases = [
        (
            "kind = \"openrouter\"\nbase_url = \"{base}/api/v1\"".to_string(),
            "/api/v1/keys",
        ),
        (
            "kind = \"openai\"\nbase_url = \"{base}/v1\"\nproject = \"proj_abc\"".to_string(),
            "/v1/organization/projects/proj_abc/service_accounts",
        ),
    ];
    for (toml, list_path) in cases {
        for body in [json!({"keys": []}), json!({"data": {"id": "x"}}), json!([])] {
            let server = MockServer::start().await;
            Mock::given(method("GET"))
                .and(path(list_path))
                .respond_with(ResponseTemplate::new(200).set_body_json(body.clone()))
                .mount(&server)
                .await;
            let error = issuer(&toml, &server)
                .list("keyrotd/")
                .await
                .expect_err("a listing without `data` was accepted");
            assert!(
                matches!(&error, ProviderError::Malformed(m) if m.contains("data")),
                "{toml}: {body}: {error}"
            );
            assert_no_admin(&error);
        }
    }
}

/// Every HTTP issuer hands the provider's `Retry-After` to the caller, in either form RFC 9110
/// allows: delta-seconds or an HTTP-date (IMF-fixdate, and the obsolete RFC 850 and asctime
/// forms), on 429 and 503 alike. A date is read against the clock when the answer arrives:
/// the wait is bounded exactly by the clock read before and after the request, so no
/// tolerance is needed. A date in the past means "now"; a date years ahead is cut to
/// `MAX_RETRY_AFTER`.
mod retry_after {
    use super::*;
    use keyrotd::providers::MAX_RETRY_AFTER;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// (issuer config, path of its issue request)
    const ISSUERS: [(&str, &str); 5] = [
        (super::openrouter::TOML, "/api/v1/keys"),
        (
            super::openai::TOML,
            "/v1/organization/projects/proj_abc/service_accounts",
        ),
        (super::relay::TOML, "/v1/keys/rotate"),
        (super::simulated::TOML, "/v1/keys"),
        (super::http_generic::TOML, "/api/keys"),
    ];

    fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// `at` (Unix seconds) in the three HTTP-date forms.
    fn http_dates(at: i64) -> [String; 3] {
        let at = chrono::DateTime::from_timestamp(at, 0).unwrap();
        [
            at.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
            at.format("%A, %d-%b-%y %H:%M:%S GMT").to_string(),
            at.format("%a %b %e %H:%M:%S %Y").to_string(),
        ]
    }

    /// Issues against a server answering `status` with `Retry-After: value`; returns the
    /// wait the issuer's error carries, and the Unix seconds read before and after.
    async fn wait_for(
        toml: &str,
        issue_path: &str,
        status: u16,
        value: &str,
    ) -> (Option<Duration>, i64, i64) {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(issue_path))
            .respond_with(
                ResponseTemplate::new(status)
                    .insert_header("retry-after", value)
                    .set_body_json(json!({"error": {"message": format!("slow down {ADMIN}"), "code": "rate_limit_exceeded"}})),
            )
            .expect(1)
            .mount(&server)
            .await;
        let issuer = issuer(toml, &server);
        let before = unix_now();
        let err = issuer
            .issue(&IssueRequest::named("keyrotd/ra/r1"))
            .await
            .err()
            .expect("the issue failed");
        let after = unix_now();
        assert_no_admin(&err);
        assert!(err.is_transient(), "{toml}: {err:?}");
        match err {
            ProviderError::Rejected {
                status: got,
                retry_after,
                ..
            } => {
                assert_eq!(got, status, "{toml}");
                (retry_after, before, after)
            }
            other => panic!("{toml}: {status} {value:?}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn seconds_and_every_date_form_on_429_and_503() {
        for (toml, issue_path) in ISSUERS {
            for status in [429, 503] {
                let (wait, _, _) = wait_for(toml, issue_path, status, "12").await;
                assert_eq!(
                    wait,
                    Some(Duration::from_secs(12)),
                    "{toml}: {status} seconds"
                );

                // Two hours ahead, in whole seconds as a date carries them.
                let due = unix_now() + 2 * 3600;
                for date in http_dates(due) {
                    let (wait, before, after) = wait_for(toml, issue_path, status, &date).await;
                    let wait = wait
                        .unwrap_or_else(|| {
                            panic!("{toml}: {status} {date:?}: the date was dropped")
                        })
                        .as_secs() as i64;
                    assert!(
                        (due - after..=due - before).contains(&wait),
                        "{toml}: {status} {date:?}: waits {wait} s, the date is {}..={} s away",
                        due - after,
                        due - before
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_date_in_the_past_is_now_and_one_years_ahead_is_capped() {
        for (toml, issue_path) in ISSUERS {
            let (wait, _, _) =
                wait_for(toml, issue_path, 429, "Wed, 21 Oct 2015 07:28:00 GMT").await;
            assert_eq!(wait, Some(Duration::ZERO), "{toml}: a past date");
            for far in [
                "Fri, 31 Dec 9999 23:59:59 GMT".to_string(),
                http_dates(unix_now() + 3 * 365 * 86_400)[0].clone(),
            ] {
                let (wait, _, _) = wait_for(toml, issue_path, 429, &far).await;
                assert_eq!(wait, Some(MAX_RETRY_AFTER), "{toml}: {far:?}");
            }
        }
    }
}
