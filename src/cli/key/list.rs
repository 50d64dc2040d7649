//! `keyrotd key list`: every credential with its live keys (pending, current, previous),
//! for a glance at the whole fleet.

use crate::cli::render;
use crate::model::{Stage, UnixTime};
use crate::store::{CredentialRecord, KeyVersion, Store};

/// One line of the listing: a live key of a credential, or the credential alone when it
/// has none.
pub(crate) struct ListedKey {
    pub(crate) credential: CredentialRecord,
    pub(crate) version: Option<KeyVersion>,
    /// Why its rotation in flight needs attention, if it does.
    pub(crate) attention: Option<super::show::Attention>,
}

pub(super) async fn run(store: &dyn Store, json: bool, now: UnixTime) -> anyhow::Result<()> {
    let rows = live_keys(store).await?;
    if json {
        render::print_json(&render::json::key_list(&rows, now))
    } else {
        print!("{}", render::table::key_list(&rows, now));
        Ok(())
    }
}

async fn live_keys(store: &dyn Store) -> anyhow::Result<Vec<ListedKey>> {
    let snapshot = store.snapshot().await?;
    let attention = super::show::attention_by_credential(store).await?;
    let mut rows = Vec::new();
    for state in &snapshot.credentials {
        let attention = attention.get(&state.credential.name).cloned();
        let versions = store.versions(&state.credential.name).await?;
        let live: Vec<&KeyVersion> = versions
            .iter()
            .filter(|v| matches!(v.stage, Stage::Pending | Stage::Current | Stage::Previous))
            .collect();
        if live.is_empty() {
            rows.push(ListedKey {
                credential: state.credential.clone(),
                version: None,
                attention: attention.clone(),
            });
        }
        for version in live {
            rows.push(ListedKey {
                credential: state.credential.clone(),
                version: Some(version.clone()),
                attention: attention.clone(),
            });
        }
    }
    Ok(rows)
}
