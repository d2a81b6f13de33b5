//! The seam between a subscriber's own read and live events, now that the
//! hub owns it (docs/architecture.md, "Read side"): a subscriber that joins
//! behind the others gets its gap from the fetcher's read, and a
//! re-subscribe on the same connection sees nothing twice.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::ws::WsClient;
use common::TestApp;
use livedesk::config::Bus;
use serde_json::Value;

/// Start a writer changing the ticket's subject every 2 ms until `stop`.
fn writer(
    sql: tokio_postgres::Client,
    id: i64,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.is_cancelled() {
            sql.execute(
                "UPDATE tickets SET subject = $2 WHERE id = $1",
                &[&id, &format!("subject {n}")],
            )
            .await
            .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// The event versions of `id` until `count` arrived or `limit` passed (a
/// `reset` fails the test).
async fn read_events(ws: &mut WsClient, id: i64, count: usize, limit: Duration) -> Vec<i64> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut versions = Vec::new();
    while versions.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(frame) = ws.next_within(left).await else {
            break;
        };
        assert_ne!(frame["type"], "reset", "no reset: {frame}");
        if frame["type"] == "event" && frame["ticket_id"] == id {
            versions.push(frame["version"].as_i64().unwrap());
        }
    }
    versions
}

/// A few events of `id` (the writer runs): at least 5 within 10 s.
async fn some_events(ws: &mut WsClient, id: i64, what: &str) -> Vec<i64> {
    let versions = read_events(ws, id, 5, Duration::from_secs(10)).await;
    assert_eq!(versions.len(), 5, "{what}: too few events: {versions:?}");
    versions
}

fn assert_run(versions: &[i64], after: i64, what: &str) {
    let expected: Vec<i64> = (after + 1..after + 1 + versions.len() as i64).collect();
    assert_eq!(versions, expected, "{what}: gap or duplicate at the seam");
}

fn version(frame: &Value) -> i64 {
    frame["version"].as_i64().unwrap()
}

/// A watcher stays on the ticket (so the hub's position runs ahead) while
/// new connections join behind it, with a snapshot or with `since` a few
/// versions back: each gets every version after its own, once, in order,
/// and so does the watcher.
async fn joining_behind_a_watcher_while_a_writer_runs_is_gapless(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "seam").await["id"].as_i64().unwrap();
    let sql = app.sql().await;
    let mut watcher = WsClient::connect(&app.base, &token).await;
    let start = version(&watcher.subscribe(id, None).await);
    let stop = tokio_util::sync::CancellationToken::new();
    let writing = writer(app.sql().await, id, stop.clone());
    let mut watched = Vec::new();
    for round in 0..24 {
        let now: i64 = sql
            .query_one("SELECT version FROM tickets WHERE id = $1", &[&id])
            .await
            .unwrap()
            .get(0);
        let mut ws = WsClient::connect(&app.base, &token).await;
        let since = (round % 3 != 0).then(|| (now - (round % 7)).max(1));
        let after = version(&ws.subscribe(id, since).await);
        let what = format!("round {round} (since {since:?})");
        let versions = some_events(&mut ws, id, &what).await;
        assert_run(&versions, after, &what);
        watched.extend(read_events(&mut watcher, id, usize::MAX, Duration::from_millis(20)).await);
    }
    stop.cancel();
    writing.await.unwrap();
    let last: i64 = sql
        .query_one("SELECT version FROM tickets WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    while watched.last().is_none_or(|v| *v < last) {
        let more = read_events(&mut watcher, id, usize::MAX, Duration::from_secs(2)).await;
        assert!(
            !more.is_empty(),
            "the watcher stopped at {:?} of {last}",
            watched.last()
        );
        watched.extend(more);
    }
    assert_run(&watched, start, "the watcher");
}
crate::both_buses!(joining_behind_a_watcher_while_a_writer_runs_is_gapless);

/// One connection subscribes to the same ticket again and again while a
/// writer runs (beside a second watcher): after each `subscribed` it gets
/// the versions after it, and none it already had.
async fn resubscribing_on_one_connection_sees_nothing_twice(bus: Bus) {
    let app = TestApp::spawn_bus(bus).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "again").await["id"].as_i64().unwrap();
    let mut other = WsClient::connect(&app.base, &token).await;
    other.subscribe(id, None).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writing = writer(app.sql().await, id, stop.clone());
    let mut ws = WsClient::connect(&app.base, &token).await;
    let mut last = version(&ws.subscribe(id, None).await);
    for round in 0..20 {
        let versions = some_events(&mut ws, id, &format!("round {round}")).await;
        assert_run(&versions, last, &format!("round {round}"));
        last = *versions.last().unwrap();
        // Alternate: a fresh snapshot, or resume from what we have.
        let since = (round % 2 == 1).then_some(last);
        let subscribed = version(&ws.subscribe(id, since).await);
        assert!(
            subscribed >= last,
            "round {round}: subscribed {subscribed} behind {last}"
        );
        last = subscribed;
    }
    stop.cancel();
    writing.await.unwrap();
}
crate::both_buses!(resubscribing_on_one_connection_sees_nothing_twice);
