//! Faults: clean shutdown, a network that goes silent between livedesk and
//! PostgreSQL (through the TCP fault proxy of `common::proxy`), a database
//! that goes back in time, PostgreSQL killed during writes, and a livedesk
//! process killed under its clients. Every test prints a `FAULT …` line with
//! what it measured; `docs/reliability.md` quotes them.
//!
//! Tests that restart or rewind the cluster this binary shares take the
//! `CLUSTER` lock for writing; the others take it for reading.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::{Ended, WsClient};
use common::{cluster, TestApp};
use serde_json::Value;

static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, logging JSON lines at `info` to a pipe.
fn livedesk(port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_livedesk"));
    command
        .env_remove("DATABASE_URL")
        .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
        .env("LIVEDESK_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Collect a child's stdout and stderr lines on threads.
fn capture(
    child: &mut Child,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    (rx, log)
}

async fn wait_healthy(base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became healthy");
}

fn sigterm(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Wait for the child to exit (polling, at most `limit`).
async fn exited(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Log lines at WARN or ERROR.
fn warnings(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect()
}

fn postgres_of(dir: &std::path::Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("postgres") && cmdline.contains(&*dir.to_string_lossy()) {
            pids.push(pid);
        }
    }
    pids
}

fn has_viewer(frame: &Value, agent: i64) -> bool {
    frame["viewers"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["agent"]["id"] == agent))
}

/// SIGTERM on the embedded default: sockets closed with 1001, the process
/// exits 0 within 5 s, nothing logged at WARN or above, PostgreSQL stopped.
#[tokio::test]
async fn sigterm_stops_everything_in_order_within_5s_without_warnings() {
    let dir = tempfile::Builder::new()
        .prefix("livedesk-stop-")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = livedesk(port)
        .env("LIVEDESK_DATA_DIR", &data)
        .spawn()
        .unwrap();
    let (stdout, log) = capture(&mut server);
    // The first start prints a one-time login link with the admin's token.
    let token = tokio::task::spawn_blocking(move || loop {
        let line = stdout.recv_timeout(Duration::from_secs(60)).unwrap();
        if let Some((_, token)) = line.split_once("#token=") {
            return token.trim().to_string();
        }
    })
    .await
    .unwrap();
    wait_healthy(&base, Duration::from_secs(30)).await;
    let http = reqwest::Client::new();
    let ticket: Value = http
        .post(format!("{base}/api/tickets"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"subject": "stop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = ticket["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&base, &token).await;
    let me = ws.hello["agent"]["id"].as_i64().unwrap();
    ws.subscribe(id, None).await;
    while !has_viewer(&ws.next_of("presence").await, me) {}
    // An idle keep-alive HTTP connection stays open too (reqwest's pool).

    let started = Instant::now();
    sigterm(&server);
    assert_eq!(
        ws.closed(Duration::from_secs(5)).await,
        Ended::Closed(Some(1001)),
        "the WebSocket is closed with 1001"
    );
    let closed_after = started.elapsed();
    let status = exited(&mut server, Duration::from_secs(5))
        .await
        .expect("livedesk exits within 5 s of SIGTERM");
    let stopped_after = started.elapsed();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        log.join("\n")
    );
    assert!(
        warnings(&log).is_empty(),
        "no warning while stopping:\n{}",
        log.join("\n")
    );
    assert!(
        postgres_of(&data).is_empty(),
        "the embedded PostgreSQL is stopped"
    );
    println!(
        "FAULT sigterm: socket closed 1001 after {} ms, process exited 0 after {} ms, 0 warnings",
        closed_after.as_millis(),
        stopped_after.as_millis()
    );
}

/// A stopping process removes its viewers before it closes its pool: the
/// other processes see them leave at once, not after the presence TTL.
#[tokio::test]
async fn sigterm_removes_this_process_viewers_at_once() {
    let _shared = CLUSTER.read().await;
    let app = TestApp::spawn().await;
    let (alice, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "leave").await["id"].as_i64().unwrap();
    let port = free_port();
    let other_base = format!("http://127.0.0.1:{port}");
    let mut other = livedesk(port)
        .env("DATABASE_URL", cluster().url(&app.dbname))
        .spawn()
        .unwrap();
    let (_stdout, log) = capture(&mut other);
    wait_healthy(&other_base, Duration::from_secs(30)).await;
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut alice_ws = WsClient::connect(&other_base, &token_a).await;
    alice_ws.subscribe(id, None).await;
    while !has_viewer(&bob.next_of("presence").await, alice.id) {}

    let started = Instant::now();
    sigterm(&other);
    while has_viewer(&bob.next_of("presence").await, alice.id) {}
    let gone_after = started.elapsed();
    // The presence TTL is 30 s: this is the removal, not the expiry.
    assert!(gone_after < Duration::from_secs(5), "{gone_after:?}");
    let status = exited(&mut other, Duration::from_secs(5))
        .await
        .expect("exits within 5 s");
    assert!(status.success());
    let sql = app.sql().await;
    let left: i64 = sql
        .query_one(
            "SELECT count(*) FROM presence WHERE agent_id = $1",
            &[&alice.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the process removed its viewers before exiting");
    let log = log.join().unwrap();
    assert!(warnings(&log).is_empty(), "{}", log.join("\n"));
    println!(
        "FAULT sigterm-presence: viewer gone for the other process after {} ms (TTL 30000 ms)",
        gone_after.as_millis()
    );
    drop(alice_ws);
}
