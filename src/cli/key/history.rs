//! `keyrotd key history NAME`: the audit trail of one credential — who imported, rotated,
//! rolled back or revoked what, and when.

use crate::cli::render;
use crate::store::Store;
use anyhow::bail;

pub(super) async fn run(store: &dyn Store, name: &str, json: bool) -> anyhow::Result<()> {
    if store.credential(name).await?.is_none() {
        bail!("unknown credential {name:?}");
    }
    let events = store.events(name).await?;
    if json {
        render::print_json(&render::json::key_history(&events))
    } else {
        print!("{}", render::table::key_history(&events));
        Ok(())
    }
}
