//! `keyrotd key rollback NAME`: the way back when a new key breaks its consumers — the
//! previous key, still inside its grace period, becomes current again.

use super::rotation_context;
use crate::cli::actor;
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;

pub(super) async fn run(config: &Config, store: Arc<dyn Store>, name: &str) -> anyhow::Result<()> {
    let (engine, runtime) = rotation_context(config, store, name)?;
    let restored = engine.rollback(&runtime, &actor()).await?;
    println!(
        "rolled back {name}: {} (version {}) is current again",
        restored.fingerprint, restored.id
    );
    Ok(())
}
