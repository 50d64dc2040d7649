//! `keyrotd reload --pid PID`: what `systemctl reload keyrotd` runs (`ExecReload=`). It
//! checks the config as the daemon's reload would (the file, the web config, every
//! provider's adapters built and dropped, every delivery target tried) and only then sends
//! the daemon SIGHUP, so a broken config fails `systemctl reload` itself with its position,
//! and the running daemon is left alone. `ExecReload=` runs in the service's sandbox, so a
//! target directory missing from `ReadWritePaths=` fails the reload as it would fail the
//! start. It needs no `kill(1)`, which a minimal system lacks.

use super::{ExitError, Setup, EXIT_CONFIG};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub(crate) fn run(setup: &Setup, pid: u32) -> anyhow::Result<()> {
    setup.web_config()?;
    crate::daemon::check_reloadable(&setup.config).map_err(|error| ExitError {
        code: EXIT_CONFIG,
        message: format!("{}: {error:#}", setup.config_path.display()),
    })?;
    super::run::preflight(setup)?;
    // clap keeps the pid at 2 or more: 0 and -1 would signal a process group or every
    // process this user may signal, and 1 is init.
    let pid = i32::try_from(pid).map_err(|_| anyhow::anyhow!("pid {pid} is out of range"))?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|error| anyhow::anyhow!("cannot signal keyrotd (pid {pid}): {error}"))?;
    println!(
        "{}: ok; keyrotd (pid {pid}) told to reload it",
        setup.config_path.display()
    );
    Ok(())
}
