//! `keyrotd store …`: operations on a store as a whole rather than on its keys. Each
//! subcommand has a file of its own; this one holds their clap types.
//!
//! - [`copy`]: `store copy --from LOCATION --to LOCATION`, moving an installation between
//!   SQLite and PostgreSQL.
//! - [`location`]: the locations those flags take.

mod copy;
mod location;

use clap::Subcommand;
pub(crate) use copy::CopyArgs;

/// The details of `store copy --help`. After the options rather than a long description,
/// so `-h` shows them too and the options keep their one-line form.
const COPY_HELP: &str = "\
Locations are sqlite:PATH or postgres://USER@HOST[:PORT]/DATABASE[?sslmode=MODE]. A password is
never part of the URL: it is read from --from-password-file / --to-password-file, else from
$PGPASSWORD.

Sealed secrets are copied as they are, never opened: no master key is needed here, but the SAME
master key must be installed on the new host(s) (e.g. as the `master-key` systemd credential),
or they cannot open a single key. The installation's identity is copied too, so the new store
recognises the keys this installation issued at the providers.

Refused, with nothing written, when the target holds any data, when both locations name one
store, or while a keyrotd daemon runs on an SQLite source or target (or a replica leads on a
PostgreSQL one): stop keyrotd, copy, then start it on the new store.";

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Copy an installation into a new, empty store: SQLite to PostgreSQL (one host to HA)
    /// or back.
    #[command(after_help = COPY_HELP)]
    Copy(CopyArgs),
}

/// Runs one `store` subcommand. None needs the config: a copy names both stores itself.
pub(crate) async fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Copy(args) => copy::run(args).await,
    }
}
