//! `keyrotd run`: the daemon, with the config, database, master key and web config the
//! command line named.

use super::Setup;
use crate::daemon::{self, DaemonSettings};

pub(crate) async fn run(setup: Setup) -> anyhow::Result<()> {
    let web_config = setup.web_config()?;
    daemon::run(DaemonSettings {
        config_path: setup.config_path,
        config: setup.config,
        database: setup.database,
        master_key: setup.master_key,
        web_config,
    })
    .await
}
