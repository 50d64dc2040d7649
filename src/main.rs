//! The `keyrotd` binary: parse the command line, run the library, map errors to exit codes.

use clap::Parser;
use keyrotd::cli::{self, Cli, ExitError};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return cli::report_usage_error(error),
    };
    keyrotd::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keyrotd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error
                .downcast_ref::<ExitError>()
                .map(|e| e.code)
                .unwrap_or(1);
            eprintln!("keyrotd: {error:#}");
            ExitCode::from(code as u8)
        }
    }
}
