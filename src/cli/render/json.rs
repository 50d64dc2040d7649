//! JSON records for scripts (`--json`): the same rows as the tables, with raw Unix times
//! and numbers instead of human ages. Field names are an interface: scripts parse them.

use crate::cli::check::CheckRow;
use crate::cli::key::list::ListedKey;
use crate::cli::key::show::Attention;
use crate::model::UnixTime;
use crate::store::{CredentialRecord, Event, KeyVersion, Rotation};
use serde_json::{json, Value};

/// `keyrotd key list --json`.
pub(crate) fn key_list(rows: &[ListedKey], now: UnixTime) -> Value {
    rows.iter()
        .map(|ListedKey { credential: c, version: v, attention }| {
            json!({
                "credential": c.name,
                "provider": c.provider,
                "stage": v.as_ref().map(|v| v.stage.as_str()),
                "version": v.as_ref().map(|v| v.id),
                "fingerprint": v.as_ref().map(|v| &v.fingerprint),
                "created_at": v.as_ref().map(|v| v.created_at),
                "age_seconds": v.as_ref().map(|v| now - v.created_at),
                "expires_at": v.as_ref().and_then(|v| v.expires_at),
                "last_check_at": v.as_ref().and_then(|v| v.last_check_at),
                "last_check_status": v.as_ref().and_then(|v| v.last_check_status).map(|s| s.as_str()),
                "needs_attention": attention.is_some(),
            })
        })
        .collect()
}

/// Balances as `{unit, remaining}` and a period's spend ([`crate::model::usage_unit`]) as
/// `{unit, period, used}`, apart: a spend must never read as credit left.
fn credit_and_usage<'a>(entries: impl Iterator<Item = (&'a str, f64)>) -> (Vec<Value>, Vec<Value>) {
    let (mut credit, mut usage) = (Vec::new(), Vec::new());
    for (unit, amount) in entries {
        match crate::model::split_usage_unit(unit) {
            Some((unit, period)) => {
                usage.push(json!({ "unit": unit, "period": period, "used": amount }))
            }
            None => credit.push(json!({ "unit": unit, "remaining": amount })),
        }
    }
    (credit, usage)
}

/// `keyrotd key show --json`.
pub(crate) fn key_show(
    credential: &CredentialRecord,
    versions: &[KeyVersion],
    credits: &[(String, f64)],
    attention: Option<&Attention>,
    in_flight: Option<&Rotation>,
) -> Value {
    let items: Vec<_> = versions.iter().map(version).collect();
    let (credits, usage) = credit_and_usage(credits.iter().map(|(u, v)| (u.as_str(), *v)));
    json!({
        "credential": credential.name,
        "provider": credential.provider,
        "provider_kind": credential.provider_kind,
        "check_status": credential.check_status.map(|s| s.as_str()),
        "valid": credential.valid,
        "last_check_at": credential.last_check_at,
        "next_rotation_at": credential.next_rotation_at,
        "last_rotated_at": credential.last_rotated_at,
        "consecutive_failures": credential.consecutive_failures,
        "credit": credits,
        "usage": usage,
        "needs_attention": attention.map(|a| json!({"rotation": a.rotation, "reason": a.reason})),
        "in_flight": in_flight.map(|r| json!({
            "rotation": r.id,
            "kind": r.kind.as_str(),
            "step": r.step.as_str(),
            "started_at": r.started_at,
            "owner": r.owner,
            "owner_epoch": r.owner_epoch,
            "lease_expires_at": r.lease_expires_at,
        })),
        "versions": items,
    })
}

fn version(v: &KeyVersion) -> Value {
    json!({
        "version": v.id,
        "stage": v.stage.as_str(),
        "fingerprint": v.fingerprint,
        "provider_key_id": v.provider_key_id,
        "rotation_id": v.rotation_id,
        "created_at": v.created_at,
        "expires_at": v.expires_at,
        "stage_changed_at": v.stage_changed_at,
        "last_check_at": v.last_check_at,
        "last_check_status": v.last_check_status.map(|s| s.as_str()),
        "has_secret": v.has_secret,
    })
}

/// `keyrotd key history --json`.
pub(crate) fn key_history(events: &[Event]) -> Value {
    events
        .iter()
        .map(|e| json!({"id": e.id, "at": e.at, "kind": e.kind, "actor": e.actor, "version": e.version_id, "detail": e.detail}))
        .collect()
}

/// `keyrotd check --json`: a credential that was not probed has a null status and the
/// reason as its detail.
pub(crate) fn check(rows: &[CheckRow]) -> Value {
    rows.iter()
        .map(|CheckRow { target: t, outcome }| {
            let o = outcome.as_ref().ok();
            let detail = match outcome {
                Ok(o) => &o.report.detail,
                Err(error) => error,
            };
            json!({
                "credential": t.credential,
                "provider": t.provider_name,
                "fingerprint": o.map(|o| &o.fingerprint),
                "status": o.map(|o| o.report.status.as_str()),
                "detail": detail,
                "http_status": o.and_then(|o| o.report.http_status),
                "retry_after_seconds": o.and_then(|o| o.report.retry_after).map(|d| d.as_secs()),
                "credit": o.map(|o| credit_and_usage(o.report.credit.iter().map(|c| (c.unit.as_str(), c.remaining))).0),
                "usage": o.map(|o| credit_and_usage(o.report.credit.iter().map(|c| (c.unit.as_str(), c.remaining))).1),
                "expires_at": o.and_then(|o| o.report.expires_at),
            })
        })
        .collect()
}
