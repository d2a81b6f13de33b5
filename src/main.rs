//! livedesk's entry point: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use livedesk::{cli, config::Cli, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("livedesk: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("livedesk: {e}");
            e.exit_code()
        }
    }
}
