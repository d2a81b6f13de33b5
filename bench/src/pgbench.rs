//! Baselines and SQL-level figures from PostgreSQL's own `pgbench`, on the
//! same cluster, in the same run.

use std::process::Command;

use anyhow::{anyhow, Context, Result};

use super::env::BenchEnv;

/// Transactions per second of a custom script run by `clients` clients.
pub fn tps(env: &BenchEnv, name: &str, script: &str, clients: u32, seconds: u32) -> Result<f64> {
    Ok(run(env, name, script, clients, seconds)?.tps)
}

/// One pgbench run: its rate and how many transactions it made.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub tps: f64,
    pub transactions: u64,
}

/// Run a custom script with `clients` clients for `seconds`, as the
/// bench's writer role.
pub fn run(env: &BenchEnv, name: &str, script: &str, clients: u32, seconds: u32) -> Result<Run> {
    run_as(&env.conninfo(), env, name, script, clients, seconds)
}

/// The same, connected with `conninfo`.
pub fn run_as(
    conninfo: &str,
    env: &BenchEnv,
    name: &str,
    script: &str,
    clients: u32,
    seconds: u32,
) -> Result<Run> {
    let path = std::env::temp_dir().join(format!("livedesk-bench-{name}.sql"));
    std::fs::write(&path, script)?;
    let output = Command::new(env.bin_dir.join("pgbench"))
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&path)
        .arg(conninfo)
        .output()
        .context("run pgbench")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(anyhow!(
            "pgbench {name} failed: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let tps = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no tps in pgbench output: {stdout}"))?;
    let transactions = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|l| l.split(['/', ' ']).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Run { tps, transactions })
}

/// The plain-table baseline: an UPDATE plus `pg_notify` in one transaction.
pub const PLAIN_NOTIFY: &str = "\\set id :client_id + 1
BEGIN;
UPDATE bench_plain SET n = n + 1, subject = 'bench ' || random() WHERE id = :id;
SELECT pg_notify('bench_plain', :id::text);
END;
";

/// A ticket change through every livedesk trigger (version, event log, NOTIFY).
pub const TICKET_CHANGE: &str = "\\set id :client_id + 1
UPDATE tickets SET subject = 'bench ' || random() WHERE id = :first + :id - 1;
";

/// A note: a message insert without the duplicate-reply check. Like the
/// reply, it first reads the newest message id (what a client has seen), so
/// the two scripts differ only in the check.
pub const NOTE_INSERT: &str = "\\set id :client_id + 1
SELECT coalesce(max(id), 0) AS seen FROM messages WHERE ticket_id = :first + :id - 1 \\gset
INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES (:first + :id - 1, 'note', :agent, 'bench note');
";

/// A reply by an agent who saw the newest message: the same insert with the
/// duplicate-reply check.
pub const REPLY_INSERT: &str = "\\set id :client_id + 1
SELECT coalesce(max(id), 0) AS seen FROM messages WHERE ticket_id = :first + :id - 1 \\gset
INSERT INTO messages (ticket_id, kind, author_agent_id, body, seen_message_id) VALUES (:first + :id - 1, 'reply', :agent, 'bench reply', :seen);
";

/// Create the plain table the baseline updates, writable by the bench's
/// writer role (the baseline runs as the same role as the ticket path).
pub async fn prepare_plain(env: &BenchEnv, rows: i64) -> Result<()> {
    let sql = env.sql().await?;
    sql.batch_execute("DROP TABLE IF EXISTS bench_plain; CREATE TABLE bench_plain (id bigint PRIMARY KEY, n bigint NOT NULL DEFAULT 0, subject text)")
        .await?;
    // The role's name is the bench's own constant, not input.
    sql.batch_execute(&format!(
        "GRANT SELECT, UPDATE ON bench_plain TO {}",
        env.writer
    ))
    .await?;
    sql.execute(
        "INSERT INTO bench_plain (id) SELECT generate_series(1, $1::bigint)",
        &[&rows],
    )
    .await?;
    Ok(())
}

/// Substitute the script's `:first` and `:agent` placeholders.
pub fn with_ids(script: &str, first_ticket: i64, agent: i64) -> String {
    script
        .replace(":first", &first_ticket.to_string())
        .replace(":agent", &agent.to_string())
}
