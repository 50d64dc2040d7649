//! `keyrotd check-config`: validates the config (and the web config it names) without
//! starting anything, so a deployment can test a change before reloading the daemon. A
//! bad file has already failed with exit status 78 by the time this runs. `--preflight`
//! also tries every delivery target as this process ([`crate::delivery::preflight`]).
//! Valid but risky choices (a provider that cannot revoke replaced keys, a relay socket
//! every local user may connect to) are warned about on stderr.

use super::Setup;

pub(crate) fn run(setup: &Setup, preflight: bool) -> anyhow::Result<()> {
    if preflight {
        super::run::preflight(setup)?;
    }
    if let Some(web) = setup.web_config()? {
        println!("{}: ok", web.file().display());
    }
    let warnings = revocation_warnings(&setup.config)
        .into_iter()
        .chain(relay_socket_warning(&setup.config));
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "{}: ok ({} providers, {} credentials)",
        setup.config_path.display(),
        setup.config.providers.len(),
        setup.config.credentials.len()
    );
    Ok(())
}

/// Providers in use that cannot revoke a replaced key: their credentials' old keys are
/// retired locally (secret dropped) and stay live at the provider until someone deactivates
/// them there. Not an error: the config is valid, but the operator should know.
fn revocation_warnings(config: &crate::config::Config) -> Vec<String> {
    config
        .providers
        .iter()
        .filter(|provider| !crate::providers::revokes_keys(provider))
        .filter_map(|provider| {
            let used = config
                .credentials
                .iter()
                .filter(|c| c.provider() == provider.name())
                .count();
            (used > 0).then(|| {
                format!(
                    "provider {:?} ({}) has no revocation API configured: keys its {used} credential(s) replace are retired locally and stay live at the provider until deactivated there",
                    provider.name(),
                    provider.kind.as_str()
                )
            })
        })
        .collect()
}

/// A relay socket whose mode lets every local user connect. Valid: each request still needs a
/// client's token or a listed peer uid, exactly as on the loopback `listen`, which every
/// local user can reach too. But it is wider than the default, so the operator should know.
fn relay_socket_warning(config: &crate::config::Config) -> Option<String> {
    let relay = config.relay()?;
    let socket = relay.socket.as_ref()?;
    let mode = relay.socket_mode();
    (mode & 0o002 != 0).then(|| {
        format!(
            "relay `socket_mode` {mode:04o} lets every local user connect to {}: as on a loopback `listen`, only a client token or a listed peer uid stands between them and the pooled keys (\"0660\" limits connections to the socket's group)",
            socket.get_ref().display()
        )
    })
}
