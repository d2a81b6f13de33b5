//! The scenarios. Each adds rows to the report and checks correctness:
//! every client must see every version once, in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use serde_json::json;

use super::env::BenchEnv;
use super::report::{Report, Row};
use super::wsload::{self, Commits};
use super::{pgbench, BenchArgs};

/// The phases, in the order they run.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    SqlThroughput,
    ReplyCost,
    HttpThroughput,
    Latency1000,
    Fanout100,
    Fanout1000,
    ListenerKill,
    Resume,
    ReplyRace,
    Idle10k,
}

/// Run one phase.
pub async fn run(
    phase: Phase,
    env: &BenchEnv,
    args: &BenchArgs,
    report: &mut Report,
) -> Result<()> {
    let s = args.scale_down.max(1);
    match phase {
        Phase::SqlThroughput => sql_throughput(env, args, report).await,
        Phase::ReplyCost => reply_cost(env, args, report).await,
        Phase::HttpThroughput => http_throughput(env, args, report).await,
        Phase::Latency1000 => latency(env, report, 1000 / s, 500.0, 5000 / s).await,
        Phase::Fanout100 => {
            fanout(
                env,
                report,
                100 / s,
                100.0,
                1000 / s,
                "100 watchers of one ticket, 100 changes/s",
                10_000,
            )
            .await
        }
        Phase::Fanout1000 => {
            fanout(
                env,
                report,
                1000 / s,
                5.0,
                20,
                "one change to 1,000 watchers of one ticket",
                15_000,
            )
            .await
        }
        Phase::ListenerKill => listener_kill(env, report, 200.0, 1200 / s).await,
        Phase::Resume => resume(env, report, 10_000 / s as i64).await,
        Phase::ReplyRace => reply_race(env, report, 1000 / s).await,
        Phase::Idle10k => idle(env, report, 10_000 / s).await,
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    )
}

/// Make `total` subject changes round-robin over `tickets` at `rate`/s with
/// a few writer connections; when each commit was acknowledged.
async fn write_changes(
    env: &BenchEnv,
    tickets: &[i64],
    rate: f64,
    total: usize,
) -> Result<Commits> {
    let writers = 4usize.min(total.max(1));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let sql = env.sql().await?;
        let tickets = tickets.to_vec();
        tasks.push(tokio::spawn(async move {
            let statement = sql
                .prepare("UPDATE tickets SET subject = $2 WHERE id = $1 RETURNING version")
                .await?;
            let mut commits = Vec::new();
            for i in (w..total).step_by(writers) {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
                let ticket = tickets[i % tickets.len()];
                let row = sql
                    .query_one(&statement, &[&ticket, &format!("change {i}")])
                    .await?;
                commits.push(((ticket, row.get::<_, i64>(0)), Instant::now()));
            }
            Ok::<_, anyhow::Error>(commits)
        }));
    }
    let mut all = Commits::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(all)
}

/// Give deliveries time to land (clients record into their own logs).
async fn settle(limit: Duration) {
    tokio::time::sleep(limit).await;
}

/// Subscribing makes every client a viewer: let the presence lists that
/// this announces settle before measuring event latency.
async fn let_presence_settle() {
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn latency(
    env: &BenchEnv,
    report: &mut Report,
    clients: usize,
    rate: f64,
    total: usize,
) -> Result<()> {
    let tickets = env.tickets(clients as i64).await?;
    let watchers = wsload::open(&env.base, &env.tokens[0].1, &tickets, clients, None).await?;
    let_presence_settle().await;
    let commits = write_changes(env, &tickets, rate, total).await?;
    settle(Duration::from_secs(2)).await;
    let logs = watchers.finish().await;
    let (h, faults, _) = wsload::analyse(&logs, &commits);
    let ok =
        faults == 0 && ms(h.value_at_quantile(0.5)) <= 0.8 && ms(h.value_at_quantile(0.99)) <= 3.0;
    report.add(Row {
        scenario: format!(
            "commit → WS latency, {clients} clients each on its own ticket, {rate} changes/s"
        ),
        figure: format!(
            "{}; {} events, {faults} faulty clients",
            percentiles(&h),
            h.len()
        ),
        baseline: "commit acknowledged to the writer".into(),
        target: "p50 ≤ 0.8 ms, p99 ≤ 3 ms".into(),
        met: Some(ok),
        incorrect: faults > 0,
    });
    Ok(())
}

async fn fanout(
    env: &BenchEnv,
    report: &mut Report,
    watchers: usize,
    rate: f64,
    total: usize,
    name: &str,
    p99_target_us: u64,
) -> Result<()> {
    let tickets = env.tickets(1).await?;
    let clients = wsload::open(&env.base, &env.tokens[1].1, &tickets, watchers, None).await?;
    let_presence_settle().await;
    let started = Instant::now();
    let commits = write_changes(env, &tickets, rate, total).await?;
    let elapsed = started.elapsed();
    settle(Duration::from_secs(2)).await;
    let logs = clients.finish().await;
    let (h, faults, _) = wsload::analyse(&logs, &commits);
    let delivered = h.len();
    let expected = (watchers * total) as u64;
    let ok = faults == 0 && delivered == expected && h.value_at_quantile(0.99) <= p99_target_us;
    report.add(Row {
        scenario: name.into(),
        figure: format!(
            "{}; {delivered}/{expected} delivered ({:.0} msg/s), {faults} faulty clients",
            percentiles(&h),
            delivered as f64 / elapsed.as_secs_f64()
        ),
        baseline: "—".into(),
        target: format!("p99 ≤ {} ms, nothing lost", p99_target_us / 1000),
        met: Some(ok),
        incorrect: faults > 0 || delivered != expected,
    });
    Ok(())
}

async fn listener_kill(env: &BenchEnv, report: &mut Report, rate: f64, total: usize) -> Result<()> {
    let tickets = env.tickets(100).await?;
    let clients = wsload::open(&env.base, &env.tokens[2].1, &tickets, 100, None).await?;
    let killer = env.sql().await?;
    let duration = Duration::from_secs_f64(total as f64 / rate);
    let kill_task = tokio::spawn(async move {
        tokio::time::sleep(duration / 3).await;
        let at = Instant::now();
        let killed = killer
            .query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'livedesk-listener'", &[])
            .await
            .map(|rows| rows.len())
            .unwrap_or(0);
        (at, killed)
    });
    let commits = write_changes(env, &tickets, rate, total).await?;
    let (killed_at, killed) = kill_task.await?;
    settle(Duration::from_secs(3)).await;
    let logs = clients.finish().await;
    let (h, faults, _) = wsload::analyse(&logs, &commits);
    // Catch-up: the worst latency of changes committed after the kill.
    let mut worst = Duration::ZERO;
    for log in &logs {
        let Some(ticket) = log.ticket else { continue };
        for (version, at) in &log.receipts {
            if let Some(c) = commits.get(&(ticket, *version)) {
                if *c >= killed_at {
                    worst = worst.max(at.saturating_duration_since(*c));
                }
            }
        }
    }
    let lost = commits.len() as u64 - h.len().min(commits.len() as u64);
    let ok = faults == 0 && lost == 0 && killed > 0 && worst <= Duration::from_secs(1);
    report.add(Row {
        scenario: format!("LISTEN connection killed mid-run ({total} changes, 100 tickets)"),
        figure: format!("{killed} listener killed; {lost} lost, {faults} faulty clients; caught up in ≤ {:.0} ms", worst.as_secs_f64() * 1000.0),
        baseline: "—".into(),
        target: "0 lost, caught up ≤ 1 s".into(),
        met: Some(ok),
        incorrect: faults > 0 || lost > 0,
    });
    Ok(())
}

async fn resume(env: &BenchEnv, report: &mut Report, missed: i64) -> Result<()> {
    let ticket = env.tickets(1).await?[0];
    let sql = env.sql().await?;
    let since: i64 = sql
        .query_one("SELECT version FROM tickets WHERE id = $1", &[&ticket])
        .await?
        .get(0);
    sql.execute(
        "DO $$ DECLARE i int; BEGIN FOR i IN 1..$MISSED LOOP UPDATE tickets SET subject = 'missed ' || i WHERE id = $TICKET; END LOOP; END $$"
            .replace("$MISSED", &missed.to_string())
            .replace("$TICKET", &ticket.to_string())
            .as_str(),
        &[],
    )
    .await?;
    let started = Instant::now();
    let clients = wsload::open(&env.base, &env.tokens[3].1, &[ticket], 1, Some(since)).await?;
    let target = since + missed;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut log = None;
    // Poll the single client's progress by finishing once it must be done.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if clients.tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let logs = clients.finish().await;
    if let Some(l) = logs.into_iter().next() {
        log = Some(l);
    }
    let log = log.ok_or_else(|| anyhow!("no client log"))?;
    let versions: Vec<i64> = log.receipts.iter().map(|(v, _)| *v).collect();
    let correct = versions == (since + 1..=target).collect::<Vec<_>>();
    let took = log
        .receipts
        .last()
        .map(|(_, at)| at.duration_since(started))
        .unwrap_or_default();
    report.add(Row {
        scenario: format!("resume with since after {missed} missed events"),
        figure: format!(
            "{:.0} ms to the last event (connect + subscribe + replay), {} events",
            took.as_secs_f64() * 1000.0,
            versions.len()
        ),
        baseline: "—".into(),
        target: "≤ 0.5 s".into(),
        met: Some(correct && took <= Duration::from_millis(500)),
        incorrect: !correct,
    });
    Ok(())
}

async fn sql_throughput(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let tickets = env.tickets(8).await?;
    pgbench::prepare_plain(env, 8).await?;
    let plain = pgbench::tps(env, "plain", pgbench::PLAIN_NOTIFY, 8, args.seconds)?;
    let script = pgbench::with_ids(pgbench::TICKET_CHANGE, tickets[0], env.tokens[0].0);
    let livedesk = pgbench::tps(env, "ticket", &script, 8, args.seconds)?;
    let ratio = livedesk / plain;
    report.add(Row {
        scenario: "ticket changes/s, direct SQL, 8 clients (triggers + event log + NOTIFY)".into(),
        figure: format!("{livedesk:.0} tps"),
        baseline: format!("{plain:.0} tps (pgbench: UPDATE + pg_notify on a plain table)"),
        target: format!("≥ 0.8× (measured {ratio:.2}×)"),
        met: Some(ratio >= 0.8),
        incorrect: false,
    });
    Ok(())
}

async fn reply_cost(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let tickets = env.tickets(8).await?;
    let agent = env.tokens[0].0;
    let note = pgbench::tps(
        env,
        "note",
        &pgbench::with_ids(pgbench::NOTE_INSERT, tickets[0], agent),
        8,
        args.seconds,
    )?;
    let reply = pgbench::tps(
        env,
        "reply",
        &pgbench::with_ids(pgbench::REPLY_INSERT, tickets[0], agent),
        8,
        args.seconds,
    )?;
    let cost = note / reply;
    report.add(Row {
        scenario: "reply insert with the duplicate check, 8 clients".into(),
        figure: format!("{reply:.0} tps"),
        baseline: format!("{note:.0} tps (note insert, no check)"),
        target: format!("≤ 1.3× cost (measured {cost:.2}×)"),
        met: Some(cost <= 1.3),
        incorrect: false,
    });
    Ok(())
}

async fn http_throughput(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    pgbench::prepare_plain(env, 8).await?;
    let plain = pgbench::tps(env, "plain-http", pgbench::PLAIN_NOTIFY, 8, args.seconds)?;
    let tickets = env.tickets(8).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    let seconds = args.seconds as u64;
    for kind in ["patch", "reply"] {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for (n, ticket) in tickets.iter().enumerate() {
            let (http, base, token, ticket) = (
                http.clone(),
                env.base.clone(),
                env.tokens[n % env.tokens.len()].1.clone(),
                *ticket,
            );
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                let mut errors = 0u64;
                let mut subject = current_subject(&http, &base, &token, ticket).await;
                let mut seen = 0i64;
                while Instant::now() < deadline {
                    let response = if kind == "patch" {
                        let next = format!("{subject}+");
                        let r = http
                            .patch(format!("{base}/api/tickets/{ticket}"))
                            .bearer_auth(&token)
                            .json(&json!({"changes": {"subject": {"from": subject, "to": next}}}))
                            .send()
                            .await;
                        subject = next;
                        r
                    } else {
                        http.post(format!("{base}/api/tickets/{ticket}/messages"))
                            .bearer_auth(&token)
                            .json(&json!({"kind": "reply", "body": "bench", "seen_message_id": seen}))
                            .send()
                            .await
                    };
                    match response {
                        Ok(r) if r.status().is_success() => {
                            if kind == "reply" {
                                if let Ok(v) = r.json::<serde_json::Value>().await {
                                    seen = v["id"].as_i64().unwrap_or(seen);
                                }
                            }
                            done += 1
                        }
                        _ => errors += 1,
                    }
                    if subject.len() > 400 {
                        subject = format!("bench {ticket}");
                        let r = http
                            .patch(format!("{base}/api/tickets/{ticket}"))
                            .bearer_auth(&token)
                            .json(&json!({"changes": {"subject": {"from": current_subject(&http, &base, &token, ticket).await, "to": subject}}}))
                            .send()
                            .await;
                        if !r.is_ok_and(|r| r.status().is_success()) {
                            errors += 1;
                        }
                    }
                }
                (done, errors)
            }));
        }
        let (mut done, mut errors) = (0, 0);
        for t in tasks {
            let (d, e) = t.await?;
            done += d;
            errors += e;
        }
        let rps = done as f64 / seconds as f64;
        report.add(Row {
            scenario: format!(
                "same through HTTP ({}), 8 clients",
                if kind == "patch" {
                    "PATCH subject"
                } else {
                    "POST reply"
                }
            ),
            figure: format!("{rps:.0} req/s ({errors} errors)"),
            baseline: format!("{plain:.0} tps (plain UPDATE + pg_notify)"),
            target: format!("report ({:.2}×)", rps / plain),
            met: None,
            incorrect: errors > 0,
        });
    }
    Ok(())
}

async fn reply_race(env: &BenchEnv, report: &mut Report, rounds: usize) -> Result<()> {
    let ticket = env.tickets(1).await?[0];
    let http = reqwest::Client::new();
    let mut wrong = 0;
    let mut seen = 0i64;
    let started = Instant::now();
    for round in 0..rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for n in 0..2 {
            let (http, base, token, barrier) = (
                http.clone(),
                env.base.clone(),
                env.tokens[n].1.clone(),
                barrier.clone(),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = http
                    .post(format!("{base}/api/tickets/{ticket}/messages"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "reply", "body": format!("round {round}"), "seen_message_id": seen}))
                    .send()
                    .await?;
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await?;
                Ok::<_, anyhow::Error>((status, body))
            }));
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await??);
        }
        let winners: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 201).collect();
        let losers: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 409).collect();
        if winners.len() != 1 || losers.len() != 1 {
            wrong += 1;
            continue;
        }
        let winner_id = winners[0].1["id"].as_i64().unwrap_or(-1);
        if !losers[0].1["error"]["replies"]
            .as_array()
            .is_some_and(|r| r.iter().any(|m| m["id"] == winner_id))
        {
            wrong += 1;
        }
        seen = winner_id;
    }
    let rate = rounds as f64 / started.elapsed().as_secs_f64();
    report.add(Row {
        scenario: format!("reply race: 2 agents × {rounds} rounds over HTTP"),
        figure: format!("{wrong} wrong outcomes ({rate:.0} rounds/s)"),
        baseline: "—".into(),
        target: "0 wrong outcomes".into(),
        met: Some(wrong == 0),
        incorrect: wrong > 0,
    });
    Ok(())
}

async fn idle(env: &BenchEnv, report: &mut Report, connections: usize) -> Result<()> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.server_rss_kib();
    let clients = wsload::open(&env.base, &env.tokens[4].1, &[], connections, None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = env.server_rss_kib();
    let per = (after.saturating_sub(before)) as f64 / connections as f64;
    clients.finish().await;
    report.add(Row {
        scenario: format!("{connections} idle WS connections on one process"),
        figure: format!("{per:.1} KiB RSS per connection ({before} → {after} KiB)"),
        baseline: "—".into(),
        target: "≤ 30 KiB per connection".into(),
        met: Some(per <= 30.0),
        incorrect: false,
    });
    Ok(())
}

async fn current_subject(http: &reqwest::Client, base: &str, token: &str, ticket: i64) -> String {
    let answer = http
        .get(format!("{base}/api/tickets/{ticket}"))
        .bearer_auth(token)
        .send()
        .await;
    match answer {
        Ok(r) => r
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["ticket"]["subject"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}
