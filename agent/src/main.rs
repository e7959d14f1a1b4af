//! `wardnet-agent`: see `wardnet-agent --help`.

use std::process::ExitCode;

use clap::Parser;
use wardnet_agent::cli::{run, Cli};

fn main() -> ExitCode {
    // Logging starts in `run`, once the config (log_format) is read.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<wardnet_agent::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(wardnet_agent::config::EXIT_USAGE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
