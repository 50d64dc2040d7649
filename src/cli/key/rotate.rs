//! `keyrotd key rotate NAME`: a rotation now, outside the schedule — after a suspected
//! leak, say — through the same engine and steps as a scheduled one.

use super::rotation_context;
use crate::cli::actor;
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;

pub(super) async fn run(config: &Config, store: Arc<dyn Store>, name: &str) -> anyhow::Result<()> {
    let (engine, runtime) = rotation_context(config, store, name)?;
    let rotated = engine.rotate(&runtime, &actor()).await?;
    if let Some(previous) = &rotated.taken_over_from {
        println!(
            "took over rotation {} of {name} from {previous} (its lease had expired) and finished it",
            rotated.rotation_id
        );
    }
    println!(
        "rotated {name}: {} is current (rotation {})",
        rotated.fingerprint, rotated.rotation_id
    );
    Ok(())
}
