//! A small fake of Google Cloud's API Keys v2 API and of the Gemini API's model listing, on
//! one local server, answering with the shapes Google documents:
//!
//! - `POST /v2/projects/{p}/locations/global/keys` `{displayName, restrictions, annotations}`
//!   → an operation `{name: "operations/…", done: false}`; the key exists (and is listed)
//!   from then on, as Google makes no promise that it does not;
//! - `GET /v2/operations/{id}` → the operation, `done` once it has been polled
//!   [`Fake::polls_until_done`] times (never while [`Fake::hold`] is set), with `response`
//!   (the Key, `keyString` included unless [`Fake::omit_key_string`]) or `error`
//!   `{code, message}` (see [`Fake::fail_next_create`]);
//! - `GET /v2/{key}`, `GET /v2/{key}/keyString`, `GET …/keys?pageSize=&pageToken=` (deleted
//!   keys left out), `DELETE /v2/{key}` (an operation; a soft delete; 404 when unknown or
//!   deleted already);
//! - `GET /v1beta/models` with `x-goog-api-key`: 200 `{models: []}` for a live key, else
//!   400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`;
//! - errors as `{error: {code, message, status, details}}`; a wrong bearer token is 401
//!   `UNAUTHENTICATED`.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use wiremock::{Request, Respond, ResponseTemplate};

/// Google names keys by project *number*, whatever the caller used.
pub const PROJECT_NUMBER: &str = "123456789012";

#[derive(Clone, Debug)]
pub struct Key {
    pub name: String,
    pub display_name: String,
    pub annotations: Value,
    pub restrictions: Value,
    pub key_string: String,
    pub deleted: bool,
}

#[derive(Clone, Debug)]
struct Operation {
    name: String,
    polls: u32,
    /// The key created, or `None` for a delete.
    key: Option<String>,
    error: Option<(i64, String)>,
}

#[derive(Default)]
struct State {
    token: String,
    keys: Vec<Key>,
    operations: Vec<Operation>,
    next: u32,
    hold: bool,
    polls_until_done: u32,
    omit_key_string: bool,
    fail_next_create: Option<(i64, String)>,
    page_size: Option<usize>,
}

/// The fake; clone it freely (one shared state).
#[derive(Clone)]
pub struct Fake(Arc<Mutex<State>>);

fn google_error(status: u16, code_name: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({"error": {
        "code": status, "message": message, "status": code_name,
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": code_name, "domain": "googleapis.com"}]}}))
}

impl Fake {
    /// A fake accepting `token` as the bearer token.
    pub fn new(token: &str) -> Fake {
        Fake(Arc::new(Mutex::new(State {
            token: token.to_string(),
            polls_until_done: 1,
            ..State::default()
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While set, no operation is ever `done`.
    pub fn hold(&self, hold: bool) {
        self.state().hold = hold;
    }

    pub fn polls_until_done(&self, polls: u32) {
        self.state().polls_until_done = polls;
    }

    pub fn omit_key_string(&self, omit: bool) {
        self.state().omit_key_string = omit;
    }

    /// The next create's operation ends in `error {code, message}` (no key is made).
    pub fn fail_next_create(&self, code: i64, message: &str) {
        self.state().fail_next_create = Some((code, message.to_string()));
    }

    /// Answers listings in pages of `size` keys.
    pub fn page_size(&self, size: usize) {
        self.state().page_size = Some(size);
    }

    /// Adds a live key made by hand (not by keyrotd); returns its resource name.
    pub fn add_key(&self, display_name: &str, key_string: &str, restrictions: Value) -> String {
        let mut state = self.state();
        state.next += 1;
        let name = format!(
            "projects/{PROJECT_NUMBER}/locations/global/keys/hand-{}",
            state.next
        );
        state.keys.push(Key {
            name: name.clone(),
            display_name: display_name.to_string(),
            annotations: json!({}),
            restrictions,
            key_string: key_string.to_string(),
            deleted: false,
        });
        name
    }

    pub fn keys(&self) -> Vec<Key> {
        self.state().keys.clone()
    }

    pub fn live_keys(&self) -> Vec<Key> {
        self.keys().into_iter().filter(|k| !k.deleted).collect()
    }

    pub fn is_live(&self, key_string: &str) -> bool {
        self.live_keys().iter().any(|k| k.key_string == key_string)
    }

    /// Operations asked for, and how many are not done.
    pub fn operations_pending(&self) -> usize {
        let state = self.state();
        state
            .operations
            .iter()
            .filter(|op| op.polls < state.polls_until_done || state.hold)
            .count()
    }

    fn key_json(key: &Key, with_string: bool) -> Value {
        let mut value = json!({
            "name": key.name,
            "uid": key.name.rsplit('/').next().unwrap(),
            "displayName": key.display_name,
            "createTime": "2026-11-30T04:00:00.000Z",
            "updateTime": "2026-11-30T04:00:00.000Z",
            "annotations": key.annotations,
            "restrictions": key.restrictions,
            "etag": "W/\"abc\"",
        });
        if key.deleted {
            value["deleteTime"] = json!("2026-11-30T05:00:00.000Z");
        }
        if with_string {
            value["keyString"] = json!(key.key_string);
        }
        value
    }

    fn operation_json(state: &State, op: &Operation) -> Value {
        let done = !state.hold && op.polls >= state.polls_until_done;
        let mut value = json!({
            "name": op.name,
            "metadata": {"@type": "type.googleapis.com/google.api.apikeys.v2.OperationMetadata"},
            "done": done,
        });
        if done {
            if let Some((code, message)) = &op.error {
                value["error"] = json!({"code": code, "message": message});
            } else if let Some(key) = &op.key {
                let key = state.keys.iter().find(|k| &k.name == key).unwrap();
                let mut response = Self::key_json(key, !state.omit_key_string);
                response["@type"] = json!("type.googleapis.com/google.api.apikeys.v2.Key");
                value["response"] = response;
            } else {
                value["response"] = json!({"@type": "type.googleapis.com/google.protobuf.Empty"});
            }
        }
        value
    }

    fn new_operation(
        state: &mut State,
        key: Option<String>,
        error: Option<(i64, String)>,
    ) -> Value {
        state.next += 1;
        let op = Operation {
            name: format!("operations/akmf.p7-{PROJECT_NUMBER}-{:04}", state.next),
            polls: 0,
            key,
            error,
        };
        state.operations.push(op.clone());
        Self::operation_json(state, &op)
    }

    fn models(state: &State, request: &Request) -> ResponseTemplate {
        let key = request
            .headers
            .get("x-goog-api-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if state.keys.iter().any(|k| !k.deleted && k.key_string == key) {
            ResponseTemplate::new(200).set_body_json(json!({"models": [
                {"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}]}))
        } else {
            ResponseTemplate::new(400).set_body_json(json!({"error": {
                "code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}}))
        }
    }

    fn api_keys(state: &mut State, request: &Request, path: &str) -> ResponseTemplate {
        let method = request.method.as_str();
        let segments: Vec<&str> = path.split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["operations", _]) => {
                let Some(index) = state.operations.iter().position(|op| op.name == path) else {
                    return google_error(404, "NOT_FOUND", "Operation not found");
                };
                state.operations[index].polls += 1;
                let op = state.operations[index].clone();
                ResponseTemplate::new(200).set_body_json(Self::operation_json(state, &op))
            }
            ("POST", ["projects", _, "locations", "global", "keys"]) => {
                let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
                let Some(display_name) = body["displayName"].as_str() else {
                    return google_error(400, "INVALID_ARGUMENT", "displayName is required");
                };
                if display_name.chars().count() > 63 {
                    return google_error(
                        400,
                        "INVALID_ARGUMENT",
                        "The display name must be at most 63 characters long.",
                    );
                }
                if let Some(error) = state.fail_next_create.take() {
                    return ResponseTemplate::new(200).set_body_json(Self::new_operation(
                        state,
                        None,
                        Some(error),
                    ));
                }
                state.next += 1;
                let key = Key {
                    name: format!(
                        "projects/{PROJECT_NUMBER}/locations/global/keys/k-{:04}",
                        state.next
                    ),
                    display_name: display_name.to_string(),
                    annotations: body.get("annotations").cloned().unwrap_or(json!({})),
                    restrictions: body.get("restrictions").cloned().unwrap_or(json!({})),
                    key_string: format!("AIzaSyFake{:04}{}", state.next, "x".repeat(25)),
                    deleted: false,
                };
                let name = key.name.clone();
                state.keys.push(key);
                ResponseTemplate::new(200).set_body_json(Self::new_operation(
                    state,
                    Some(name),
                    None,
                ))
            }
            ("GET", ["projects", _, "locations", "global", "keys"]) => {
                let live: Vec<Value> = state
                    .keys
                    .iter()
                    .filter(|k| !k.deleted)
                    .map(|k| Self::key_json(k, false))
                    .collect();
                let query = |name: &str| {
                    request
                        .url
                        .query_pairs()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.to_string())
                };
                let asked: usize = query("pageSize")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(300);
                let size = state.page_size.unwrap_or(asked).min(asked).max(1);
                let start: usize = query("pageToken")
                    .map(|t| t.trim_start_matches("page-").parse().unwrap())
                    .unwrap_or(0);
                let end = (start + size).min(live.len());
                let mut body = json!({});
                if end > start {
                    body["keys"] = json!(live[start..end]);
                }
                if end < live.len() {
                    body["nextPageToken"] = json!(format!("page-{end}"));
                }
                ResponseTemplate::new(200).set_body_json(body)
            }
            (_, ["projects", _, "locations", "global", "keys", id, rest @ ..]) => {
                let Some(index) = state
                    .keys
                    .iter()
                    .position(|k| k.name.ends_with(&format!("/keys/{id}")))
                else {
                    return google_error(404, "NOT_FOUND", "Key not found");
                };
                match (method, rest) {
                    ("GET", []) => ResponseTemplate::new(200)
                        .set_body_json(Self::key_json(&state.keys[index], false)),
                    ("GET", ["keyString"]) if !state.keys[index].deleted => {
                        ResponseTemplate::new(200)
                            .set_body_json(json!({"keyString": state.keys[index].key_string}))
                    }
                    ("DELETE", []) if !state.keys[index].deleted => {
                        state.keys[index].deleted = true;
                        ResponseTemplate::new(200)
                            .set_body_json(Self::new_operation(state, None, None))
                    }
                    ("GET" | "DELETE", _) => google_error(404, "NOT_FOUND", "Key not found"),
                    _ => google_error(405, "METHOD_NOT_ALLOWED", "no such method"),
                }
            }
            _ => google_error(404, "NOT_FOUND", "no such resource"),
        }
    }
}

impl Respond for Fake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut state = self.state();
        let path = request.url.path().to_string();
        if path.ends_with("/v1beta/models") && request.method.as_str() == "GET" {
            return Self::models(&state, request);
        }
        let Some(path) = path.strip_prefix("/v2/") else {
            return google_error(404, "NOT_FOUND", "no such resource");
        };
        let expected = format!("Bearer {}", state.token);
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(expected.as_str()) {
            return google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            );
        }
        Self::api_keys(&mut state, request, path)
    }
}

/// Mounts `fake` as the whole of `server`.
pub async fn mount(fake: &Fake, server: &wiremock::MockServer) {
    wiremock::Mock::given(wiremock::matchers::any())
        .respond_with(fake.clone())
        .mount(server)
        .await;
}
