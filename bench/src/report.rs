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

/// One line of a cost curve: (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A cost curve: one measurement at growing sizes (plotted by `svg.rs`).
pub struct Curve {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub series: Vec<Series>,
}

/// All rows plus the machine description.
pub struct Report {
    rows: Vec<Row>,
    curves: Vec<Curve>,
    machine: String,
    load: Vec<String>,
}

/// The 1-minute load average now (other work on the machine skews figures).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
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
            curves: Vec::new(),
            load: Vec::new(),
            machine: format!("{cores} cores, {memory} RAM, {pg} (fsync on, synchronous_commit on), loopback, load generator and server on the same machine"),
        }
    }

    /// Add a cost curve.
    pub fn curve(&mut self, curve: Curve) {
        self.curves.push(curve);
    }

    /// Record the machine's load average before a phase.
    pub fn note_load(&mut self, phase: &str) {
        self.load.push(format!("{phase} {}", load_average()));
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

    fn curves_markdown(&self, svg_name: &str) -> String {
        let mut out = String::new();
        if self.curves.is_empty() {
            return out;
        }
        let _ = writeln!(out, "![cost curves]({svg_name})\n");
        for c in &self.curves {
            let _ = writeln!(out, "**{}** ({}; {})\n", c.title, c.x_label, c.y_label);
            let _ = write!(out, "| x |");
            for series in &c.series {
                let _ = write!(out, " {} |", series.name);
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "|{}", " --- |".repeat(c.series.len() + 1));
            let xs: Vec<f64> = c
                .series
                .first()
                .map(|s| s.points.iter().map(|p| p.0).collect())
                .unwrap_or_default();
            for (i, x) in xs.iter().enumerate() {
                let _ = write!(out, "| {x} |");
                for series in &c.series {
                    match series.points.get(i) {
                        Some((_, y)) => {
                            let _ = write!(out, " {y:.2} |");
                        }
                        None => {
                            let _ = write!(out, " – |");
                        }
                    }
                }
                let _ = writeln!(out);
            }
            let _ = writeln!(out);
        }
        out
    }

    /// Print the table.
    pub fn print(&self) {
        println!("\nMachine: {}\n", self.machine);
        println!("{}", self.markdown());
    }

    /// Replace the generated sections of the Markdown file (the prose
    /// around them is kept) and write the curves' SVG next to it.
    pub fn write(&self, args: &BenchArgs) -> Result<()> {
        const START: &str = "<!-- bench:start -->";
        const END: &str = "<!-- bench:end -->";
        const CURVES_START: &str = "<!-- curves:start -->";
        const CURVES_END: &str = "<!-- curves:end -->";
        let mut flags = String::new();
        if args.quick {
            flags.push_str(" --quick");
        }
        if args.seconds != 10 && !args.quick {
            let _ = write!(flags, " --seconds {}", args.seconds);
        }
        if let Some(only) = &args.only {
            let _ = write!(flags, " --only {only}");
        }
        let command = format!(
            "cargo run --release --bin livedesk-bench{}",
            if flags.is_empty() {
                String::new()
            } else {
                format!(" --{flags}")
            }
        );
        let generated = format!(
            "{START}\nCommand: `{command}` (run at {} UTC)\n\nMachine: {}\n\nLoad average (1 min) before each phase: {}\n\n{}{END}",
            chrono::Utc::now().format("%Y-%m-%d %H:%M"),
            self.machine,
            self.load.join(", "),
            self.markdown()
        );
        let svg_name = args
            .output
            .file_stem()
            .map(|s| format!("{}-curves.svg", s.to_string_lossy()))
            .unwrap_or_else(|| "benchmarks-curves.svg".into());
        let existing = std::fs::read_to_string(&args.output).unwrap_or_default();
        let mut text = replace_between(&existing, START, END, &generated)
            .unwrap_or_else(|| format!("# livedesk benchmarks\n\n{generated}\n"));
        if !self.curves.is_empty() {
            let curves = format!(
                "{CURVES_START}\nCommand: `{command}`\n\n{}{CURVES_END}",
                self.curves_markdown(&svg_name)
            );
            text = replace_between(&text, CURVES_START, CURVES_END, &curves)
                .unwrap_or_else(|| format!("{text}\n## Cost as the work grows\n\n{curves}\n"));
            let svg_path = args.output.with_file_name(&svg_name);
            std::fs::write(&svg_path, super::svg::render(&self.curves, &command))?;
            eprintln!("livedesk-bench: wrote {}", svg_path.display());
        }
        if let Some(parent) = args.output.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&args.output, text)?;
        eprintln!("livedesk-bench: wrote {}", args.output.display());
        Ok(())
    }
}

/// `text` with what lies between `start` and `end` (markers included)
/// replaced by `with`; `None` when the markers are missing.
fn replace_between(text: &str, start: &str, end: &str, with: &str) -> Option<String> {
    let s = text.find(start)?;
    let e = text[s..].find(end)? + s;
    Some(format!("{}{}{}", &text[..s], with, &text[e + end.len()..]))
}
