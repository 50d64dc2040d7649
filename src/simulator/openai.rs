//! The simulator's one OpenAI-shaped endpoint, for a key's own use rather than its
//! management: `GET /v1/models`, so that a request an application sends through the relay
//! (the demo's `curl`) reaches something that answers as a model API does. Authorised by
//! the key itself, like a check, and counted, delayed and failed as a check is: a vendor
//! serves both from the same API.

use super::{error, json_reply, Reply, Shared};
use hyper::StatusCode;
use serde_json::json;

/// `GET /v1/models`: OpenAI's list shape with one model, or its 401 for a dead key.
pub(super) fn models(shared: &Shared, secret: Option<&str>) -> Reply {
    let now = shared.clock.now();
    match secret.and_then(|secret| shared.lookup(secret)) {
        Some(record) if record.is_live(now) => json_reply(
            StatusCode::OK,
            json!({
                "object": "list",
                "data": [{
                    "id": "sim-small",
                    "object": "model",
                    "created": 0,
                    "owned_by": "keyrotd-simulator",
                }],
            }),
        ),
        _ => error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Incorrect API key provided.",
        ),
    }
}
