//! Presence: viewing, typing, idle, across connections and processes.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ws::WsClient;
use common::{cluster, test_settings, TestApp};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

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

/// A service (a chat widget relaying replies) follows a ticket unseen: its
/// subscribe makes no viewer, its presence frame is refused `forbidden`,
/// and it still gets every event. Found by a review: a chat widget showed
/// as a colleague "typing".
#[tokio::test]
async fn a_service_follows_a_ticket_without_showing_as_a_viewer() {
    let app = TestApp::spawn().await;
    let (a, token_a) = app.agent("Alice", "agent").await;
    let (_, widget) = app.agent("Widget", "service").await;
    let id = app.ticket(&token_a, "chat").await["id"].as_i64().unwrap();
    let mut service = WsClient::connect(&app.base, &widget).await;
    service.subscribe(id, None).await;
    service.next_of("snapshot").await;
    service
        .send(json!({"type": "presence", "ticket_id": id, "state": "typing"}))
        .await;
    let refused = service.next_of("error").await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    assert_eq!(refused["ticket_id"], id);

    // Alice arrives after the service: she alone is on the ticket, and
    // stays alone while the service is subscribed.
    let mut alice = WsClient::connect(&app.base, &token_a).await;
    alice.subscribe(id, None).await;
    let snapshot = alice.next_of("snapshot").await;
    assert_eq!(snapshot["presence"], json!([]), "{snapshot}");
    let viewers = presence_until(&mut alice, id, WAIT, |v| !v.is_empty()).await;
    assert_eq!(viewers.len(), 1, "{viewers:?}");
    assert_eq!(viewers[0]["agent"]["id"], a.id);
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &token_a).await;
    assert_eq!(full["presence"].as_array().unwrap().len(), 1, "{full}");

    // The service still gets the change.
    let (status, body) = app
        .patch(
            &format!("/api/tickets/{id}"),
            &token_a,
            json!({"changes": {"status": {"from": "new", "to": "open"}}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let events = service.events(id, 1, WAIT).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["changes"]["status"]["to"], "open");
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
    let sql = app.sql().await;
    let victim: Uuid = sql
        .query_one(
            "SELECT DISTINCT process_id FROM presence WHERE agent_id = $1",
            &[&a.id],
        )
        .await
        .unwrap()
        .get(0);
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
    // Expired with its heartbeat: nothing of the dead process is left.
    let left: i64 = sql
        .query_one(
            "SELECT (SELECT count(*) FROM presence WHERE process_id = $1) \
                  + (SELECT count(*) FROM presence_processes WHERE process_id = $1)",
            &[&victim],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "rows or heartbeat of the killed process left");
    drop(alice);
}

/// A connection to a fresh database as the schema owner, with no livedesk
/// process on it (so no upkeep of its own runs beside the test's calls).
async fn bare_database() -> Client {
    let dbname = common::fresh_database().await;
    owner_on(&dbname).await
}

async fn owner_on(dbname: &str) -> Client {
    let (client, connection) = cluster().config(dbname).connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// What PostgreSQL knows of the viewer rows: (xmin, heard_at) by key. A
/// rewritten row gets a new xmin even when it has the same values.
async fn viewer_rows(sql: &Client) -> Vec<(Uuid, i64, i64, String, String)> {
    sql.query(
        "SELECT process_id, connection_id, ticket_id, xmin::text, heard_at::text \
         FROM presence ORDER BY 1, 2, 3",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

async fn set(sql: &Client, process: Uuid, connection: i64, ticket: i64) {
    sql.execute(
        "SELECT ld_presence_set($1, 'k', $2, $3, 1, 'viewing')",
        &[&process, &connection, &ticket],
    )
    .await
    .unwrap();
}

async fn heartbeat(sql: &Client, process: Uuid) -> Option<String> {
    sql.query_opt(
        "SELECT heard_at::text FROM presence_processes WHERE process_id = $1",
        &[&process],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Viewer rows whose process has no heartbeat: they could never expire.
async fn orphans(sql: &Client) -> i64 {
    sql.query_one(
        "SELECT count(*) FROM presence p WHERE NOT EXISTS \
         (SELECT 1 FROM presence_processes h WHERE h.process_id = p.process_id)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// The upkeep of a running process beats one heartbeat row and rewrites no
/// viewer row (issue 14: it used to UPDATE every viewer row of the process,
/// 85-140 ms of a core at 10,000 viewers).
#[tokio::test]
async fn the_upkeep_beats_one_heartbeat_and_leaves_viewer_rows_alone() {
    let mut settings = test_settings();
    settings.presence_ttl_ms = 3000; // upkeep every 500 ms
    let app = TestApp::spawn_with(settings).await;
    let (b, token_b) = app.agent("Bob", "agent").await;
    let id = app.ticket(&token_b, "upkeep").await["id"].as_i64().unwrap();
    let mut bob = WsClient::connect(&app.base, &token_b).await;
    bob.subscribe(id, None).await;
    presence_until(&mut bob, id, WAIT, |v| {
        state_of(v, b.id).as_deref() == Some("viewing")
    })
    .await;
    let sql = app.sql().await;
    let before = viewer_rows(&sql).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let process = before[0].0;
    let mut beats = vec![heartbeat(&sql, process).await.expect("a heartbeat")];
    // Three more beats; Bob keeps reading (and answering pings) meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    while beats.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the heartbeat stalled: {beats:?}"
        );
        let _ = bob.next_within(Duration::from_millis(100)).await;
        let now = heartbeat(&sql, process).await.expect("a heartbeat");
        if beats.last() != Some(&now) {
            beats.push(now);
        }
    }
    assert_eq!(
        viewer_rows(&sql).await,
        before,
        "the upkeep rewrote viewer rows (heartbeats {beats:?})"
    );
    let processes: i64 = sql
        .query_one("SELECT count(*) FROM presence_processes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(processes, 1, "one heartbeat per process");
}

/// Expiry follows the process's heartbeat, not the age of its viewer rows:
/// a live process keeps viewers written long ago, a silent one loses all of
/// them, heartbeat included.
#[tokio::test]
async fn expiry_follows_the_heartbeat_of_each_process() {
    let sql = bare_database().await;
    let (live, dead) = (Uuid::new_v4(), Uuid::new_v4());
    for connection in 1..=3 {
        set(&sql, live, connection, 10).await;
    }
    set(&sql, dead, 1, 11).await;
    set(&sql, dead, 2, 12).await;
    assert!(
        heartbeat(&sql, live).await.is_some(),
        "the first write beats"
    );
    sql.batch_execute("UPDATE presence SET heard_at = now() - interval '1 hour'")
        .await
        .unwrap();
    sql.execute(
        "UPDATE presence_processes SET heard_at = now() - interval '1 hour' WHERE process_id = $1",
        &[&dead],
    )
    .await
    .unwrap();
    let kept: Vec<_> = viewer_rows(&sql)
        .await
        .into_iter()
        .filter(|row| row.0 == live)
        .collect();
    assert_eq!(kept.len(), 3);
    let gone: i32 = sql
        .query_one("SELECT ld_presence_expire(30000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 2, "the dead process's two viewers");
    let mut after = viewer_rows(&sql).await;
    assert_eq!(after, kept, "the live process's viewers stay, untouched");
    assert_eq!(heartbeat(&sql, dead).await, None, "the dead heartbeat goes");

    // A beat touches the heartbeat only.
    let beat = heartbeat(&sql, live).await;
    sql.execute("SELECT ld_presence_touch($1)", &[&live])
        .await
        .unwrap();
    assert_ne!(heartbeat(&sql, live).await, beat, "the heartbeat advanced");
    after = viewer_rows(&sql).await;
    assert_eq!(after, kept, "no viewer row rewritten by the beat");

    // A process that comes back after it was expired beats again on its
    // next write, and its new viewers live.
    set(&sql, dead, 3, 13).await;
    assert!(heartbeat(&sql, dead).await.is_some());
    let gone: i32 = sql
        .query_one("SELECT ld_presence_expire(30000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
    assert_eq!(orphans(&sql).await, 0);
}

/// A viewer written by a process while expiry removes that process (it had
/// stopped beating) goes with it: no viewer row is left without a heartbeat,
/// which would never expire.
#[tokio::test]
async fn a_write_racing_the_expiry_of_its_process_leaves_no_orphan() {
    let dbname = common::fresh_database().await;
    let writer = owner_on(&dbname).await;
    let expirer = owner_on(&dbname).await;
    let process = Uuid::new_v4();
    set(&writer, process, 1, 20).await;
    writer
        .execute(
            "UPDATE presence_processes SET heard_at = now() - interval '1 hour' WHERE process_id = $1",
            &[&process],
        )
        .await
        .unwrap();
    // The write is in flight (not committed) when the expiry starts.
    writer.batch_execute("BEGIN").await.unwrap();
    set(&writer, process, 2, 21).await;
    let expiry = tokio::spawn(async move {
        let gone: i32 = expirer
            .query_one("SELECT ld_presence_expire(30000)", &[])
            .await
            .unwrap()
            .get(0);
        gone
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!expiry.is_finished(), "the expiry waits for the write");
    writer.batch_execute("COMMIT").await.unwrap();
    assert_eq!(expiry.await.unwrap(), 2, "both viewers expired");
    assert_eq!(viewer_rows(&writer).await, vec![]);
    assert_eq!(heartbeat(&writer, process).await, None);
    assert_eq!(orphans(&writer).await, 0);
}

/// Heartbeats are the server's: a writer (`livedesk writer add`) can neither
/// forge, refresh, read nor delete one, nor call the functions that do.
#[tokio::test]
async fn a_writer_can_neither_forge_nor_refresh_a_heartbeat() {
    let app = TestApp::spawn().await;
    let (_, _, w) = common::writer_role(&app, "hb", false).await;
    for attack in [
        "INSERT INTO presence_processes (process_id) VALUES (gen_random_uuid())",
        "UPDATE presence_processes SET heard_at = now() + interval '1 day'",
        "DELETE FROM presence_processes",
        "SELECT * FROM presence_processes",
        "TRUNCATE presence_processes",
        "SELECT ld_presence_touch(gen_random_uuid())",
        "SELECT ld_presence_expire(0)",
        "SELECT ld_presence_remove(gen_random_uuid(), NULL, NULL)",
        "SELECT ld_presence_clear_key('k', gen_random_uuid())",
    ] {
        let error = w
            .batch_execute(attack)
            .await
            .err()
            .unwrap_or_else(|| panic!("the writer could run: {attack}"));
        assert_eq!(
            error.code().map(|c| c.code()),
            Some("42501"),
            "{attack}: {error}"
        );
    }
}

/// How often the server writes one viewer's presence at most (the
/// session's `PRESENCE_MIN_INTERVAL`).
const PRESENCE_MIN_INTERVAL: Duration = Duration::from_millis(200);

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
    // Every write counted below is made between these two instants (the
    // server runs in this process: the same clock).
    let window = Instant::now();
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
    let mut latencies = Vec::new();
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
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _alice = flood.await.unwrap();
    let written = app.metric("livedesk_presence_writes_total").await - before;
    let elapsed = window.elapsed();
    // 500 frames flapping at up to 100 a second: Alice's viewer is written
    // at most once per interval, however long the flood took on a loaded
    // machine (the 10 ms sleeps stretch, the writes do not multiply). One
    // more for the window's edges, two for Alice's and Bob's first writes
    // (their subscribes), which a writer running late may still be making
    // when the window opens. Unthrottled, it would be one write per frame.
    let allowed = (elapsed.as_millis() / PRESENCE_MIN_INTERVAL.as_millis()) as u64 + 3;
    eprintln!("{written} presence writes in {elapsed:?} (at most {allowed}); event latencies {latencies:?}");
    assert!(
        written <= allowed,
        "{written} presence writes for 500 frames in {elapsed:?}: more than one per {PRESENCE_MIN_INTERVAL:?} (at most {allowed})"
    );
    // Every event arrived (within 5 s, above). Events queued behind presence
    // would make most of them late; a loaded machine may stall any single
    // exchange (a descheduled thread) for longer: two of the 20 may be late.
    latencies.sort();
    let ninth_decile = latencies[latencies.len() * 9 / 10 - 1];
    assert!(
        ninth_decile < Duration::from_millis(500),
        "event latency during the flood: 90% within {ninth_decile:?} ({latencies:?})"
    );
}
