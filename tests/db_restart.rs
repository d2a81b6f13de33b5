//! A database restart during writes loses nothing (own binary: it restarts
//! the cluster its tests share).

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::ws::{assert_versions, WsClient};
use common::{cluster, TestApp};
use livedesk::config::Bus;

/// The tests here restart the cluster every test of this binary shares: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn a_database_restart_during_writes_loses_nothing_and_healthz_recovers(bus: Bus) {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "restart").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;

    // Writer: 300 changes, retrying across the restart (each attempt is one
    // transaction: a failed one left nothing behind).
    let dbname = app.dbname.clone();
    let writer = tokio::spawn(async move {
        let mut done = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        while done < 300 {
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                match cluster()
                    .config(&dbname)
                    .connect(tokio_postgres::NoTls)
                    .await
                {
                    Ok((c, conn)) => {
                        tokio::spawn(conn);
                        client = Some(c);
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let Some(c) = client.as_ref() else { continue };
            match c
                .execute(
                    "UPDATE tickets SET subject = $2 WHERE id = $1",
                    &[&id, &format!("n{done}")],
                )
                .await
            {
                Ok(_) => done += 1,
                Err(_) => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    // Watch /healthz go 503 during the restart, then 200.
    let http = app.http.clone();
    let health_url = format!("{}/healthz", app.base);
    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let status = match http
                .get(&health_url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if seen.contains(&503) && status == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::spawn_blocking(|| cluster().restart())
        .await
        .unwrap();
    writer.await.unwrap();
    let health = watcher.await.unwrap();
    assert!(
        health.contains(&503),
        "healthz reported the outage: {health:?}"
    );
    assert_eq!(health.last(), Some(&200), "healthz recovered: {health:?}");
    let events = ws.events(id, 300, Duration::from_secs(30)).await;
    assert_versions(&events, 2, 301);
}
crate::both_buses!(a_database_restart_during_writes_loses_nothing_and_healthz_recovers);

/// Presence lives in an UNLOGGED table, which crash recovery empties: the
/// processes publish their viewers again once their listener is back.
#[tokio::test]
async fn viewers_come_back_after_a_database_crash() {
    let _serial = SERIAL.lock().await;
    let app = TestApp::spawn().await;
    let (alice, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "crash").await["id"].as_i64().unwrap();
    let mut alice_ws = WsClient::connect(&app.base, &token_a).await;
    alice_ws.subscribe(id, None).await;
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let has_alice = |frame: &serde_json::Value| {
        frame["viewers"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["agent"]["id"] == alice.id))
    };
    loop {
        if has_alice(&bob.next_of("presence").await) {
            break;
        }
    }
    // Crash: immediate shutdown, then crash recovery on start.
    tokio::task::spawn_blocking(|| {
        let cluster = cluster();
        let mut pg = cluster.pg.lock().unwrap();
        if let Some(pid) = pg.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        std::thread::sleep(Duration::from_millis(500));
        pg.restart().unwrap();
    })
    .await
    .unwrap();
    let sql = app.sql().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: i64 = sql
            .query_one(
                "SELECT count(*) FROM presence WHERE ticket_id = $1 AND agent_id = $2",
                &[&id, &alice.id],
            )
            .await
            .unwrap()
            .get(0);
        if rows > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Alice's presence was never published again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(alice_ws);
}
