//! `livedesk-bench --soak <minutes>`: a long run under churn. 1,000 clients
//! (each on one of 100 tickets) connect, stay 5–30 s, close and come back
//! with `since`; 200 changes/s are written; the LISTEN connection is killed
//! every minute. Every client checks that the versions it applies are
//! gapless and single, and at the end that it reached the database's
//! version. The server's resident memory is sampled every 10 s and reported
//! as growth per hour. `--scale-down N` divides clients and rate by N.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::env::BenchEnv;
use livedesk::domain::agents;

/// What every client counts.
#[derive(Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    resets: AtomicU64,
    connections: AtomicU64,
    failed_connects: AtomicU64,
}

/// Run the soak for `minutes`; `Ok(false)` if anything was lost or doubled.
pub async fn run(env: &BenchEnv, minutes: u32, scale_down: usize) -> Result<bool> {
    let scale = scale_down.max(1);
    let clients = (1000 / scale).max(1);
    let rate = 200.0 / scale as f64;
    let tickets = env.tickets(100.min(clients as i64)).await?;
    // At most 20 WebSocket connections per agent (contract §5a): one agent
    // per 20 clients.
    let mut tokens = Vec::new();
    for n in 0..clients.div_ceil(20) {
        let (_, token) = agents::add(
            &env.db,
            &format!("Soak {n}"),
            &format!("soak{n}@bench.local"),
            "agent",
        )
        .await?;
        tokens.push(token.0);
    }
    eprintln!(
        "livedesk-bench: soak for {minutes} min: {clients} churning clients, {rate:.0} changes/s, the listener killed every minute"
    );
    let stop_clients = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let url = format!("{}/ws", env.base.replacen("http://", "ws://", 1));
    let mut positions = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let ticket = tickets[i % tickets.len()];
        let last = Arc::new(AtomicI64::new(-1));
        positions.push((ticket, last.clone()));
        tasks.push(tokio::spawn(churn(
            url.clone(),
            tokens[i / 20].clone(),
            ticket,
            last,
            counters.clone(),
            stop_clients.clone(),
        )));
    }

    let started = Instant::now();
    let until = started + Duration::from_secs(u64::from(minutes) * 60);
    let writer = tokio::spawn(write(env.sql().await?, tickets.clone(), rate, until));
    let killer_sql = env.sql().await?;
    let mut kills = 0u64;
    let mut next_kill = started + Duration::from_secs(60);
    let mut rss = Vec::new();
    while Instant::now() < until {
        rss.push((started.elapsed().as_secs_f64(), env.server_rss_kib()));
        if Instant::now() >= next_kill {
            let killed = killer_sql
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE application_name = 'livedesk-listener'",
                    &[],
                )
                .await
                .map(|rows| rows.len() as u64)
                .unwrap_or(0);
            kills += killed;
            next_kill += Duration::from_secs(60);
        }
        tokio::time::sleep(
            Duration::from_secs(10).min(until.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    rss.push((started.elapsed().as_secs_f64(), env.server_rss_kib()));
    let written = writer.await??;

    // Every client must reach its ticket's version (they keep churning).
    let sql = env.sql().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let behind = loop {
        let rows = sql
            .query(
                "SELECT id, version FROM tickets WHERE id = ANY($1)",
                &[&tickets],
            )
            .await?;
        let versions: std::collections::HashMap<i64, i64> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let behind = positions
            .iter()
            .filter(|(ticket, last)| {
                versions.get(ticket).copied().unwrap_or(0) != last.load(Ordering::Acquire)
            })
            .count();
        if behind == 0 || Instant::now() > deadline {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop_clients.cancel();
    for task in tasks {
        let _ = task.await;
    }

    let c = &counters;
    let (duplicates, gaps) = (
        c.duplicates.load(Ordering::Relaxed),
        c.gaps.load(Ordering::Relaxed),
    );
    let growth = growth_per_hour(&rss);
    let (first, last) = (
        rss.first().map_or(0, |s| s.1),
        rss.last().map_or(0, |s| s.1),
    );
    println!("## Soak ({minutes} min)\n");
    println!("| what | figure |\n| --- | --- |");
    println!("| clients (churning, 5–30 s per connection) | {clients} |");
    println!(
        "| connections opened | {} ({} refused) |",
        c.connections.load(Ordering::Relaxed),
        c.failed_connects.load(Ordering::Relaxed)
    );
    println!("| changes written | {written} ({rate:.0}/s) |");
    println!(
        "| events applied by clients | {} |",
        c.applied.load(Ordering::Relaxed)
    );
    println!("| LISTEN connections killed | {kills} |");
    println!("| lost (clients not at the database's version 60 s after the end) | {behind} |");
    println!("| duplicated | {duplicates} |");
    println!("| gaps seen | {gaps} |");
    println!("| `reset` frames | {} |", c.resets.load(Ordering::Relaxed));
    println!(
        "| server RSS | {:.1} MiB at start, {:.1} MiB at the end; growth {:+.1} MiB/hour (least squares over {} samples after the first minute) |",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        growth / 1024.0,
        rss.iter().filter(|(t, _)| *t >= 60.0).count()
    );
    Ok(behind == 0 && duplicates == 0 && gaps == 0)
}

/// One client: connect, subscribe (with `since` after the first time), apply
/// events for 5–30 s, close, and again until told to stop.
async fn churn(
    url: String,
    token: String,
    ticket: i64,
    last: Arc<AtomicI64>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let mut rng = rand::rngs::StdRng::from_entropy();
    // Spread the first connections over a few seconds.
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3000))).await;
    while !stop.is_cancelled() {
        let lifetime = Duration::from_millis(rng.gen_range(5_000..30_000));
        match session(&url, &token, ticket, &last, &counters, &stop, lifetime).await {
            Ok(()) => counters.connections.fetch_add(1, Ordering::Relaxed),
            Err(_) => {
                counters.failed_connects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
                0
            }
        };
    }
}

async fn session(
    url: &str,
    token: &str,
    ticket: i64,
    last: &AtomicI64,
    counters: &Counters,
    stop: &CancellationToken,
    lifetime: Duration,
) -> Result<()> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let subscribe = |since: i64| {
        let mut frame = serde_json::json!({"type": "subscribe", "ticket_id": ticket});
        if since >= 0 {
            frame["since"] = since.into();
        }
        Message::Text(frame.to_string())
    };
    ws.send(subscribe(last.load(Ordering::Acquire))).await?;
    let ends = tokio::time::sleep(lifetime);
    tokio::pin!(ends);
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            _ = &mut ends => break,
            message = ws.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
            Some(Ok(_)) => continue,
        };
        let frame: serde_json::Value = serde_json::from_str(&text)?;
        let kind = frame["type"].as_str().unwrap_or_default();
        let version = frame["version"].as_i64();
        match (kind, version) {
            // A fresh subscription starts from its snapshot's version.
            ("subscribed", Some(v)) if last.load(Ordering::Acquire) < 0 => {
                last.store(v, Ordering::Release)
            }
            ("event", Some(v)) if frame["ticket_id"] == ticket => {
                let applied = last.load(Ordering::Acquire);
                if v == applied + 1 {
                    last.store(v, Ordering::Release);
                    counters.applied.fetch_add(1, Ordering::Relaxed);
                } else if v <= applied {
                    counters.duplicates.fetch_add(1, Ordering::Relaxed);
                } else {
                    counters.gaps.fetch_add(1, Ordering::Relaxed);
                    last.store(v, Ordering::Release);
                }
            }
            ("reset", _) => {
                counters.resets.fetch_add(1, Ordering::Relaxed);
                last.store(-1, Ordering::Release);
                ws.send(subscribe(-1)).await?;
            }
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Write `rate` changes per second round the tickets until `until`; how many.
async fn write(
    sql: tokio_postgres::Client,
    tickets: Vec<i64>,
    rate: f64,
    until: Instant,
) -> Result<u64> {
    let statement = sql
        .prepare("UPDATE tickets SET subject = $2 WHERE id = $1")
        .await?;
    let start = tokio::time::Instant::now();
    let mut n: u64 = 0;
    while Instant::now() < until {
        tokio::time::sleep_until(start + Duration::from_secs_f64(n as f64 / rate)).await;
        let ticket = tickets[n as usize % tickets.len()];
        sql.execute(&statement, &[&ticket, &format!("soak {n}")])
            .await?;
        n += 1;
    }
    Ok(n)
}

/// Least-squares slope of RSS (KiB) over time, per hour, ignoring the first
/// minute (start-up and the first connections).
fn growth_per_hour(samples: &[(f64, u64)]) -> f64 {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| *t >= 60.0)
        .map(|(t, kib)| (*t, *kib as f64))
        .collect();
    if points.len() < 2 {
        return 0.0;
    }
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_m = points.iter().map(|p| p.1).sum::<f64>() / n;
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_m)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var * 3600.0
    }
}
