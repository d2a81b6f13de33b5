//! The result table: printed, and written to docs/benchmarks.md with the
//! machine it ran on and the command.

use std::fmt::Write as _;

use anyhow::Result;

use super::env::BenchEnv;
use super::BenchArgs;

/// One line of the table.
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub baseline: String,
    pub target: String,
    /// `Some(false)` for a missed target or a correctness failure.
    pub met: Option<bool>,
    /// A correctness failure (lost, duplicated or disordered events).
    pub incorrect: bool,
}

/// All rows plus the machine description.
pub struct Report {
    rows: Vec<Row>,
    machine: String,
}

impl Report {
    /// An empty report describing this machine.
    pub async fn new(env: &BenchEnv) -> Report {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
            .unwrap_or_default();
        let pg = match env.sql().await {
            Ok(sql) => sql
                .query_one("SELECT split_part(version(), ' on ', 1)", &[])
                .await
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default(),
            Err(_) => String::new(),
        };
        Report {
            rows: Vec::new(),
            machine: format!("{cores} cores, {memory} RAM, {pg} (fsync on, synchronous_commit on), loopback, load generator and server on the same machine"),
        }
    }

    /// Add a row.
    pub fn add(&mut self, row: Row) {
        eprintln!(
            "  {:<46} {:<34} {}{}",
            row.scenario,
            row.figure,
            row.target,
            match row.met {
                Some(true) => "  ✓",
                Some(false) => "  ✗",
                None => "",
            }
        );
        self.rows.push(row);
    }

    /// A scenario that could not run.
    pub fn failure(&mut self, scenario: &str, error: &str) {
        self.add(Row {
            scenario: scenario.into(),
            figure: format!("failed: {error}"),
            baseline: String::new(),
            target: String::new(),
            met: Some(false),
            incorrect: true,
        });
    }

    /// Whether every correctness check passed.
    pub fn all_correct(&self) -> bool {
        !self.rows.iter().any(|r| r.incorrect)
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| scenario | livedesk | baseline (same run) | target | met |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r.scenario, r.figure, r.baseline, r.target, met
            );
        }
        out
    }

    /// Print the table.
    pub fn print(&self) {
        println!("\nMachine: {}\n", self.machine);
        println!("{}", self.markdown());
    }

    /// Replace the generated section of the Markdown file (the prose around it is kept).
    pub fn write(&self, args: &BenchArgs) -> Result<()> {
        const START: &str = "<!-- bench:start -->";
        const END: &str = "<!-- bench:end -->";
        let generated = format!(
            "{START}\nCommand: `cargo run --release --bin livedesk-bench{}`\n\nMachine: {}\n\n{}{END}",
            if args.seconds != 10 { format!(" -- --seconds {}", args.seconds) } else { String::new() },
            self.machine,
            self.markdown()
        );
        let existing = std::fs::read_to_string(&args.output).unwrap_or_default();
        let text = match (existing.find(START), existing.find(END)) {
            (Some(s), Some(e)) if e > s => format!(
                "{}{}{}",
                &existing[..s],
                generated,
                &existing[e + END.len()..]
            ),
            _ => format!("# livedesk benchmarks\n\n{generated}\n"),
        };
        if let Some(parent) = args.output.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&args.output, text)?;
        eprintln!("livedesk-bench: wrote {}", args.output.display());
        Ok(())
    }
}
