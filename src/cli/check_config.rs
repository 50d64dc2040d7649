//! `keyrotd check-config`: validates the config (and the web config it names) without
//! starting anything, so a deployment can test a change before reloading the daemon. A
//! bad file has already failed with exit status 78 by the time this runs. `--preflight`
//! also tries every delivery target as this process ([`crate::delivery::preflight`]).

use super::Setup;

pub(crate) fn run(setup: &Setup, preflight: bool) -> anyhow::Result<()> {
    if preflight {
        super::run::preflight(setup)?;
    }
    if let Some(web) = setup.web_config()? {
        println!("{}: ok", web.file().display());
    }
    println!(
        "{}: ok ({} providers, {} credentials)",
        setup.config_path.display(),
        setup.config.providers.len(),
        setup.config.credentials.len()
    );
    Ok(())
}
