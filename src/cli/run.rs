//! `keyrotd run`: the daemon, with the config, database, master key and web config the
//! command line named.

use super::{ExitError, Setup, EXIT_CONFIG};
use crate::daemon::{self, DaemonSettings};
use crate::delivery::preflight::preflight as check_targets;

pub(crate) async fn run(setup: Setup) -> anyhow::Result<()> {
    // A target that cannot work would fail every rotation of its credential, found days
    // later; refuse to start instead, with every problem named (exit 78: restarting does
    // not fix a missing ReadWritePaths= or an impossible chown).
    preflight(&setup)?;
    let web_config = setup.web_config()?;
    let location = setup.location()?;
    daemon::run(DaemonSettings {
        config_path: setup.config_path,
        config: setup.config,
        location,
        master_key: setup.master_key,
        web_config,
    })
    .await
}

/// Checks every delivery target of the config ([`check_targets`]); every problem goes to
/// the log and the error, and the error exits with [`EXIT_CONFIG`].
pub(crate) fn preflight(setup: &Setup) -> anyhow::Result<()> {
    let problems = check_targets(&setup.config);
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        tracing::error!(
            credential = %problem.credential,
            target = %problem.target,
            path = %problem.path.display(),
            "delivery preflight: {}",
            problem.message
        );
    }
    let lines: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    Err(ExitError {
        code: EXIT_CONFIG,
        message: format!(
            "{}: {} delivery target problem(s); no delivery to these targets could succeed:\n{}",
            setup.config_path.display(),
            problems.len(),
            lines.join("\n")
        ),
    }
    .into())
}
