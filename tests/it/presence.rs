//! Presence: viewing, typing, idle, across connections and processes.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::WsClient;
use common::{cluster, test_settings, TestApp};
use serde_json::{json, Value};

/// Wait for a presence list of `ticket` satisfying `check`; the list.
async fn presence_until(
    ws: &mut WsClient,
    ticket: i64,
    limit: Duration,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let Some(frame) = ws.next_within(deadline - Instant::now()).await else {
            break;
        };
        if frame["type"] == "presence" && frame["ticket_id"] == ticket {
            last = frame["viewers"].as_array().unwrap().clone();
            if check(&last) {
                return last;
            }
        }
    }
    panic!("presence never matched; last list: {last:?}");
}

fn state_of(viewers: &[Value], agent: i64) -> Option<String> {
    viewers
        .iter()
        .find(|v| v["agent"]["id"] == agent)
        .map(|v| v["state"].as_str().unwrap().to_string())
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_colleague_sees_viewing_typing_idle_and_gone() {
    let app = TestApp::spawn().await;
    let (a, token_a) = app.agent("Alice", "agent").await;
    let (b, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "presence").await["id"]
        .as_i64()
        .unwrap();
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let snapshot = bob.next_of("snapshot").await;
    assert!(snapshot["presence"].is_array());
    presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, b.id).as_deref() == Some("viewing")
    })
    .await;

    let mut alice = WsClient::connect(&app.base, &token_a).await;
    alice.subscribe(id, None).await;
    presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, a.id).as_deref() == Some("viewing")
    })
    .await;
    for state in ["typing", "idle", "viewing"] {
        alice
            .send(json!({"type": "presence", "ticket_id": id, "state": state}))
            .await;
        let list = presence_until(&mut bob, id, WAIT, |v| {
            state_of(v, a.id).as_deref() == Some(state)
        })
        .await;
        assert_eq!(list.len(), 2);
        let alice_entry = list.iter().find(|v| v["agent"]["id"] == a.id).unwrap();
        assert_eq!(alice_entry["agent"]["name"], "Alice");
        assert!(alice_entry["since"].is_string());
    }
    // The ticket GET shows the viewers too.
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &token_b).await;
    assert_eq!(full["presence"].as_array().unwrap().len(), 2, "{full}");
    drop(alice);
    presence_until(&mut bob, id, WAIT, |v| state_of(v, a.id).is_none()).await;
    // Unsubscribe removes too.
    let mut carol = WsClient::connect(&app.base, &token_a).await;
    carol.subscribe(id, None).await;
    presence_until(&mut bob, id, WAIT, |v| state_of(v, a.id).is_some()).await;
    carol
        .send(json!({"type": "unsubscribe", "ticket_id": id}))
        .await;
    presence_until(&mut bob, id, WAIT, |v| state_of(v, a.id).is_none()).await;
}

#[tokio::test]
async fn two_tabs_of_one_agent_are_one_avatar_with_the_most_active_state() {
    let app = TestApp::spawn().await;
    let (a, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "tabs").await["id"].as_i64().unwrap();
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut tab1 = WsClient::connect(&app.base, &token_a).await;
    let mut tab2 = WsClient::connect(&app.base, &token_a).await;
    tab1.subscribe(id, None).await;
    tab2.subscribe(id, None).await;
    tab1.send(json!({"type": "presence", "ticket_id": id, "state": "idle"}))
        .await;
    tab2.send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
        .await;
    let list = presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, a.id).as_deref() == Some("typing")
    })
    .await;
    assert_eq!(
        list.iter().filter(|v| v["agent"]["id"] == a.id).count(),
        1,
        "one avatar"
    );
    drop(tab2);
    let list = presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, a.id).as_deref() == Some("idle")
    })
    .await;
    assert_eq!(
        list.iter().filter(|v| v["agent"]["id"] == a.id).count(),
        1,
        "closing one tab keeps the avatar"
    );
}

#[tokio::test]
async fn presence_is_shared_across_processes() {
    let a_app = TestApp::spawn().await;
    let b_app = TestApp::spawn_on(a_app.dbname.clone(), test_settings()).await;
    let (a, token_a) = a_app.agent("Alice", "agent").await;
    let (_, token_b) = a_app.agent("Bob", "agent").await;
    let id = a_app.ticket(&token_a, "shared").await["id"]
        .as_i64()
        .unwrap();
    let mut bob = WsClient::connect(&b_app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut alice = WsClient::connect(&a_app.base, &token_a).await;
    alice.subscribe(id, None).await;
    presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, a.id).as_deref() == Some("viewing")
    })
    .await;
    alice
        .send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
        .await;
    presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, a.id).as_deref() == Some("typing")
    })
    .await;
    drop(alice);
    presence_until(&mut bob, id, WAIT, |v| state_of(v, a.id).is_none()).await;
}

#[tokio::test]
async fn the_viewers_of_a_killed_process_expire_within_the_ttl() {
    let mut settings = test_settings();
    settings.presence_ttl_ms = 2000;
    let app = TestApp::spawn_with(settings).await;
    let (a, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "kill -9").await["id"]
        .as_i64()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut other = Command::new(env!("CARGO_BIN_EXE_livedesk"))
        .env("DATABASE_URL", cluster().url(&app.dbname))
        .env("LIVEDESK_BIND", format!("127.0.0.1:{port}"))
        .env("LIVEDESK_PRESENCE_TTL_MS", "2000")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let other_base = format!("http://127.0.0.1:{port}");
    let mut ready = false;
    for _ in 0..200 {
        if reqwest::get(format!("{other_base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "second process up");
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    let mut alice = WsClient::connect(&other_base, &token_a).await;
    alice.subscribe(id, None).await;
    presence_until(&mut bob, id, WAIT, |v| state_of(v, a.id).is_some()).await;
    other.kill().unwrap();
    other.wait().unwrap();
    let killed = Instant::now();
    presence_until(&mut bob, id, Duration::from_secs(10), |v| {
        state_of(v, a.id).is_none()
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(2 + 4),
        "gone within TTL + a few seconds: {:?}",
        killed.elapsed()
    );
    drop(alice);
}

#[tokio::test]
async fn typing_floods_are_coalesced_and_do_not_slow_events() {
    let app = TestApp::spawn().await;
    let (_, token_a) = app.agent("Alice", "agent").await;
    let (_, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_a, "flood").await["id"].as_i64().unwrap();
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    bob.next_of("snapshot").await;
    let mut alice = WsClient::connect(&app.base, &token_a).await;
    alice.subscribe(id, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = app.metric("livedesk_presence_writes_total").await;
    let sql = app.sql().await;
    let flood = tokio::spawn(async move {
        for n in 0..500 {
            let state = if n % 2 == 0 { "typing" } else { "viewing" };
            alice
                .send(json!({"type": "presence", "ticket_id": id, "state": state}))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        alice
    });
    // Meanwhile ticket events keep flowing to Bob promptly.
    let mut worst = Duration::ZERO;
    for n in 0..20 {
        let started = Instant::now();
        sql.execute(
            "UPDATE tickets SET subject = $2 WHERE id = $1",
            &[&id, &format!("s{n}")],
        )
        .await
        .unwrap();
        let events = bob.events(id, 1, Duration::from_secs(5)).await;
        assert_eq!(events.len(), 1);
        worst = worst.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _alice = flood.await.unwrap();
    let written = app.metric("livedesk_presence_writes_total").await - before;
    // 5 s of flapping at 100 frames/s: at most one write per 200 ms.
    assert!(written <= 30, "{written} presence writes for 500 frames");
    assert!(
        worst < Duration::from_millis(500),
        "event latency during the flood: {worst:?}"
    );
}
