//! Live events over WebSocket: every committed change, exactly once, in order.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::ws::{assert_versions, Ended, WsClient};
use common::{test_settings, TestApp};
use livedesk::config::Bus;
use serde_json::json;

const LONG: Duration = Duration::from_secs(30);

async fn subject_change(sql: &tokio_postgres::Client, ticket: i64, n: usize) {
    sql.execute(
        "UPDATE tickets SET subject = $2 WHERE id = $1",
        &[&ticket, &format!("subject {n}")],
    )
    .await
    .unwrap();
}

async fn http_and_direct_sql_changes_reach_a_subscriber(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let ticket = app.ticket(&token, "Hello").await;
    let id = ticket["id"].as_i64().unwrap();

    let mut ws = WsClient::connect(&app.base, &token).await;
    assert_eq!(ws.hello["agent"]["id"], alice.id);
    assert_eq!(ws.hello["heartbeat_ms"], 15000);
    let subscribed = ws.subscribe(id, None).await;
    assert_eq!(subscribed["version"], 1);
    let snapshot = ws.next_of("snapshot").await;
    assert_eq!(snapshot["ticket"]["subject"], "Hello");
    assert!(snapshot["messages"].is_array());

    let (status, body) = app
        .patch(
            &format!("/api/tickets/{id}"),
            &token,
            json!({"changes": {"subject": {"from": "Hello", "to": "Refund for order 7"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let event = ws.events(id, 1, LONG).await.remove(0);
    assert_eq!(event["version"], 2);
    assert_eq!(event["kind"], "ticket.updated");
    assert_eq!(event["actor"]["id"], alice.id);
    assert_eq!(
        event["data"]["changes"]["subject"]["to"],
        "Refund for order 7"
    );
    // Contract v2 §6: the changes only, no copy of the ticket.
    assert!(event["data"].get("ticket").is_none(), "{event}");

    let sql = app.sql().await;
    sql.batch_execute(&format!(
        "BEGIN; SET LOCAL livedesk.actor_agent_id = '{}'; UPDATE tickets SET priority = 'urgent' WHERE id = {id}; COMMIT;",
        alice.id
    ))
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ($1, 'note', $2, 'from psql')",
        &[&id, &alice.id],
    )
    .await
    .unwrap();
    let events = ws.events(id, 2, LONG).await;
    assert_versions(&events, 3, 4);
    assert_eq!(events[0]["data"]["changes"]["priority"]["to"], "urgent");
    assert_eq!(events[0]["actor"]["id"], alice.id);
    assert_eq!(events[1]["kind"], "message.created");
    assert_eq!(events[1]["data"]["message"]["body"], "from psql");
}
crate::both_buses!(http_and_direct_sql_changes_reach_a_subscriber);

async fn a_client_resuming_with_since_gets_exactly_what_it_missed_then_live(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "s").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    drop(ws);

    let sql = app.sql().await;
    for n in 0..50 {
        subject_change(&sql, id, n).await;
    }
    let mut ws = WsClient::connect(&app.base, &token).await;
    let subscribed = ws.subscribe(id, Some(1)).await;
    assert_eq!(subscribed["version"], 1);
    let events = ws.events(id, 50, LONG).await;
    assert_versions(&events, 2, 51);
    subject_change(&sql, id, 99).await;
    let live = ws.events(id, 1, LONG).await;
    assert_versions(&live, 52, 52);
    assert!(ws
        .next_within(Duration::from_millis(300))
        .await
        .is_none_or(|f| f["type"] != "event"));
}
crate::both_buses!(a_client_resuming_with_since_gets_exactly_what_it_missed_then_live);

async fn subscribing_with_since_while_a_writer_runs_has_no_gap_or_duplicate(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "seam").await["id"].as_i64().unwrap();
    let sql = app.sql().await;
    let writer_sql = app.sql().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                subject_change(&writer_sql, id, n).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for round in 0..50 {
        let since: i64 = sql
            .query_one("SELECT version FROM tickets WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        let since = (since - (round % 5)).max(1);
        let mut ws = WsClient::connect(&app.base, &token).await;
        ws.subscribe(id, Some(since)).await;
        // Read for a moment while the writer keeps going, then check the run.
        let mut versions = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(150);
        while let Some(frame) = ws.next_within(deadline - tokio::time::Instant::now()).await {
            if frame["type"] == "event" {
                versions.push(frame["version"].as_i64().unwrap());
            }
        }
        assert!(!versions.is_empty(), "round {round}: no events");
        let expected: Vec<i64> = (since + 1..since + 1 + versions.len() as i64).collect();
        assert_eq!(
            versions, expected,
            "round {round}: gap or duplicate at the seam"
        );
    }
    stop.cancel();
    writer.await.unwrap();
}
crate::both_buses!(subscribing_with_since_while_a_writer_runs_has_no_gap_or_duplicate);

/// Live events reach a parked session's socket straight from its worker's
/// hand-off, and go through the session's queue while it is busy (a
/// subscribe's read, a client frame): the two paths must make one order.
/// One client keeps its session busy at random moments (re-subscribing
/// with `since` to the ticket it watches, subscribing to another ticket,
/// sending presence and pings) while a writer changes the ticket every
/// millisecond; every run of versions after a `subscribed` must be gapless,
/// and watchers that only read must get every version once, in order.
async fn events_keep_one_order_whether_a_session_is_parked_or_busy(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "busy").await["id"].as_i64().unwrap();
    let other = app.ticket(&token, "other").await["id"].as_i64().unwrap();
    let mut watchers = Vec::new();
    for _ in 0..8 {
        let mut ws = WsClient::connect(&app.base, &token).await;
        ws.subscribe(id, None).await;
        ws.next_of("snapshot").await;
        watchers.push(ws);
    }
    let mut busy = WsClient::connect(&app.base, &token).await;
    let start = busy.subscribe(id, None).await["version"].as_i64().unwrap();
    busy.next_of("snapshot").await;

    const CHANGES: usize = 600;
    let writer_sql = app.sql().await;
    let writer = tokio::spawn(async move {
        for n in 0..CHANGES {
            subject_change(&writer_sql, id, n).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let last_version = start + CHANGES as i64;
    // The client's view of the ticket: the version it has, reset by every
    // `subscribed` (a resume starts again after its `since`).
    let mut have = start;
    let mut events = 0usize;
    let mut subscribes = 0;
    let mut step = 0u64;
    while have < last_version {
        step += 1;
        // Read for a few milliseconds (varying), then do something.
        let read_for = Duration::from_millis(1 + step * 7 % 11);
        let deadline = tokio::time::Instant::now() + read_for;
        while let Some(frame) = busy
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            match (frame["type"].as_str(), frame["ticket_id"].as_i64()) {
                (Some("event"), Some(t)) if t == id => {
                    let version = frame["version"].as_i64().unwrap();
                    assert_eq!(version, have + 1, "step {step}: gap or duplicate ({frame})");
                    have = version;
                    events += 1;
                }
                (Some("event"), _) => panic!("an event of a ticket nobody changed: {frame}"),
                (Some("subscribed"), Some(t)) if t == id => {
                    have = frame["version"].as_i64().unwrap();
                }
                (Some("error"), _) => panic!("step {step}: {frame}"),
                _ => {}
            }
        }
        assert!(step < 20_000, "stuck at version {have} of {last_version}");
        match step % 4 {
            // Resume at what it has (the subscribe budget is 50 at once).
            0 if subscribes < 30 => {
                subscribes += 1;
                busy.send(json!({"type": "subscribe", "ticket_id": id, "since": have}))
                    .await;
            }
            1 if subscribes < 30 => {
                subscribes += 1;
                busy.send(json!({"type": "subscribe", "ticket_id": other}))
                    .await;
            }
            2 => {
                busy.send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
                    .await
            }
            _ => busy.send(json!({"type": "ping"})).await,
        }
    }
    writer.await.unwrap();
    assert_eq!(have, last_version);
    assert!(
        events >= CHANGES,
        "only {events} events for {CHANGES} changes"
    );
    for mut ws in watchers {
        let got = ws.events(id, CHANGES, LONG).await;
        assert_versions(&got, start + 1, last_version);
    }
    // Most frames took the direct path (the order rules between the two
    // paths are unit-tested in src/realtime/hub/tests.rs).
    let direct = app.metric("livedesk_ws_direct_writes_total").await;
    assert!(direct >= CHANGES as u64, "{direct} direct writes");
}
crate::both_buses!(events_keep_one_order_whether_a_session_is_parked_or_busy);

async fn killing_the_listen_connection_loses_nothing(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "k").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    ws.next_of("snapshot").await;
    let sql = app.sql().await;
    let killer = app.sql().await;
    let writer = tokio::spawn(async move {
        for n in 0..500 {
            subject_change(&sql, id, n).await;
        }
    });
    // On the logical bus the stream (a WAL sender) dies too: both come back
    // with a catch-up read.
    let victims: Vec<&str> = match bus {
        Bus::Notify => vec![livedesk::realtime::listener::LISTENER_NAME],
        Bus::Logical => vec![
            livedesk::realtime::listener::LISTENER_NAME,
            livedesk::realtime::stream::STREAM_NAME,
        ],
    };
    let mut kills = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        kills += killer
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = ANY($1)",
                &[&victims],
            )
            .await
            .unwrap()
            .len();
    }
    writer.await.unwrap();
    assert!(
        kills >= victims.len(),
        "the LISTEN connection (and the stream) were found and killed: {kills}"
    );
    let events = ws.events(id, 500, LONG).await;
    assert_versions(&events, 2, 501);
    assert!(ws
        .next_within(Duration::from_millis(300))
        .await
        .is_none_or(|f| f["type"] != "event"));
    let reconnects = app.metric("livedesk_listener_reconnects_total").await;
    assert!(reconnects >= 1, "{reconnects} reconnects");
}
crate::both_buses!(killing_the_listen_connection_loses_nothing);

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_1013_and_resumes_everything() {
    let mut settings = test_settings();
    settings.outbound_queue = 16;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "slow").await["id"].as_i64().unwrap();
    // A tiny receive buffer so the socket fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.address).await.unwrap();
    let request = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("ws://{}/ws", app.address))
        .header("host", app.address.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    let (stream, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    let mut slow = WsClient {
        stream,
        hello: json!(null),
    };
    slow.next_of("hello").await;
    slow.subscribe(id, None).await;
    // Meanwhile a normal client on the same ticket must not be slowed down.
    let mut fast = WsClient::connect(&app.base, &token).await;
    fast.subscribe(id, None).await;
    // The fast client reads at its own pace; the writer below stays at most
    // a few changes ahead of it (well inside its queue of 16), so a loaded
    // machine slowing this reader cannot make it the slow one. The slow
    // client never reads, so it still falls behind.
    let (count_tx, count_rx) = tokio::sync::oneshot::channel::<usize>();
    let (seen_tx, mut seen_rx) = tokio::sync::watch::channel(0usize);
    let fast_reader = tokio::spawn(async move {
        let mut events = Vec::new();
        let mut target: Option<usize> = None;
        let mut count_rx = count_rx;
        while target.is_none_or(|n| events.len() < n) {
            tokio::select! {
                n = &mut count_rx, if target.is_none() => match n {
                    Ok(n) => target = Some(n),
                    Err(_) => break,
                },
                frame = fast.next_within(Duration::from_secs(30)) => match frame {
                    Some(frame) if frame["type"] == "event" => {
                        events.push(frame);
                        seen_tx.send_replace(events.len());
                    }
                    Some(_) => {}
                    None => break,
                },
            }
        }
        events
    });
    let sql = app.sql().await;
    let (alice, _) = app.agent("Writer", "agent").await;
    let long = "x".repeat(50_000);
    let mut written = 0;
    for n in 0..3000 {
        let caught_up = tokio::time::timeout(LONG, seen_rx.wait_for(|seen| seen + 4 >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            caught_up,
            "the fast client stopped reading after {} of {n} changes",
            *seen_rx.borrow()
        );
        sql.execute(
            "INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ($1, 'note', $2, $3)",
            &[&id, &alice.id, &format!("{n} {long}")],
        )
        .await
        .unwrap();
        written += 1;
        if n % 100 == 99 && app.metric("livedesk_ws_closed_slow_total").await > 0 {
            break;
        }
    }
    let _ = count_tx.send(written); // the assertion below tells if the reader stopped
    let fast_events = fast_reader.await.unwrap();
    assert_versions(&fast_events, 2, 1 + written as i64);
    assert_eq!(
        slow.closed(LONG).await,
        Ended::Closed(Some(1013)),
        "slow client closed with 1013 after {written} changes"
    );
    let mut again = WsClient::connect(&app.base, &token).await;
    again.subscribe(id, Some(1)).await;
    let events = again.events(id, written, LONG).await;
    assert_versions(&events, 2, 1 + written as i64);
}

async fn a_change_through_one_process_reaches_a_client_of_another(bus: Bus) {
    let a = TestApp::spawn_bus(bus).await;
    let b = TestApp::spawn_on(a.dbname.clone(), common::bus_settings(bus)).await;
    let (_, token) = a.agent("Alice", "agent").await;
    let id = a.ticket(&token, "two processes").await["id"]
        .as_i64()
        .unwrap();
    let mut on_b = WsClient::connect(&b.base, &token).await;
    on_b.subscribe(id, None).await;
    on_b.next_of("snapshot").await;
    let (status, _) = a
        .patch(
            &format!("/api/tickets/{id}"),
            &token,
            json!({"changes": {"status": {"from": "new", "to": "open"}}}),
        )
        .await;
    assert_eq!(status, 200);
    let events = on_b.events(id, 1, LONG).await;
    assert_versions(&events, 2, 2);
    assert_eq!(events[0]["data"]["changes"]["status"]["to"], "open");
}
crate::both_buses!(a_change_through_one_process_reaches_a_client_of_another);

async fn the_inbox_gets_a_summary_for_every_created_or_changed_ticket(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.send(json!({"type": "subscribe_inbox"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ticket = app.ticket(&token, "inbox me").await;
    let frame = ws.next_of("inbox").await;
    assert_eq!(frame["ticket"]["id"], ticket["id"]);
    assert_eq!(frame["ticket"]["subject"], "inbox me");
    assert_eq!(frame["ticket"]["viewers"], json!([]));
    // Someone opens it: the inbox row shows the viewer, and so does the list.
    let (bob, bob_token) = app.agent("Bob", "agent").await;
    let mut viewer = WsClient::connect(&app.base, &bob_token).await;
    viewer.subscribe(ticket["id"].as_i64().unwrap(), None).await;
    loop {
        let frame = ws.next_of("inbox").await;
        if frame["ticket"]["viewers"][0]["agent"]["id"] == bob.id {
            break;
        }
    }
    let (_, list) = app.get("/api/tickets", &token).await;
    assert_eq!(list["tickets"][0]["viewers"][0]["agent"]["id"], bob.id);
    assert_eq!(list["tickets"][0]["viewers"][0]["state"], "viewing");
}
crate::both_buses!(the_inbox_gets_a_summary_for_every_created_or_changed_ticket);

#[tokio::test]
async fn wrong_origin_and_bad_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let evil =
        WsClient::connect_with(&app.base, Some(&token), Some("https://evil.example"), false).await;
    assert_eq!(evil.err(), Some(403));
    let own = WsClient::connect_with(&app.base, Some(&token), Some(&app.base), false).await;
    assert!(own.is_ok());
    let query = WsClient::connect_with(&app.base, Some(&token), Some(&app.base), true).await;
    assert!(query.is_ok(), "token in the query string");
    assert_eq!(
        WsClient::connect_with(&app.base, None, None, false)
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        WsClient::connect_with(&app.base, Some("ldk_bad"), None, true)
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_stays() {
    let mut settings = test_settings();
    settings.max_subscriptions = 3;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "frames").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    let mut neighbour = WsClient::connect(&app.base, &token).await;
    neighbour.subscribe(id, None).await;
    neighbour.next_of("snapshot").await;
    let cases: Vec<(&str, String)> = vec![
        ("invalid_json", "not json".into()),
        ("invalid_json", "{".into()),
        ("invalid_json", "".into()),
        ("invalid_frame", "[]".into()),
        ("invalid_frame", "42".into()),
        ("invalid_frame", "null".into()),
        ("invalid_frame", r#"{"ticket_id": 1}"#.into()),
        ("invalid_frame", r#"{"type": 7}"#.into()),
        ("unknown_type", r#"{"type": "dance"}"#.into()),
        (
            "unknown_type",
            r#"{"type": "SUBSCRIBE", "ticket_id": 1}"#.into(),
        ),
        ("invalid_frame", r#"{"type": "subscribe"}"#.into()),
        (
            "invalid_frame",
            r#"{"type": "subscribe", "ticket_id": "1"}"#.into(),
        ),
        (
            "invalid_frame",
            r#"{"type": "subscribe", "ticket_id": 1.5}"#.into(),
        ),
        (
            "invalid_frame",
            r#"{"type": "subscribe", "ticket_id": 99999999999999999999}"#.into(),
        ),
        (
            "invalid_frame",
            r#"{"type": "subscribe", "ticket_id": 1, "since": "x"}"#.into(),
        ),
        (
            "invalid_frame",
            format!(r#"{{"type": "subscribe", "ticket_id": {id}, "since": -1}}"#),
        ),
        (
            "invalid_field",
            format!(r#"{{"type": "subscribe", "ticket_id": {id}, "since": 999}}"#),
        ),
        (
            "invalid_frame",
            r#"{"type": "subscribe", "ticket_id": 1, "extra": true}"#.into(),
        ),
        (
            "not_found",
            r#"{"type": "subscribe", "ticket_id": 424242}"#.into(),
        ),
        (
            "not_found",
            r#"{"type": "subscribe", "ticket_id": -3}"#.into(),
        ),
        (
            "not_subscribed",
            r#"{"type": "unsubscribe", "ticket_id": 5}"#.into(),
        ),
        (
            "not_subscribed",
            format!(r#"{{"type": "presence", "ticket_id": {id}, "state": "typing"}}"#),
        ),
        (
            "invalid_frame",
            format!(r#"{{"type": "presence", "ticket_id": {id}, "state": "asleep"}}"#),
        ),
        (
            "invalid_frame",
            r#"{"type": "presence", "ticket_id": 1}"#.into(),
        ),
        ("invalid_frame", r#"{"type": "ping", "x": 1}"#.into()),
    ];
    for (code, text) in &cases {
        ws.send_text(text).await;
        let frame = ws.next_of("error").await;
        assert_eq!(frame["code"], *code, "frame {text}: {frame}");
        assert!(frame["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Binary frames are refused with an error frame too.
    use futures_util::SinkExt;
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::Binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(ws.next_of("error").await["code"], "unsupported_frame");
    // Too many subscriptions.
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            app.ticket(&token, &format!("t{n}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    for id in &ids[..3] {
        ws.subscribe(*id, None).await;
    }
    ws.send(json!({"type": "subscribe", "ticket_id": ids[3]}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "too_many_subscriptions");
    // Still alive.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong");
    // An oversize frame closes with 1009; the neighbour is unaffected.
    ws.send_text(&"x".repeat(70 * 1024)).await;
    assert_eq!(ws.closed(LONG).await, Ended::Closed(Some(1009)));
    app.patch(
        &format!("/api/tickets/{id}"),
        &token,
        json!({"changes": {"status": {"from": "new", "to": "open"}}}),
    )
    .await;
    assert_versions(&neighbour.events(id, 1, LONG).await, 2, 2);
}

#[tokio::test]
async fn flooding_frames_gets_rate_limited_then_closed() {
    let mut settings = test_settings();
    settings.max_frames_per_second = 20;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    for _ in 0..100 {
        ws.send(json!({"type": "ping"})).await;
    }
    let mut limited = false;
    loop {
        match ws.next_within(Duration::from_secs(5)).await {
            Some(frame) if frame["code"] == "rate_limited" => limited = true,
            Some(_) => {}
            None => break,
        }
    }
    assert!(limited, "an error frame before the close");
    // Binary frames and WebSocket pings count too (before, they were
    // answered one by one without end): closed with 1008 like text.
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for flood in [Message::Binary(vec![1u8]), Message::Ping(vec![])] {
        let mut ws = WsClient::connect(&app.base, &token).await;
        for _ in 0..200 {
            if ws.stream.send(flood.clone()).await.is_err() {
                break;
            }
        }
        assert_eq!(
            ws.closed(LONG).await,
            Ended::Closed(Some(1008)),
            "a flood of {flood:?}"
        );
    }
}

#[tokio::test]
async fn close_is_answered_and_silence_times_out_with_4002() {
    let mut settings = test_settings();
    settings.presence_ttl_ms = 800;
    settings.heartbeat_ms = 300;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    // A clean close gets a clean answer.
    let mut ws = WsClient::connect(&app.base, &token).await;
    use futures_util::SinkExt;
    ws.stream
        .send(tokio_tungstenite::tungstenite::Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "bye".into(),
            },
        )))
        .await
        .unwrap();
    assert_eq!(ws.closed(LONG).await, Ended::Closed(Some(1000)));
    // A client that never answers pings is closed after the TTL. A raw socket:
    // a WebSocket library would answer the pings for us.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.address
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut bytes)).await;
    let elapsed = started.elapsed();
    // The close frame: FIN+opcode 8, then the code 4002 (0x0FA2) big-endian.
    let close_4002 = bytes
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2] == 0x0F && w[3] == 0xA2);
    assert!(close_4002, "no 4002 close frame in {} bytes", bytes.len());
    assert!(
        elapsed >= Duration::from_millis(700) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_refused_resubscribe_leaves_no_subscription_and_no_presence() {
    let app = TestApp::spawn().await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let (_, bob_token) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token, "re").await["id"].as_i64().unwrap();
    let mut bob = WsClient::connect(&app.base, &bob_token).await;
    bob.subscribe(id, None).await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.subscribe(id, None).await;
    loop {
        let frame = bob.next_of("presence").await;
        if frame["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["agent"]["id"] == alice.id)
        {
            break;
        }
    }
    ws.send(json!({"type": "subscribe", "ticket_id": id, "since": 999}))
        .await;
    assert_eq!(ws.next_of("error").await["ticket_id"], id);
    loop {
        let frame = bob.next_of("presence").await;
        if !frame["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["agent"]["id"] == alice.id)
        {
            break;
        }
    }
    ws.send(json!({"type": "unsubscribe", "ticket_id": id}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "not_subscribed");
}

#[tokio::test]
async fn an_oversize_fragmented_message_closes_with_1009() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::*, Frame};
    let chunk = vec![b'x'; 40 * 1024];
    for (i, last) in [(0, false), (1, false), (2, true)] {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(chunk.clone(), opcode, last);
        ws.stream
            .send(tokio_tungstenite::tungstenite::Message::Frame(frame))
            .await
            .unwrap();
    }
    assert_eq!(ws.closed(LONG).await, Ended::Closed(Some(1009)));
}

async fn after_a_server_restart_a_client_resumes_with_since_and_misses_nothing(bus: Bus) {
    let mut first = TestApp::spawn_bus(bus).await;
    let (_, token) = first.agent("Alice", "agent").await;
    let id = first.ticket(&token, "restart").await["id"]
        .as_i64()
        .unwrap();
    let sql = first.sql().await;
    let mut ws = WsClient::connect(&first.base, &token).await;
    ws.subscribe(id, None).await;
    subject_change(&sql, id, 0).await;
    let seen = ws.events(id, 1, LONG).await;
    assert_versions(&seen, 2, 2);
    first.stop().await;
    // The server is gone: the client is told, and writers carry on.
    assert!(matches!(ws.closed(LONG).await, Ended::Closed(_)));
    for n in 1..=20 {
        subject_change(&sql, id, n).await;
    }
    let second = TestApp::spawn_on(first.dbname.clone(), common::bus_settings(bus)).await;
    let mut ws = WsClient::connect(&second.base, &token).await;
    ws.subscribe(id, Some(2)).await;
    subject_change(&sql, id, 21).await;
    assert_versions(&ws.events(id, 21, LONG).await, 3, 23);
}
crate::both_buses!(after_a_server_restart_a_client_resumes_with_since_and_misses_nothing);

#[tokio::test]
async fn a_configured_origin_list_is_the_only_one_allowed() {
    let mut settings = test_settings();
    settings.allowed_origins = vec!["https://desk.example.com".into()];
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let listed = WsClient::connect_with(
        &app.base,
        Some(&token),
        Some("https://desk.example.com"),
        false,
    )
    .await;
    assert!(listed.is_ok());
    let own = WsClient::connect_with(&app.base, Some(&token), Some(&app.base), false).await;
    assert_eq!(
        own.err(),
        Some(403),
        "with a list, the server's own address is not implied"
    );
}
