//! livedesk's benchmark command: starts its own durable PostgreSQL and a
//! livedesk server, drives them over loopback, checks every delivery, and
//! prints each figure beside a baseline measured in the same run.

pub mod bus;
pub mod curves;
pub mod env;
pub mod floor;
pub mod pgbench;
pub mod report;
pub mod scenarios;
pub mod soak;
pub mod svg;
pub mod wsload;

use anyhow::Result;
use clap::Parser;

use report::Report;

/// Options of `livedesk-bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "livedesk-bench",
    about = "Benchmarks livedesk against PostgreSQL's own floor"
)]
pub struct BenchArgs {
    /// Seconds per throughput phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Scale every count down by this factor (quick smoke runs).
    #[arg(long, default_value_t = 1)]
    pub scale_down: usize,
    /// Write the table to this Markdown file.
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub output: std::path::PathBuf,
    /// Only run scenarios whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// A smaller, faster run (about a minute): every count divided by 10,
    /// shorter phases; figures are for smoke tests, not for the docs.
    #[arg(long)]
    pub quick: bool,
    /// Instead of the scenarios: a soak of this many minutes (1,000
    /// churning clients, 200 changes/s, the listener killed every minute;
    /// divided by --scale-down), printing losses and memory growth.
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<u32>,
    /// Instead of the scenarios: the two event buses (LIVEDESK_BUS=notify
    /// and logical) side by side: changes/s at 8 and 32 clients, commit →
    /// client at 1,000 subscribers, WAL held after a kill -9 (issue 18).
    #[arg(long)]
    pub bus: bool,
}

/// Run every scenario; `Ok(false)` if any correctness check failed.
pub async fn run(mut args: BenchArgs) -> Result<bool> {
    if args.quick {
        args.scale_down = args.scale_down.max(10);
        args.seconds = args.seconds.min(4);
    }
    eprintln!("livedesk-bench: starting PostgreSQL (fsync on) and a livedesk server…");
    let mut env = env::BenchEnv::start(8).await?;
    if args.bus {
        // The comparison runs its own server per bus: the default one
        // would follow each switch and decode alongside.
        let _ = env.server.kill();
        let _ = env.server.wait();
        return bus::run(&env, &args).await;
    }
    if let Some(minutes) = args.soak {
        return soak::run(&env, minutes, args.scale_down).await;
    }
    let mut report = Report::new(&env).await;
    let wants = |name: &str| args.only.as_deref().is_none_or(|o| name.contains(o));
    let phases: Vec<(&str, scenarios::Phase)> = vec![
        ("sql", scenarios::Phase::SqlThroughput),
        ("reply", scenarios::Phase::ReplyCost),
        ("http", scenarios::Phase::HttpThroughput),
        ("latency", scenarios::Phase::Latency1000),
        ("fanout100", scenarios::Phase::Fanout100),
        ("fanout1000", scenarios::Phase::Fanout1000),
        ("listener", scenarios::Phase::ListenerKill),
        ("resume", scenarios::Phase::Resume),
        ("race", scenarios::Phase::ReplyRace),
        ("idle", scenarios::Phase::Idle10k),
        ("curve-subscribers", scenarios::Phase::CurveSubscribers),
        ("curve-snapshot", scenarios::Phase::CurveSnapshot),
        ("curve-resume", scenarios::Phase::CurveResume),
        ("curve-processes", scenarios::Phase::CurveProcesses),
        ("abuse", scenarios::Phase::Abuse),
    ];
    let started = std::time::Instant::now();
    for (name, phase) in phases {
        if wants(name) {
            eprintln!(
                "livedesk-bench: {name}… ({:.0} s in, load average {})",
                started.elapsed().as_secs_f64(),
                report::load_average()
            );
            report.note_load(name);
            if let Err(e) = scenarios::run(phase, &env, &args, &mut report).await {
                report.failure(name, &format!("{e:#}"));
            }
        }
    }
    eprintln!(
        "livedesk-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    report.print();
    report.write(&args)?;
    Ok(report.all_correct())
}
