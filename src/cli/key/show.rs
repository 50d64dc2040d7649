//! `keyrotd key show NAME`: one credential in full — its check and rotation state, the
//! rotation in flight with the process that owns it and its lease, and every key version it
//! ever had, revoked ones included.

use crate::cli::render;
use crate::model::UnixTime;
use crate::store::Store;
use anyhow::Context;
use std::collections::HashMap;

/// A rotation waiting in `attention`: a delivery target did not take the current key back
/// after a failed rotation, so both keys stay live and nothing is revoked.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) rotation: String,
    /// Which targets failed, and why (never key material).
    pub(crate) reason: String,
}

/// The rotations in attention, by credential (a read of the unfinished rotations only).
pub(crate) async fn attention_by_credential(
    store: &dyn Store,
) -> anyhow::Result<HashMap<String, Attention>> {
    Ok(store
        .rotations_in_flight()
        .await?
        .into_iter()
        .filter(|r| r.step == crate::store::RotationStep::Attention)
        .map(|r| {
            (
                r.credential,
                Attention {
                    rotation: r.id,
                    reason: r.error.unwrap_or_default(),
                },
            )
        })
        .collect())
}

pub(super) async fn run(
    store: &dyn Store,
    name: &str,
    json: bool,
    now: UnixTime,
) -> anyhow::Result<()> {
    let credential = store
        .credential(name)
        .await?
        .with_context(|| format!("unknown credential {name:?}"))?;
    let versions = store.versions(name).await?;
    let credits = store.credits(name).await?;
    let attention = attention_by_credential(store).await?.remove(name);
    // Who drives the credential's rotation now, and until when: what an operator asks when a
    // `key rotate` answers that another process's rotation is in flight.
    let in_flight = store
        .rotations_in_flight()
        .await?
        .into_iter()
        .find(|r| r.credential == name);
    if json {
        render::print_json(&render::json::key_show(
            &credential,
            &versions,
            &credits,
            attention.as_ref(),
            in_flight.as_ref(),
        ))
    } else {
        print!(
            "{}",
            render::table::key_show(
                &credential,
                &versions,
                &credits,
                attention.as_ref(),
                in_flight.as_ref(),
                now
            )
        );
        Ok(())
    }
}
