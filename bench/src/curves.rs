//! Cost as the work grows: the same measurement at three sizes, so the docs
//! can say where each curve bends (docs/benchmarks.md, docs/scaling.md).
//! Every point keeps its correctness check.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::env::{self, BenchEnv};
use super::report::{Curve, Report, Row, Series};
use super::scenarios::spread;
use super::wsload::{self, Commits};
use super::BenchArgs;

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// p50/p99 commit → client with 100 / 1,000 / 10,000 subscribers, each on
/// its own ticket, at the same change rate.
pub async fn subscribers(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let s = args.scale_down.max(1);
    let (rate, total) = (500.0, 1500 / s.min(5));
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for n in [100 / s.min(10), 1000 / s, 10_000 / s] {
        let n = n.max(10);
        eprintln!("    {n} subscribers: opening…");
        let tickets = env.tickets(n as i64).await?;
        let opened = Instant::now();
        let watchers = wsload::open(&env.base, &env.tokens[5].1, &tickets, n, None).await?;
        let open_s = opened.elapsed().as_secs_f64();
        // Every subscriber is a viewer: wait until every viewer row is
        // written and the announcements have passed (at 10,000 the
        // presence work would otherwise be measured as event latency).
        wait_for_viewers(env, n as i64).await?;
        tokio::time::sleep(Duration::from_millis(2000 + n as u64 / 5)).await;
        let commits = super::scenarios::write_changes(env, &tickets, rate, total).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let logs = watchers.finish().await;
        let (h, faults, _) = wsload::analyse(&logs, &commits);
        let (a, b) = (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)));
        eprintln!("    {n} subscribers: p50 {a:.2} ms, p99 {b:.2} ms, {faults} faulty");
        report.add(Row {
            scenario: format!("commit → WS, {n} subscribers each on its own ticket, {rate} changes/s"),
            figure: format!(
                "p50 {a:.2} ms, p99 {b:.2} ms, max {:.1} ms; {} events, {faults} faulty clients (opened and subscribed in {open_s:.1} s)",
                ms(h.max()),
                h.len()
            ),
            baseline: "commit acknowledged to the writer".into(),
            target: "curve".into(),
            met: (faults > 0).then_some(false),
            incorrect: faults > 0 || h.len() as usize != commits.len(),
        });
        p50.push((n as f64, a));
        p99.push((n as f64, b));
    }
    report.curve(Curve {
        title: "commit → client vs subscribers".into(),
        x_label: "subscribers (each on its own ticket), 500 changes/s".into(),
        y_label: "ms".into(),
        log_x: true,
        series: vec![
            Series {
                name: "p50".into(),
                points: p50,
            },
            Series {
                name: "p99".into(),
                points: p99,
            },
        ],
    });
    Ok(())
}

/// Wait (at most 60 s) until the presence table holds at least `n` rows.
async fn wait_for_viewers(env: &BenchEnv, n: i64) -> Result<()> {
    let sql = env.sql().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let rows: i64 = sql
            .query_one("SELECT count(*) FROM presence", &[])
            .await?
            .get(0);
        if rows >= n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the viewers of {n} subscribers were not all written within 60 s")
}

/// Subscribe → snapshot received, on tickets with 1 / 1,000 / 10,000
/// messages (the snapshot carries the newest 50: it should stay flat).
pub async fn snapshot(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let s = args.scale_down.max(1);
    let sql = env.sql().await?;
    let agent = env.tokens[6].0;
    let mut medians = Vec::new();
    let mut p90s = Vec::new();
    for m in [1i64, 1000 / s as i64, 10_000 / s as i64] {
        let ticket = env.tickets(1).await?[0];
        let mut left = m;
        while left > 0 {
            let batch = left.min(1000);
            sql.execute(
                "INSERT INTO messages (ticket_id, kind, author_agent_id, body) \
                 SELECT $1, 'note', $2, 'bench message ' || g FROM generate_series(1, $3::bigint) g",
                &[&ticket, &agent, &batch],
            )
            .await?;
            left -= batch;
        }
        let times = subscribe_times(&env.base, &env.tokens[6].1, ticket, 30).await?;
        let (median, _, _) = spread(&times);
        let mut sorted = times.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p90 = sorted[(sorted.len() * 9 / 10).min(sorted.len() - 1)];
        eprintln!("    {m} messages: snapshot median {median:.2} ms, p90 {p90:.2} ms");
        report.add(Row {
            scenario: format!("subscribe → snapshot, ticket with {m} messages"),
            figure: format!(
                "median {median:.2} ms, p90 {p90:.2} ms over {} subscribes",
                times.len()
            ),
            baseline: "—".into(),
            target: "curve (flat: newest 50)".into(),
            met: None,
            incorrect: false,
        });
        medians.push((m as f64, median));
        p90s.push((m as f64, p90));
    }
    report.curve(Curve {
        title: "subscribe → snapshot vs messages on the ticket".into(),
        x_label: "messages on the ticket".into(),
        y_label: "ms".into(),
        log_x: true,
        series: vec![
            Series {
                name: "median".into(),
                points: medians,
            },
            Series {
                name: "p90".into(),
                points: p90s,
            },
        ],
    });
    Ok(())
}

/// One connection; `n` times: subscribe, wait for the snapshot (checking it
/// is the ticket's current version), unsubscribe. Milliseconds each (the
/// first, which warms caches, is left out).
async fn subscribe_times(base: &str, token: &str, ticket: i64, n: usize) -> Result<Vec<f64>> {
    let mut ws = connect(base, token).await?;
    let mut times = Vec::new();
    for i in 0..=n {
        let started = Instant::now();
        ws.send(Message::Text(
            json!({"type": "subscribe", "ticket_id": ticket}).to_string(),
        ))
        .await?;
        loop {
            let frame = next_text(&mut ws).await?;
            if frame.starts_with(r#"{"type": "snapshot""#) {
                let v: serde_json::Value = serde_json::from_str(&frame)?;
                if v["ticket"]["id"] != ticket {
                    bail!("snapshot of another ticket");
                }
                break;
            }
        }
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        ws.send(Message::Text(
            json!({"type": "unsubscribe", "ticket_id": ticket}).to_string(),
        ))
        .await?;
    }
    Ok(times)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, token: &str) -> Result<Ws> {
    let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // TCP_NODELAY, like browsers: an unsubscribe + subscribe pair must not
    // wait for a delayed ACK (Nagle), or every subscribe measures 40 ms.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true).await?;
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text),
            Some(Ok(_)) => continue,
            other => return Err(anyhow!("connection ended: {other:?}")),
        }
    }
}

/// Resume with 10,000 / 100,000 / 1,000,000 events in the log: a client
/// that missed the last 1,000 (should stay flat: an index range), and one
/// that missed them all (linear: reported as events/s).
pub async fn resume_log(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let s = args.scale_down.max(1) as i64;
    let admin = env.admin_sql().await?;
    let mut last_k = Vec::new();
    let mut all = Vec::new();
    for n in [10_000 / s, 100_000 / s, 1_000_000 / s] {
        let ticket = env.tickets(1).await?[0];
        let fill = Instant::now();
        // A log of n events, written in bulk without the triggers (the
        // triggers' own cost is measured elsewhere): versions 2..=n+1.
        admin
            .batch_execute(&format!(
                "BEGIN;
                 SET LOCAL session_replication_role = replica;
                 INSERT INTO ticket_events (ticket_id, version, kind, actor_agent_id, data)
                 SELECT {ticket}, g, 'ticket.updated', NULL,
                        jsonb_build_object('changes', jsonb_build_object('subject',
                            jsonb_build_object('from', 'change ' || (g - 1), 'to', 'change ' || g)))
                 FROM generate_series(2, {last}) g;
                 UPDATE tickets SET version = {last}, subject = 'change {last}' WHERE id = {ticket};
                 COMMIT;
                 ANALYZE ticket_events;",
                last = n + 1
            ))
            .await?;
        let log_rows: i64 = admin
            .query_one("SELECT count(*) FROM ticket_events", &[])
            .await?
            .get(0);
        eprintln!(
            "    log of {n} events on one ticket ({log_rows} in all) written in {:.1} s",
            fill.elapsed().as_secs_f64()
        );
        let k = 1000.min(n);
        let short = resume_once(&env.base, &env.tokens[3].1, ticket, n + 1 - k, n + 1).await?;
        let full = resume_once(&env.base, &env.tokens[3].1, ticket, 1, n + 1).await?;
        eprintln!(
            "    resume after {k} missed: {:.0} ms; after all {n}: {:.0} ms ({:.0} events/s)",
            short * 1000.0,
            full * 1000.0,
            n as f64 / full
        );
        report.add(Row {
            scenario: format!("resume with {n} events of the ticket in the log ({log_rows} in all)"),
            figure: format!(
                "{:.0} ms after missing the last {k}; {:.0} ms after missing all {n} ({:.0} events/s); in order, none twice",
                short * 1000.0,
                full * 1000.0,
                n as f64 / full
            ),
            baseline: "—".into(),
            target: "curve (flat for the last 1,000)".into(),
            met: None,
            incorrect: false,
        });
        last_k.push((n as f64, short * 1000.0));
        all.push((n as f64, full * 1000.0));
    }
    report.curve(Curve {
        title: "resume vs events in the log".into(),
        x_label: "events of the ticket in the log".into(),
        y_label: "ms (connect + subscribe + replay)".into(),
        log_x: true,
        series: vec![
            Series {
                name: "missed the last 1,000".into(),
                points: last_k,
            },
            Series {
                name: "missed them all".into(),
                points: all,
            },
        ],
    });
    Ok(())
}

/// Connect, subscribe with `since`, read until `last`: seconds. Fails on a
/// gap, a duplicate or disorder.
async fn resume_once(base: &str, token: &str, ticket: i64, since: i64, last: i64) -> Result<f64> {
    let started = Instant::now();
    let mut ws = connect(base, token).await?;
    ws.send(Message::Text(
        json!({"type": "subscribe", "ticket_id": ticket, "since": since}).to_string(),
    ))
    .await?;
    let mut expected = since + 1;
    while expected <= last {
        let text = next_text(&mut ws).await?;
        if let Some((t, v)) = wsload::event_ids(&text) {
            if t != ticket {
                continue;
            }
            if v != expected {
                bail!("resume of ticket {ticket}: got version {v}, expected {expected}");
            }
            expected += 1;
        }
    }
    let took = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    Ok(took)
}

/// Changes/s and delivered messages/s with 1, 2 and 4 livedesk processes on
/// one database: 8 HTTP writers PATCHing as fast as they can (round-robin
/// over the processes), 400 watchers spread evenly over the processes
/// (50 per ticket), every delivery checked.
pub async fn processes(env: &BenchEnv, args: &BenchArgs, report: &mut Report) -> Result<()> {
    let s = args.scale_down.max(1);
    let watchers_total = (400 / s).max(16);
    let seconds = args.seconds.div_ceil(2).max(2) as u64;
    let mut changes = Vec::new();
    let mut delivered_series = Vec::new();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(16)
        .build()?;
    for p in [1usize, 2, 4] {
        let mut extra = Vec::new();
        let mut bases = vec![env.base.clone()];
        for _ in 1..p {
            let (child, base) = env::spawn_extra_server(env).await?;
            extra.push(child);
            bases.push(base);
        }
        let result = processes_once(env, &http, &bases, watchers_total, seconds).await;
        for child in extra {
            env::stop_server(child);
        }
        let (rate, delivered, faults, lost, p99) = result?;
        eprintln!(
            "    {p} process(es): {rate:.0} changes/s, {delivered:.0} delivered msgs/s, p99 {p99:.1} ms, {faults} faulty, {lost} lost"
        );
        report.add(Row {
            scenario: format!(
                "{p} livedesk process(es) on one database: 8 HTTP writers, {watchers_total} watchers"
            ),
            figure: format!(
                "{rate:.0} changes/s, {delivered:.0} delivered msgs/s (commit → client p99 {p99:.1} ms); {faults} faulty clients, {lost} lost"
            ),
            baseline: "—".into(),
            target: "curve".into(),
            met: (faults > 0 || lost > 0).then_some(false),
            incorrect: faults > 0 || lost > 0,
        });
        changes.push((p as f64, rate));
        delivered_series.push((p as f64, delivered / 10.0));
    }
    report.curve(Curve {
        title: "throughput vs livedesk processes (one database)".into(),
        x_label: "livedesk processes".into(),
        y_label: "per second".into(),
        log_x: false,
        series: vec![
            Series {
                name: "changes/s (HTTP PATCH)".into(),
                points: changes,
            },
            Series {
                name: "delivered msgs/s ÷ 10".into(),
                points: delivered_series,
            },
        ],
    });
    Ok(())
}

/// (changes/s, delivered msgs/s, faulty clients, lost deliveries, p99 ms).
async fn processes_once(
    env: &BenchEnv,
    http: &reqwest::Client,
    bases: &[String],
    watchers_total: usize,
    seconds: u64,
) -> Result<(f64, f64, u64, u64, f64)> {
    let tickets = env.tickets(8).await?;
    let mut sets = Vec::new();
    for base in bases {
        sets.push(
            wsload::open(
                base,
                &env.tokens[7].1,
                &tickets,
                watchers_total / bases.len(),
                None,
            )
            .await?,
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (j, ticket) in tickets.iter().enumerate() {
        let (http, base, token, ticket) = (
            http.clone(),
            bases[j % bases.len()].clone(),
            env.tokens[j % env.tokens.len()].1.clone(),
            *ticket,
        );
        tasks.push(tokio::spawn(async move {
            let mut commits = Vec::new();
            let mut subject = super::scenarios::current_subject(&http, &base, &token, ticket).await;
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let next = format!("p {ticket} {n}");
                let r = http
                    .patch(format!("{base}/api/tickets/{ticket}"))
                    .bearer_auth(&token)
                    .json(&json!({"changes": {"subject": {"from": subject, "to": next}}}))
                    .send()
                    .await?;
                if r.status() == reqwest::StatusCode::CONFLICT {
                    // Not expected (each writer owns its ticket): say what
                    // the server said, read the subject again, go on.
                    let body = r.text().await.unwrap_or_default();
                    eprintln!("    PATCH of ticket {ticket} answered 409: {body}");
                    subject = super::scenarios::current_subject(&http, &base, &token, ticket).await;
                    continue;
                }
                if !r.status().is_success() {
                    bail!("PATCH answered {}", r.status());
                }
                let at = Instant::now();
                let body: serde_json::Value = r.json().await?;
                let version = body["version"]
                    .as_i64()
                    .ok_or_else(|| anyhow!("no version in {body}"))?;
                commits.push(((ticket, version), at));
                subject = next;
            }
            Ok::<_, anyhow::Error>(commits)
        }));
    }
    let mut commits = Commits::new();
    for t in tasks {
        commits.extend(t.await??);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut logs = Vec::new();
    for set in sets {
        logs.extend(set.finish().await);
    }
    let (h, faults, _) = wsload::analyse(&logs, &commits);
    let expected: u64 = logs
        .iter()
        .filter_map(|l| l.ticket.map(|t| (t, l.start_version)))
        .map(|(t, start)| {
            commits
                .keys()
                .filter(|(ct, v)| *ct == t && *v > start)
                .count() as u64
        })
        .sum();
    let lost = expected.saturating_sub(h.len());
    Ok((
        commits.len() as f64 / seconds as f64,
        h.len() as f64 / seconds as f64,
        faults,
        lost,
        ms(h.value_at_quantile(0.99)),
    ))
}
