//! `keyrotd relay token new NAME`: a relay client's token, printed once with the
//! `[[relay.client]]` lines to paste into the config. Only the token's SHA-256 goes into
//! the config; the token itself is shown here and nowhere else (no argument, no log, no
//! file), so whoever runs the command hands it to the application's secret store.

use clap::Subcommand;
use secrecy::ExposeSecret;

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Relay client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Print a new random token for client NAME, once, and the config lines with its hash.
    New {
        /// The client's name (1-64 of A-Z a-z 0-9 - _ .), as routes' `clients` name it.
        name: String,
    },
}

pub(crate) fn run(command: RelayCommand) -> anyhow::Result<()> {
    match command {
        RelayCommand::Token(TokenCommand::New { name }) => new_token(&name),
    }
}

fn new_token(name: &str) -> anyhow::Result<()> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !plain {
        anyhow::bail!("client name {name:?} must be 1-64 characters of A-Z a-z 0-9 - _ .");
    }
    let (token, hash) = crate::relay::new_token();
    eprintln!("The token of relay client {name:?} (shown once; give it to the application, e.g. as its OPENAI_API_KEY):");
    println!("{}", token.expose_secret());
    eprintln!();
    eprintln!("Add to the config, then allow the client on routes with `clients = [\"{name}\"]`:");
    eprintln!();
    eprintln!("[[relay.client]]");
    eprintln!("name = \"{name}\"");
    eprintln!("token_sha256 = \"{hash}\"");
    Ok(())
}
