//! Validation of the kind-specific provider fields: every mistake is reported with its
//! position, and secrets can only be placed in headers.

use keyrotd::config::{Config, ExecKeyVia};
use std::path::Path;

fn errors(text: &str) -> String {
    Config::parse(Path::new("t.toml"), text)
        .unwrap_err()
        .to_string()
}

#[test]
fn complete_sections_of_every_kind_parse() {
    let text = r#"
[[provider]]
name = "azure"
kind = "azure_openai"
base_url = "https://myres.openai.azure.com"
api_version = "2024-10-21"

[[provider]]
name = "claude"
kind = "anthropic"
anthropic_version = "2023-06-01"

[[provider]]
name = "oai"
kind = "openai"
project = "proj_abc123"
management_key = { env = "OPENAI_ADMIN_KEY" }

[[provider]]
name = "relay"
kind = "relay"
base_url = "https://relay.example/v1"
rotation_policy = "30d"
management_key = { file = "/etc/keyrotd/relay.key" }

[[provider]]
name = "inhouse"
kind = "http"
base_url = "https://keys.internal"
management_key = { credential = "inhouse-admin" }
[provider.http.check]
path = "/v1/self"
headers = { Authorization = "Bearer {key}" }
valid_pointer = "/active"
[provider.http.issue]
path = "/v1/keys"
headers = { Authorization = "Bearer {management_key}" }
body = '{"name": "{name}"}'
key_pointer = "/secret"
id_pointer = "/id"
[provider.http.list]
path = "/v1/keys?prefix={prefix}"
headers = { Authorization = "Bearer {management_key}" }
items_pointer = "/keys"
id_pointer = "/id"
name_pointer = "/name"
[provider.http.revoke]
path = "/v1/keys/{id}"
headers = { Authorization = "Bearer {management_key}" }

[[provider]]
name = "script"
kind = "exec"
[provider.exec]
command = ["/usr/local/bin/check-key", "--json"]
timeout = "5s"
key_via = "env"
key_env = "CHECK_KEY"
issuer = true
"#;
    let config = Config::parse(Path::new("t.toml"), text).unwrap();
    assert_eq!(config.providers.len(), 6);
    assert_eq!(
        config.provider("azure").unwrap().api_version(),
        "2024-10-21"
    );
    assert_eq!(
        config
            .provider("script")
            .unwrap()
            .exec
            .as_ref()
            .unwrap()
            .key_via,
        ExecKeyVia::Env
    );
}

#[test]
fn secrets_outside_headers_are_refused_with_positions() {
    let text = r#"[[provider]]
name = "x"
kind = "http"
base_url = "https://x"
[provider.http.check]
path = "/check?key={key}"
body = '{"k": "{key}"}'
headers = { Accept = "application/json" }
"#;
    let err = errors(text);
    assert!(
        err.contains("t.toml:6:8: [provider.http.check] `path` must not contain {key}"),
        "{err}"
    );
    assert!(
        err.contains("t.toml:7:8: [provider.http.check] `body` must not contain {key}"),
        "{err}"
    );
    assert!(err.contains("one header must carry the key"), "{err}");
}

#[test]
fn expiry_placeholders_only_as_whole_values_of_the_issue_body() {
    let text = r#"[[provider]]
name = "h"
kind = "http"
base_url = "https://h"
[provider.http.check]
path = "/c?until={expires_at}"
headers = { Authorization = "Bearer {key}" }
[provider.http.issue]
path = "/k"
headers = { Authorization = "Bearer {management_key}", X-Ttl = "{expires_in_seconds}" }
body = '{"name": "{name}", "note": "valid until {expires_at}", "ttl": {expires_in_seconds}}'
key_pointer = "/key"
[provider.http.revoke]
path = "/k/{id}"
body = '{"at": "{expires_at_unix}"}'
"#;
    let err = errors(text);
    for expected in [
        "t.toml:6:8: [provider.http.check] `path` must not contain {expires_at}",
        "t.toml:10:11: [provider.http.issue] header \"X-Ttl\" uses {expires_in_seconds}",
        "t.toml:11:8: [provider.http.issue] `body` has {expires_at} inside a longer string",
        "t.toml:15:8: [provider.http.revoke] `body` must not contain {expires_at_unix}",
    ] {
        assert!(err.contains(expected), "no {expected:?} in:\n{err}");
    }
    // The bare `ttl` is a whole JSON value: nothing is said about it.
    assert_eq!(err.matches("t.toml:").count(), 4, "{err}");
}

#[test]
fn misplaced_and_missing_kind_fields_are_reported() {
    let text = r#"[[provider]]
name = "x"
kind = "openai"
api_version = "2024-10-21"

[[provider]]
name = "h"
kind = "http"
base_url = "https://h"

[[provider]]
name = "e"
kind = "exec"
[provider.exec]
command = []
key_env = "1BAD"
"#;
    let err = errors(text);
    assert!(
        err.contains("t.toml:4:15: `api_version` only applies to kind azure_openai"),
        "{err}"
    );
    assert!(
        err.contains("needs a `[provider.http.check]` table"),
        "{err}"
    );
    assert!(err.contains("`command` must name a program"), "{err}");
    assert!(err.contains("`key_env` \"1BAD\""), "{err}");
}

#[test]
fn unknown_fields_in_sub_tables_are_errors() {
    let text = "[[provider]]\nname = \"e\"\nkind = \"exec\"\n[provider.exec]\ncommand = [\"x\"]\nkey_vai = \"env\"\n";
    let err = errors(text);
    assert!(
        err.contains("t.toml:6:1") && err.contains("unknown field"),
        "{err}"
    );
}

#[test]
fn issue_without_revoke_is_refused() {
    let text = r#"[[provider]]
name = "h"
kind = "http"
base_url = "https://h"
[provider.http.check]
path = "/c"
headers = { Authorization = "Bearer {key}" }
[provider.http.issue]
path = "/k"
method = "FETCH"
headers = { Authorization = "Bearer {key}" }
key_pointer = "key"
"#;
    let err = errors(text);
    assert!(err.contains("`issue` and `revoke` go together"), "{err}");
    assert!(err.contains("`method` must be one of"), "{err}");
    assert!(err.contains("uses {key}"), "{err}");
    assert!(
        err.contains("`key_pointer` must be a JSON pointer"),
        "{err}"
    );
}
