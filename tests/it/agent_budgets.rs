//! What one agent may cost a process over all its connections, and the
//! read slots (docs/protocol.md, "Budgets"): found by a review, one agent
//! with 20 connections stalled a process for everyone within every
//! per-connection limit.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::ws::WsClient;
use common::{test_settings, TestApp};
use serde_json::json;

/// Send every frame, then a ping; the frames that came before the pong.
async fn answers(ws: &mut WsClient, frames: &[serde_json::Value]) -> Vec<serde_json::Value> {
    for frame in frames {
        ws.send(frame.clone()).await;
    }
    ws.send(json!({"type": "ping"})).await;
    let mut seen = Vec::new();
    loop {
        let frame = ws.next().await;
        if frame["type"] == "pong" {
            return seen;
        }
        seen.push(frame);
    }
}

/// Three connections of one agent share its subscribe budget (a burst of
/// ten seconds' worth): 30 subscribes within the per-connection budget, 20
/// served; each refusal names its ticket. A colleague's subscribes are not
/// charged to it. Fails without the per-agent budget (30 served).
#[tokio::test]
async fn an_agents_connections_share_one_subscribe_budget() {
    let mut settings = test_settings();
    settings.agent_subscribes_per_second = 2;
    let app = TestApp::spawn_with(settings).await;
    let (_, alice) = app.agent("Alice", "agent").await;
    let (_, bob) = app.agent("Bob", "agent").await;
    let mut tickets = Vec::new();
    for i in 0..10 {
        tickets.push(
            app.ticket(&alice, &format!("T{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let subscribes: Vec<_> = tickets
        .iter()
        .map(|id| json!({"type": "subscribe", "ticket_id": id}))
        .collect();

    let started = Instant::now();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..3 {
        let mut ws = WsClient::connect(&app.base, &alice).await;
        let mut named = HashSet::new();
        for frame in answers(&mut ws, &subscribes).await {
            match frame["type"].as_str() {
                Some("subscribed") => served += 1,
                Some("error") => {
                    assert_eq!(frame["code"], "rate_limited", "{frame}");
                    assert!(
                        named.insert(frame["ticket_id"].as_i64().unwrap()),
                        "{frame}"
                    );
                    refused += 1;
                }
                _ => {}
            }
        }
    }
    let allowed = 20 + 2 * started.elapsed().as_secs_f64().ceil() as i32;
    assert_eq!(served + refused, 30);
    assert!(
        (20..=allowed).contains(&served),
        "{served} served, {refused} refused (at most {allowed})"
    );

    let mut ws = WsClient::connect(&app.base, &bob).await;
    let served_bob = answers(&mut ws, &subscribes[..5])
        .await
        .iter()
        .filter(|f| f["type"] == "subscribed")
        .count();
    assert_eq!(served_bob, 5, "a colleague has a budget of their own");
}

/// The current state of Alice on each ticket, as a bystander is shown it.
async fn alices_states(
    bystander: &mut WsClient,
    alice: i64,
    states: &mut HashMap<i64, String>,
    limit: Duration,
) {
    while let Some(frame) = bystander.next_within(limit).await {
        if frame["type"] != "presence" {
            continue;
        }
        let ticket = frame["ticket_id"].as_i64().unwrap();
        let viewer = frame["viewers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["agent"]["id"] == alice)
            .map(|v| v["state"].as_str().unwrap().to_string())
            .collect::<Vec<_>>();
        // Two connections of Alice on a ticket show as one viewer or two;
        // here each ticket has one connection of hers.
        if let Some(state) = viewer.first() {
            states.insert(ticket, state.clone());
        }
    }
}

/// Presence flips over two connections and ten tickets wait for the agent's
/// presence budget: the writes stay within it, and once the flips stop the
/// last state of every ticket is written (later, never lost). Fails without
/// the budget: each (connection, ticket) writes every 200 ms.
#[tokio::test]
async fn a_presence_flood_waits_for_the_agents_budget_and_the_last_state_wins() {
    let mut settings = test_settings();
    settings.agent_presence_per_second = 5;
    settings.max_frames_per_second = 100_000;
    let app = TestApp::spawn_with(settings).await;
    let (alice_agent, alice) = app.agent("Alice", "agent").await;
    let (_, bob) = app.agent("Bob", "agent").await;
    let mut tickets = Vec::new();
    for i in 0..10 {
        tickets.push(
            app.ticket(&bob, &format!("T{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let mut bystander = WsClient::connect(&app.base, &bob).await;
    for id in &tickets {
        bystander.subscribe(*id, None).await;
    }
    // Bob's own viewer rows are written before the count starts.
    let mut states = HashMap::new();
    alices_states(
        &mut bystander,
        alice_agent.id,
        &mut states,
        Duration::from_millis(800),
    )
    .await;
    let before = app.metric("livedesk_presence_writes_total").await;

    let started = Instant::now();
    let mut connections = Vec::new();
    for half in tickets.chunks(5) {
        let mut ws = WsClient::connect(&app.base, &alice).await;
        for id in half {
            ws.subscribe(*id, None).await;
        }
        connections.push((ws, half.to_vec()));
    }
    for round in 0..40 {
        let state = if round % 2 == 0 { "typing" } else { "idle" };
        for (ws, half) in &mut connections {
            for id in half.iter() {
                ws.send(json!({"type": "presence", "ticket_id": id, "state": state}))
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The last word: typing everywhere.
    for (ws, half) in &mut connections {
        for id in half.iter() {
            ws.send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
                .await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && !tickets
            .iter()
            .all(|id| states.get(id).map(String::as_str) == Some("typing"))
    {
        alices_states(
            &mut bystander,
            alice_agent.id,
            &mut states,
            Duration::from_millis(200),
        )
        .await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for id in &tickets {
        assert_eq!(
            states.get(id).map(String::as_str),
            Some("typing"),
            "ticket {id}: the last state is shown ({states:?})"
        );
    }
    // Pings keep the connections alive; the count settles.
    for (ws, _) in &mut connections {
        ws.send(json!({"type": "ping"})).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = app.metric("livedesk_presence_writes_total").await - before;
    let allowed = 25 + (5.0 * elapsed).ceil() as u64 + 1;
    assert!(
        writes <= allowed,
        "{writes} presence writes in {elapsed:.1} s (budget: 25 at once, 5 a second: {allowed})"
    );
    assert!(app.metric("livedesk_presence_deferred_total").await > 0);
}

/// Heavy reads never hold the whole pool: with a pool of 4 (two read
/// slots), six subscribes whose reads are stuck behind a lock on `table`
/// leave connections to HTTP (`request` is answered while they wait); once
/// the lock goes, every subscribe gets what it asked for. Fails without the
/// slots (the request waits for the lock too).
async fn heavy_reads_leave_connections_to_everything_else(
    table: &str,
    since: Option<i64>,
    request: fn(&TestApp, &str, &serde_json::Value) -> reqwest::RequestBuilder,
) {
    let mut settings = test_settings();
    settings.pool_size = 4;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let watched = app.ticket(&token, "Watched").await["id"].as_i64().unwrap();
    let other = app.ticket(&token, "Other").await;
    let mut connections = Vec::new();
    for _ in 0..6 {
        connections.push(WsClient::connect(&app.base, &token).await);
    }

    let locker = app.sql().await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let locked_at = Instant::now();
    for ws in &mut connections {
        let mut frame = json!({"type": "subscribe", "ticket_id": watched});
        if let Some(since) = since {
            frame["since"] = since.into();
        }
        ws.send(frame).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = common::send(request(&app, &token, &other)).await;
    let answered = locked_at.elapsed();
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(2000).saturating_sub(locked_at.elapsed())).await;
    assert!(
        answered < Duration::from_millis(1500),
        "the request waited {answered:?} for the lock the subscribes wait for"
    );
    locker.batch_execute("COMMIT").await.unwrap();

    let wanted = if since.is_some() { "event" } else { "snapshot" };
    for ws in &mut connections {
        loop {
            let frame = ws.next().await;
            assert_ne!(frame["type"], "error", "{frame}");
            if frame["type"] == wanted {
                assert_eq!(
                    frame["ticket_id"]
                        .as_i64()
                        .or(frame["ticket"]["id"].as_i64()),
                    Some(watched),
                    "{frame}"
                );
                break;
            }
        }
    }
    assert_eq!(app.metric("livedesk_read_slots_busy_total").await, 0);
}

#[tokio::test]
async fn snapshots_being_built_leave_connections_to_everything_else() {
    heavy_reads_leave_connections_to_everything_else("messages", None, |app, token, other| {
        app.req(
            reqwest::Method::PATCH,
            &format!("/api/tickets/{}", other["id"]),
            token,
        )
        .json(&json!({"changes": {"subject": {"from": "Other", "to": "Changed meanwhile"}}}))
    })
    .await;
}

/// The same for replays (`subscribe` with `since`): each page of a replay
/// is read in a slot.
#[tokio::test]
async fn replays_leave_connections_to_everything_else() {
    heavy_reads_leave_connections_to_everything_else(
        "ticket_events",
        Some(0),
        |app, token, other| {
            app.req(
                reqwest::Method::GET,
                &format!("/api/tickets/{}", other["id"]),
                token,
            )
        },
    )
    .await;
}

/// A frame past the connection's frame budget is refused with the ticket it
/// names, so that a client re-subscribing many tickets at once knows which
/// subscribes to send again (the JS client lost those past ~50). Presence
/// frames for tickets not subscribed: answered at once, so that the 15
/// fall in one second of budget however slow the machine.
#[tokio::test]
async fn a_frame_past_the_frame_budget_is_refused_by_its_ticket() {
    let mut settings = test_settings();
    settings.max_frames_per_second = 10;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ws = WsClient::connect(&app.base, &token).await;
    for id in 1..=15 {
        ws.send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
            .await;
    }
    let mut answered = Vec::new();
    for _ in 1..=15 {
        let frame = ws.next().await;
        assert_eq!(frame["type"], "error", "{frame}");
        let ticket = frame["ticket_id"]
            .as_i64()
            .expect("the refusal names its ticket");
        answered.push((ticket, frame["code"].as_str().unwrap().to_string()));
    }
    let expected: Vec<(i64, String)> = (1..=15)
        .map(|id| {
            let code = if id <= 10 {
                "not_subscribed"
            } else {
                "rate_limited"
            };
            (id, code.to_string())
        })
        .collect();
    assert_eq!(answered, expected);
}

/// Within a spent presence budget the longest-waiting change goes first:
/// ten tickets flipped without pause do not keep ten others' one change
/// from being shown while the flood goes on (found by a review: 13 of 20
/// waited for its end).
#[tokio::test]
async fn a_presence_flood_on_some_tickets_does_not_starve_the_others() {
    let mut settings = test_settings();
    settings.agent_presence_per_second = 10;
    settings.max_frames_per_second = 100_000;
    let app = TestApp::spawn_with(settings).await;
    let (alice_agent, alice) = app.agent("Alice", "agent").await;
    let (_, bob) = app.agent("Bob", "agent").await;
    let mut tickets = Vec::new();
    for i in 0..20 {
        tickets.push(
            app.ticket(&bob, &format!("T{i}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let (flooded, quiet) = tickets.split_at(10);
    let mut bystander = WsClient::connect(&app.base, &bob).await;
    for id in quiet {
        bystander.subscribe(*id, None).await;
    }
    let mut ws = WsClient::connect(&app.base, &alice).await;
    for id in &tickets {
        ws.subscribe(*id, None).await;
    }
    let mut states = HashMap::new();
    // The flood: every flooded ticket flips every 50 ms for 6 s; after 1 s
    // each quiet ticket says "typing" once.
    let started = Instant::now();
    let mut round = 0;
    let mut said = false;
    while started.elapsed() < Duration::from_secs(6) {
        let state = if round % 2 == 0 { "typing" } else { "idle" };
        for id in flooded {
            ws.send(json!({"type": "presence", "ticket_id": id, "state": state}))
                .await;
        }
        if !said && started.elapsed() > Duration::from_secs(1) {
            for id in quiet {
                ws.send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
                    .await;
            }
            said = true;
        }
        round += 1;
        alices_states(
            &mut bystander,
            alice_agent.id,
            &mut states,
            Duration::from_millis(50),
        )
        .await;
        if said
            && quiet
                .iter()
                .all(|id| states.get(id).map(String::as_str) == Some("typing"))
        {
            break;
        }
    }
    let shown = quiet
        .iter()
        .filter(|id| states.get(id).map(String::as_str) == Some("typing"))
        .count();
    assert_eq!(
        shown,
        10,
        "while the flood went on ({:.1} s), {shown} of 10 quiet tickets showed their change",
        started.elapsed().as_secs_f64()
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "before the flood's end"
    );
}

/// A heavy read past `LIVEDESK_DB_TIMEOUT_MS` is cancelled in PostgreSQL,
/// not left running on a pooled connection for the next user to wait
/// behind; the pool makes a new connection in its place. Five snapshots
/// stuck behind a lock on a pool of 4: each refused `unavailable`, none
/// left waiting in PostgreSQL, and the next subscribe is served.
#[tokio::test]
async fn a_read_past_its_time_is_cancelled_in_postgresql() {
    let mut settings = test_settings();
    settings.pool_size = 4;
    settings.db_timeout_ms = 800;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let watched = app.ticket(&token, "Watched").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    let locker = app.sql().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for _ in 0..5 {
        ws.send(json!({"type": "subscribe", "ticket_id": watched}))
            .await;
        let refused = ws.next_of("error").await;
        assert_eq!(refused["code"], "unavailable", "{refused}");
    }
    let observer = app.sql().await;
    let mut waiting = i64::MAX;
    for _ in 0..40 {
        waiting = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(waiting, 0, "snapshot queries still waiting for the lock");
    locker.batch_execute("COMMIT").await.unwrap();
    ws.send(json!({"type": "subscribe", "ticket_id": watched}))
        .await;
    let snapshot = ws.next_of("snapshot").await;
    assert_eq!(snapshot["ticket"]["id"], watched);
}

/// Both read slots of a pool of 4 or 8 taken by two snapshots of `stuck`
/// waiting behind a lock on `messages`; the slots come free when the
/// returned session commits (or when the connections close).
async fn hold_both_read_slots(
    app: &TestApp,
    token: &str,
    stuck: i64,
) -> (Vec<WsClient>, tokio_postgres::Client) {
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(WsClient::connect(&app.base, token).await);
    }
    let locker = app.sql().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for holder in &mut holders {
        holder
            .send(json!({"type": "subscribe", "ticket_id": stuck}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (holders, locker)
}

/// A subscribe waiting for a read slot serves the connection's other
/// tickets meanwhile. Both slots (pool of 4) are held by snapshots stuck
/// behind a lock; a connection's subscribe waits for one while a ticket it
/// already follows changes three times as often as its outbound queue
/// holds (96 changes, a queue of 32). It gets every change, in order, then
/// the snapshot it asked for once the lock goes. Fails without it: the
/// session waited without reading its queue, which filled, and the
/// connection closed with 1013.
#[tokio::test]
async fn a_subscribe_waiting_for_a_read_slot_keeps_delivering_the_other_tickets() {
    const CHANGES: usize = 96;
    let mut settings = test_settings();
    settings.pool_size = 4;
    settings.outbound_queue = 32;
    settings.db_timeout_ms = 20_000;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let followed = app.ticket(&token, "Followed").await["id"].as_i64().unwrap();
    let stuck = app.ticket(&token, "Stuck").await["id"].as_i64().unwrap();
    let wanted = app.ticket(&token, "Wanted").await["id"].as_i64().unwrap();
    let mut ws = WsClient::connect(&app.base, &token).await;
    ws.send(json!({"type": "subscribe", "ticket_id": followed}))
        .await;
    let mut version = ws.next_of("snapshot").await["ticket"]["version"]
        .as_i64()
        .unwrap();
    let (_holders, locker) = hold_both_read_slots(&app, &token, stuck).await;
    ws.send(json!({"type": "subscribe", "ticket_id": wanted}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first = version;
    let mut subject = "Followed".to_string();
    for n in 0..CHANGES {
        let path = format!("/api/tickets/{followed}");
        let next = format!("Change {n}");
        let body = json!({"changes": {"subject": {"from": subject, "to": next}}});
        let (status, answer) = app.patch(&path, &token, body).await;
        assert_eq!(status, 200, "{answer}");
        version = answer["version"].as_i64().unwrap();
        subject = next;
        // Paced like people's changes, so that the fan-out queues them a
        // few at a time, not in one burst past the queue.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every change reaches the connection while its subscribe still waits.
    let mut seen = Vec::new();
    while seen.len() < CHANGES {
        let waiting = Instant::now();
        let frame = ws
            .next_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "closed or silent after {} of {CHANGES} changes (waited {:?})",
                    seen.len(),
                    waiting.elapsed()
                )
            });
        assert_ne!(frame["type"], "error", "{frame}");
        assert_ne!(frame["type"], "snapshot", "the lock is still held: {frame}");
        if frame["type"] == "event" {
            assert_eq!(frame["ticket_id"], followed, "{frame}");
            seen.push(frame["version"].as_i64().unwrap());
        }
    }
    assert_eq!(seen, ((first + 1)..=version).collect::<Vec<_>>());
    locker.batch_execute("COMMIT").await.unwrap();
    let snapshot = ws.next_of("snapshot").await;
    assert_eq!(snapshot["ticket"]["id"], wanted, "{snapshot}");
    assert_eq!(app.metric("livedesk_read_slots_busy_total").await, 0);
}

/// A `reset` that comes while a replay waits for a read slot reaches the
/// client. Both slots are held by snapshots stuck behind a lock; one client
/// replays a ticket (`since` 0) and waits for a slot while the ticket's
/// history goes back in time and the LISTEN connection is lost, so the
/// rewind check resets every subscriber of it. Found by a review: the wait
/// dropped the queued reset as "the read sends it", the read could not tell,
/// and the client was left subscribed to a ticket nobody served (events 1
/// to 4, then nothing).
#[tokio::test]
async fn a_reset_during_a_replays_wait_for_a_read_slot_reaches_the_client() {
    let mut settings = test_settings();
    settings.pool_size = 8;
    settings.db_timeout_ms = 20_000;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let watched = app.ticket(&token, "Watched").await["id"].as_i64().unwrap();
    let stuck = app.ticket(&token, "Stuck").await["id"].as_i64().unwrap();
    // Version 4: three changes.
    let mut subject = "Watched".to_string();
    for n in 0..3 {
        let next = format!("Change {n}");
        let body = json!({"changes": {"subject": {"from": subject, "to": next}}});
        let (status, answer) = app
            .patch(&format!("/api/tickets/{watched}"), &token, body)
            .await;
        assert_eq!(status, 200, "{answer}");
        subject = next;
    }
    // A joined subscriber gives the hub a cursor (4) for the ticket.
    let mut joined = WsClient::connect(&app.base, &token).await;
    joined
        .send(json!({"type": "subscribe", "ticket_id": watched}))
        .await;
    assert_eq!(joined.next_of("snapshot").await["ticket"]["version"], 4);
    let (_holders, locker) = hold_both_read_slots(&app, &token, stuck).await;
    // The replaying connection: registered in the hub, waiting for a slot.
    let mut replaying = WsClient::connect(&app.base, &token).await;
    let subscribed = replaying.subscribe(watched, Some(0)).await;
    assert_eq!(subscribed["type"], "subscribed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The database "goes back in time" for the ticket (owner bypassing
    // triggers), and the LISTEN connection is lost: the rewind check resets
    // every subscriber of the ticket.
    let admin = app.admin_sql().await;
    admin
        .batch_execute(&format!(
            "SET session_replication_role = replica; UPDATE tickets SET version = 1 WHERE id = {watched}"
        ))
        .await
        .unwrap();
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&livedesk::realtime::listener::LISTENER_NAME],
        )
        .await
        .unwrap();
    // The joined subscriber is told.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = joined
            .next_within(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the joined subscriber got no reset");
        if frame["type"] == "reset" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    // The replaying one must be told too (after its replay).
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match replaying.next_within(left).await {
            Some(frame) if frame["type"] == "reset" => break,
            Some(frame) => seen.push(frame),
            None => panic!("no reset for the replaying subscriber; frames: {seen:?}"),
        }
    }
}
