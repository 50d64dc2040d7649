//! `keyrotd master-key …`: the key that seals every stored secret. `generate` makes one;
//! `rotate` re-seals the store under a new one, for a suspected leak of the old key file.

use super::{actor, Setup};
use crate::crypto::{MasterKey, Sealer};
use crate::store::MasterKeyNeed;
use clap::Subcommand;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(crate) enum MasterKeyCommand {
    /// Write a new random 256-bit master key to PATH (mode 0600; never overwrites).
    Generate { path: PathBuf },
    /// Re-seal every stored secret under the key in NEW_KEY (made with `generate`), in one
    /// transaction; the current key comes from --master-key. Refused while a daemon runs on
    /// the database: stop it first, then install NEW_KEY in place of the old key file and
    /// start it again.
    Rotate {
        #[arg(long)]
        new_key: PathBuf,
    },
}

/// `master-key generate PATH`: needs no config, so it runs before one is loaded.
pub fn generate(path: &Path) -> anyhow::Result<()> {
    MasterKey::generate().write_new(path)?;
    println!("wrote a new master key to {}", path.display());
    Ok(())
}

/// `master-key rotate --new-key PATH`.
pub async fn rotate(new_key: &Path, setup: &Setup) -> anyhow::Result<()> {
    let new = Sealer::new(&MasterKey::load(new_key)?);
    // Refused while a daemon runs: it would go on sealing under the old key (the store's
    // fence would refuse those writes, but the daemon could not work until restarted).
    // SQLite only: replicas on PostgreSQL share no file to lock; there the store's
    // master-key fence alone stops them sealing under the old key.
    let _lock = match setup.config.store.is_postgres() {
        false => Some(crate::store::lock_exclusive(&setup.database)?),
        true => None,
    };
    let store = setup.open_store(MasterKeyNeed::Always).await?;
    let count = store
        .reseal(&new, &actor(), chrono::Utc::now().timestamp())
        .await?;
    store.close().await;
    println!(
        "re-sealed {count} secrets under {}; install it in place of the old master key before the daemon starts again",
        new_key.display()
    );
    Ok(())
}
