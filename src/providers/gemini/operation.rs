//! Google's long-running operations (`google.longrunning.Operation`): `keys.create` and
//! `keys.delete` answer `{name: "operations/…", done: false}` at once, and the result comes
//! later from `GET /v2/{name}`: `done` with `response` (the Key) or `error` (a
//! `google.rpc.Status`, `{code, message}`).
//!
//! Polling is bounded in total time, with a doubling pause between polls, so a stuck
//! operation costs a rotation a known wait, then a transient failure; the orphan sweep of
//! the next attempt finds a key the operation still creates afterwards by its name.

use super::super::sanitize::sanitize;
use super::super::ProviderError;
use serde_json::Value;
use std::time::Duration;

/// The first pause between polls; doubled after each poll up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// Where an operation stands after one look at it.
#[derive(Debug)]
pub(super) enum State {
    Running,
    /// `done` with `response` (the operation's result, e.g. the created Key).
    Succeeded(Value),
    /// `done` with `error`: classified as an HTTP answer with the same meaning would be.
    Failed(ProviderError),
}

/// Reads an operation body (the answer of create/delete or of `GET /v2/{operation}`).
pub(super) fn state(body: &Value, what: &str) -> Result<State, ProviderError> {
    if !body.get("done").and_then(Value::as_bool).unwrap_or(false) {
        // An operation that is not done must at least be one we can ask about again.
        operation_name(body, what)?;
        return Ok(State::Running);
    }
    if let Some(error) = body.get("error") {
        return Ok(State::Failed(failure(error, what)));
    }
    match body.get("response") {
        Some(response) => Ok(State::Succeeded(response.clone())),
        None => Err(ProviderError::Malformed(format!(
            "{what}: operation done without `response` or `error`"
        ))),
    }
}

/// The operation's `name`, checked to be a relative resource path that can go into a URL
/// unescaped (`operations/akmf.p7-…`): it comes from the peer.
pub(super) fn operation_name<'a>(body: &'a Value, what: &str) -> Result<&'a str, ProviderError> {
    body.get("name")
        .and_then(Value::as_str)
        .filter(|name| name.starts_with("operations/") && resource_path(name))
        .ok_or_else(|| {
            ProviderError::Malformed(format!("{what}: no usable operation `name` in the answer"))
        })
}

/// A relative resource name made of plain segments: no empty, `.` or `..` segment, nothing a
/// URL would read as a query, fragment or escape.
pub(super) fn resource_path(name: &str) -> bool {
    !name.is_empty()
        && name.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
        })
}

/// `google.rpc.Status` → the error an HTTP answer with that code would give, so
/// [`ProviderError::is_transient`] judges both alike (the mapping is Google's own, from
/// `google/rpc/code.proto`). The message is cut and sanitised like any vendor message.
fn failure(error: &Value, what: &str) -> ProviderError {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(2);
    let (status, name) = match code {
        1 => (499, "CANCELLED"),
        3 => (400, "INVALID_ARGUMENT"),
        4 => (504, "DEADLINE_EXCEEDED"),
        5 => (404, "NOT_FOUND"),
        6 => (409, "ALREADY_EXISTS"),
        7 => (403, "PERMISSION_DENIED"),
        8 => (429, "RESOURCE_EXHAUSTED"),
        9 => (400, "FAILED_PRECONDITION"),
        10 => (409, "ABORTED"),
        11 => (400, "OUT_OF_RANGE"),
        12 => (501, "UNIMPLEMENTED"),
        14 => (503, "UNAVAILABLE"),
        16 => (401, "UNAUTHENTICATED"),
        // 2 UNKNOWN, 13 INTERNAL, 15 DATA_LOSS and codes this list does not know.
        _ => (500, "INTERNAL"),
    };
    let message: String = error
        .get("message")
        .and_then(Value::as_str)
        .map(|m| sanitize(m, None).chars().take(120).collect())
        .unwrap_or_default();
    ProviderError::Rejected {
        status,
        detail: sanitize(
            &format!("{what}: operation failed with {name} ({code}): {message}"),
            None,
        ),
        retry_after: None,
    }
}

/// The pauses between polls within `bound`: `FIRST_PAUSE`, doubling, capped, and never past
/// the bound. `None` once the bound is spent.
pub(super) struct Pauses {
    next: Duration,
    deadline: tokio::time::Instant,
}

impl Pauses {
    pub(super) fn within(bound: Duration) -> Pauses {
        Pauses {
            next: FIRST_PAUSE,
            deadline: tokio::time::Instant::now() + bound,
        }
    }

    /// Waits before the next poll; `false` when the bound leaves no time for one.
    pub(super) async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        let pause = self.next.min(self.deadline - now);
        self.next = (self.next * 2).min(LONGEST_PAUSE);
        tokio::time::sleep(pause).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_are_read_as_running_succeeded_or_failed() {
        let running = json!({"name": "operations/akmf.p7-1-2", "done": false});
        assert!(matches!(state(&running, "issue"), Ok(State::Running)));
        let no_done = json!({"name": "operations/akmf.p7-1-2"});
        assert!(matches!(state(&no_done, "issue"), Ok(State::Running)));
        let done = json!({"name": "operations/x", "done": true, "response": {"name": "k"}});
        assert!(matches!(state(&done, "issue"), Ok(State::Succeeded(r)) if r["name"] == "k"));
        let failed = json!({"name": "operations/x", "done": true,
            "error": {"code": 8, "message": "Quota exceeded for apikeys"}});
        match state(&failed, "issue") {
            Ok(State::Failed(err)) => {
                assert!(err.is_transient());
                assert!(err.to_string().contains("RESOURCE_EXHAUSTED"), "{err}");
            }
            other => panic!("{other:?}"),
        }
        let denied = json!({"done": true, "error": {"code": 7, "message": "denied"}});
        assert!(matches!(state(&denied, "issue"), Ok(State::Failed(e)) if !e.is_transient()));
        assert!(state(&json!({"done": true}), "issue").is_err());
        // A running operation must be named so that it can be asked about again.
        assert!(state(&json!({"done": false}), "issue").is_err());
        assert!(state(&json!({"name": "operations/../x", "done": false}), "issue").is_err());
        assert!(state(&json!({"name": "operations/a?b", "done": false}), "issue").is_err());
        assert!(state(&json!({"name": "projects/p", "done": false}), "issue").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_a_cap_and_end_at_the_bound() {
        let started = tokio::time::Instant::now();
        let mut pauses = Pauses::within(Duration::from_secs(12));
        let mut at = Vec::new();
        while pauses.wait().await {
            at.push((tokio::time::Instant::now() - started).as_millis());
        }
        // 0.25, 0.5, 1, 2, 4, 5 (capped) … and the last pause ends at the bound.
        assert_eq!(at, [250, 750, 1750, 3750, 7750, 12000]);
    }
}
