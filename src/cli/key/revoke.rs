//! `keyrotd key revoke NAME --version V`: ends one key version early, at the provider and
//! in the store (its secret is dropped); the engine refuses the current one.

use super::rotation_context;
use crate::cli::actor;
use crate::config::Config;
use crate::store::Store;
use anyhow::Context;
use std::sync::Arc;

pub(super) async fn run(
    config: &Config,
    store: Arc<dyn Store>,
    name: &str,
    version: i64,
) -> anyhow::Result<()> {
    let versions = store.versions(name).await?;
    let target = versions
        .iter()
        .find(|v| v.id == version)
        .with_context(|| format!("{name} has no version {version}"))?
        .clone();
    let (engine, runtime) = rotation_context(config, store, name)?;
    engine
        .revoke_version(&runtime, &target, &actor(), "revoked by an operator")
        .await?;
    println!(
        "revoked {} (version {version}) of {name}",
        target.fingerprint
    );
    Ok(())
}
