//! `keyrotd key show NAME`: one credential in full — its check and rotation state and
//! every key version it ever had, revoked ones included.

use crate::cli::render;
use crate::model::UnixTime;
use crate::store::prelude::*;
use crate::store::SqliteStore;
use anyhow::Context;

pub(super) async fn run(
    store: &SqliteStore,
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
    if json {
        render::print_json(&render::json::key_show(&credential, &versions, &credits))
    } else {
        print!(
            "{}",
            render::table::key_show(&credential, &versions, &credits, now)
        );
        Ok(())
    }
}
