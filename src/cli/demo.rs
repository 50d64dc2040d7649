//! `keyrotd demo`: the command-line face of [`crate::demo`]. It needs no config, so it
//! runs before one is loaded.

use crate::config;
use crate::demo::{self, DemoOptions};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's state in this directory (default: a temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where to serve /metrics.
    #[arg(long, default_value = config::DEFAULT_LISTEN_ADDRESS)]
    listen_address: SocketAddr,
    /// When the demo credentials rotate: a cron expression, 5 fields or 6 with seconds
    /// first (UTC). "*/10 * * * * *" rotates every 10 seconds.
    #[arg(long, default_value = demo::DEFAULT_SCHEDULE, value_name = "CRON")]
    schedule: String,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    demo::run(DemoOptions {
        dir: args.dir,
        listen_address: args.listen_address,
        schedule: args.schedule,
    })
    .await
}
