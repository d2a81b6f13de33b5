//! `cargo run --release --bin livedesk-bench` (from the workspace root):
//! livedesk's benchmarks, each beside a baseline measured in the same run
//! (see docs/benchmarks.md).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = livedesk_bench::BenchArgs::parse();
    livedesk::telemetry::init(livedesk::config::LogFormat::Human);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("livedesk-bench: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(livedesk_bench::run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("livedesk-bench: a correctness check failed (see above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("livedesk-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
