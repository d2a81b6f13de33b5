//! `livedesk-bench --bus` (issue 18): the two event buses side by side in
//! one run, on one durable cluster (fsync on), each with its own livedesk
//! server process (`LIVEDESK_BUS=notify`, then `logical`, alternating by
//! round so that drift of the shared machine hits both):
//!
//! - ticket changes/s through every trigger, direct SQL (pgbench), 8 and 32
//!   clients each on its own ticket, and the WAL each change writes;
//! - commit → client latency, 1,000 clients each on its own ticket, 500
//!   changes/s, every delivery checked (gapless, once, in order);
//! - WAL held back by the logical bus's slot while the process runs, and
//!   after a `kill -9` of it.
//!
//! Prints a Markdown table (for docs/benchmarks.md) and the command.

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::env::{self, BenchEnv};
use super::pgbench;
use super::scenarios::write_changes;
use super::wsload;
use super::BenchArgs;

const BUSES: [&str; 2] = ["notify", "logical"];

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn spread(values: &[f64]) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    format!("{:.0} ({low:.0}–{high:.0})", median(values))
}

/// A server on `bus`, healthy; SIGTERM'd on drop.
struct Server {
    child: Option<Child>,
    base: String,
}

impl Server {
    async fn start(env: &BenchEnv, bus: &str) -> Result<Server> {
        let (child, base) = env::spawn_extra_server_on_bus(env, bus).await?;
        Ok(Server {
            child: Some(child),
            base,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            env::stop_server(child);
        }
    }
}

/// This database's slots, the WAL they hold back (behind `restart_lsn`),
/// and how far their confirmed position is behind the WAL, in bytes.
async fn slots(env: &BenchEnv) -> Result<(i64, i64, i64)> {
    let sql = env.sql().await?;
    let row = sql
        .query_one(
            "SELECT count(*), \
                    coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint, \
                    coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)), 0)::bigint \
             FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Run the comparison; `Ok(false)` if a delivery check failed.
pub async fn run(env: &BenchEnv, args: &BenchArgs) -> Result<bool> {
    let s = args.scale_down.max(1);
    let rounds = if args.quick { 1 } else { 3 };
    let seconds = args.seconds;
    let tickets = env.tickets(32).await?;
    let script = pgbench::with_ids(pgbench::TICKET_CHANGE, tickets[0], env.tokens[0].0);
    // (bus, clients) → tps of each round; bus → (WAL bytes, changes).
    let mut tps: HashMap<(&str, u32), Vec<f64>> = HashMap::new();
    let mut wal: HashMap<&str, (i64, u64)> = HashMap::new();
    for round in 0..rounds {
        for bus in BUSES {
            let server = Server::start(env, bus).await?;
            for clients in [8u32, 32] {
                let at = env.wal_lsn().await?;
                let run = pgbench::run(env, &format!("bus-{bus}"), &script, clients, seconds)?;
                let end = env.wal_lsn().await?;
                let w = wal.entry(bus).or_default();
                *w = (w.0 + end - at, w.1 + run.transactions);
                eprintln!(
                    "    round {}: {bus}, {clients} clients: {:.0} changes/s",
                    round + 1,
                    run.tps
                );
                tps.entry((bus, clients)).or_default().push(run.tps);
            }
            drop(server);
        }
    }

    // Commit → client at 1,000 subscribers, 500 changes/s.
    let clients = 1000 / s;
    let total = 5000 / s;
    let mut latency: HashMap<&str, (u64, u64, u64, u64, u64)> = HashMap::new();
    let mut correct = true;
    for bus in BUSES {
        let server = Server::start(env, bus).await?;
        let own = env.tickets(clients as i64).await?;
        let watchers = wsload::open(&server.base, &env.tokens[0].1, &own, clients, None).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let commits = write_changes(env, &own, 500.0, total).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let logs = watchers.finish().await;
        let (h, faults, _) = wsload::analyse(&logs, &commits);
        correct &= faults == 0 && h.len() == total as u64;
        eprintln!(
            "    {bus}: p50 {} µs, p99 {} µs, {} events, {faults} faulty clients",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.len()
        );
        latency.insert(
            bus,
            (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                h.len(),
                faults,
            ),
        );
        drop(server);
    }

    // WAL held back by the logical bus: while it runs, then after kill -9.
    let server = Server::start(env, "logical").await?;
    let own = env.tickets(8).await?;
    write_changes(env, &own, 1000.0, 2000 / s).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (running_slots, running_held, running_unconfirmed) = slots(env).await?;
    let mut server = server;
    let Some(mut child) = server.child.take() else {
        bail!("the logical server is gone")
    };
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let killed = Instant::now();
    let gone_after = loop {
        let (count, _, _) = slots(env).await?;
        if count == 0 {
            break Some(killed.elapsed());
        }
        if killed.elapsed() > Duration::from_secs(30) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // More WAL written with nobody decoding: none of it may be held.
    write_changes(env, &own, 1000.0, 2000 / s).await?;
    let (after_slots, after_held, _) = slots(env).await?;

    let per = |bus: &str| {
        let (bytes, tx) = wal.get(bus).copied().unwrap_or_default();
        bytes as f64 / tx.max(1) as f64
    };
    let ratio32 = median(&tps[&("logical", 32)]) / median(&tps[&("notify", 32)]).max(1.0);
    let ratio8 = median(&tps[&("logical", 8)]) / median(&tps[&("notify", 8)]).max(1.0);
    let (n50, n99, nmax, nlen, nf) = latency["notify"];
    let (l50, l99, lmax, llen, lf) = latency["logical"];
    let p99_ratio = l99 as f64 / n99.max(1) as f64;
    let ms = |us: u64| us as f64 / 1000.0;
    let mut table = String::new();
    table.push_str(&format!(
        "Command: `cargo run --release --bin livedesk-bench -- --bus{}` \
         ({rounds} round(s) of {seconds} s per pgbench figure, median (min–max); load average at the end {}).\n\n",
        if args.quick { " --quick" } else { "" },
        super::report::load_average()
    ));
    table.push_str(
        "| figure | `notify` | `logical` | goal | met |\n| --- | --- | --- | --- | --- |\n",
    );
    table.push_str(&format!(
        "| ticket changes/s, direct SQL through every trigger, 8 clients | {} | {} | — | {ratio8:.2}× |\n",
        spread(&tps[&("notify", 8)]),
        spread(&tps[&("logical", 8)]),
    ));
    table.push_str(&format!(
        "| ticket changes/s, 32 clients | {} | {} | logical ≥ 2× notify | {} ({ratio32:.2}×) |\n",
        spread(&tps[&("notify", 32)]),
        spread(&tps[&("logical", 32)]),
        if ratio32 >= 2.0 { "yes" } else { "**no**" }
    ));
    table.push_str(&format!(
        "| WAL per change | {:.0} B | {:.0} B | — | — |\n",
        per("notify"),
        per("logical")
    ));
    table.push_str(&format!(
        "| commit → client, {clients} clients each on its own ticket, 500 changes/s | p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {nlen}/{total} delivered, {nf} faulty | p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; {llen}/{total} delivered, {lf} faulty | logical p99 ≤ 1.5× notify | {} ({p99_ratio:.2}×) |\n",
        ms(n50), ms(n99), ms(nmax), ms(l50), ms(l99), ms(lmax),
        if p99_ratio <= 1.5 { "yes" } else { "**no**" }
    ));
    table.push_str(&format!(
        "| WAL held back by the logical bus while it runs, 1.5 s after {} changes at 1,000/s | — | {running_held} B behind the slot's restart point, {running_unconfirmed} B not yet confirmed ({running_slots} slot) | — | — |\n",
        2000 / s
    ));
    table.push_str(&format!(
        "| after `kill -9` of the logical livedesk | — | slot gone after {}; then {} more changes: {after_held} B held ({after_slots} slots) | none once the process is gone | {} |\n",
        gone_after
            .map(|d| format!("{} ms", d.as_millis()))
            .unwrap_or_else(|| "**more than 30 s**".into()),
        2000 / s,
        if gone_after.is_some() && after_slots == 0 && after_held == 0 { "yes" } else { "**no**" }
    ));
    println!("\n{table}");
    Ok(correct)
}
