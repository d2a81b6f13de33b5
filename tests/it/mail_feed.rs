//! The durable feed (sql/rules/80_feed.sql) as a writer role uses it:
//! transactions that commit out of order are neither skipped nor repeated,
//! positions survive a crash (a new connection), consumers are independent.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{connect_as, TestApp};
use tokio_postgres::Client;

/// A role made by `livedesk writer add` and its agent id.
async fn writer_role(app: &TestApp) -> (String, i64) {
    let (name, agent, _) = common::writer_role(app, "feed", false).await;
    (name, agent)
}

async fn read(client: &Client, consumer: &str, limit: i32) -> Vec<(i64, i64)> {
    client
        .query(
            "SELECT ticket_id, version FROM ld_feed_read($1, $2)",
            &[&consumer, &limit],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn ack(client: &Client, consumer: &str, (ticket, version): (i64, i64)) {
    client
        .query_one(
            "SELECT ld_feed_ack($1, $2, $3)",
            &[&consumer, &ticket, &version],
        )
        .await
        .unwrap();
}

async fn new_ticket(client: &Client, subject: &str) -> i64 {
    client
        .query_one(
            "INSERT INTO tickets (subject, channel) VALUES ($1, 'email') RETURNING id",
            &[&subject],
        )
        .await
        .unwrap()
        .get(0)
}

/// Read until `want` events arrived (the feed may lag behind transactions
/// of other tests in the same cluster: it waits for every older one).
async fn drain(client: &Client, consumer: &str, want: usize) -> Vec<(i64, i64)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} events",
            got.len()
        );
        let batch = read(client, consumer, 7).await;
        if let Some(last) = batch.last() {
            ack(client, consumer, *last).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        got.extend(batch);
    }
    got
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let app = TestApp::spawn().await;
    let (role, agent) = writer_role(&app).await;
    let consumer = connect_as(&app.dbname, &role).await;
    consumer
        .query_one("SELECT ld_feed_start('mailer', 'now')", &[])
        .await
        .unwrap();
    let early = connect_as(&app.dbname, &role).await;
    let late = connect_as(&app.dbname, &role).await;
    let x = new_ticket(&early, "X").await;
    let y = new_ticket(&late, "Y").await;
    assert_eq!(drain(&consumer, "mailer", 2).await, vec![(x, 1), (y, 1)]);

    // `early` draws the lower transaction id, `late` commits first.
    early.batch_execute("BEGIN").await.unwrap();
    early
        .execute(
            "INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ($1, 'note', $2, 'early')",
            &[&x, &agent],
        )
        .await
        .unwrap();
    late.batch_execute("BEGIN").await.unwrap();
    late.execute(
        "INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ($1, 'note', $2, 'late')",
        &[&y, &agent],
    )
    .await
    .unwrap();
    late.batch_execute("COMMIT").await.unwrap();

    // Committed, visible, but behind an open older transaction: held back,
    // and it cannot be acknowledged past it either.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(read(&consumer, "mailer", 100).await, vec![]);
    let refused = consumer
        .query_one("SELECT ld_feed_ack('mailer', $1, 2)", &[&y])
        .await
        .unwrap_err();
    assert_eq!(refused.code().unwrap().code(), "LD400");

    early.batch_execute("COMMIT").await.unwrap();
    assert_eq!(drain(&consumer, "mailer", 2).await, vec![(x, 2), (y, 2)]);
    assert_eq!(read(&consumer, "mailer", 100).await, vec![]);
}

#[tokio::test]
async fn concurrent_writers_committing_out_of_order_lose_and_repeat_nothing() {
    let app = TestApp::spawn().await;
    let (role, agent) = writer_role(&app).await;
    let consumer = connect_as(&app.dbname, &role).await;
    consumer
        .query_one("SELECT ld_feed_start('audit', 'beginning')", &[])
        .await
        .unwrap();

    const WRITERS: usize = 4;
    const TRANSACTIONS: usize = 20;
    let setup = connect_as(&app.dbname, &role).await;
    let mut tickets = Vec::new();
    for i in 0..WRITERS {
        tickets.push(new_ticket(&setup, &format!("ticket {i}")).await);
    }

    // Each writer holds its transaction open for a varying time, so ids are
    // drawn in one order and commits land in another; some roll back.
    let mut tasks = Vec::new();
    for (w, ticket) in tickets.iter().copied().enumerate() {
        let client = connect_as(&app.dbname, &role).await;
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            for i in 0..TRANSACTIONS {
                client.batch_execute("BEGIN").await.unwrap();
                client
                    .execute(
                        "INSERT INTO messages (ticket_id, kind, author_agent_id, body) VALUES ($1, 'note', $2, $3)",
                        &[&ticket, &agent, &format!("w{w} t{i}")],
                    )
                    .await
                    .unwrap();
                let hold = ((w * 7 + i * 13) % 11) as u64 * 3;
                tokio::time::sleep(Duration::from_millis(hold)).await;
                if i % 9 == 4 {
                    client.batch_execute("ROLLBACK").await.unwrap();
                } else {
                    client.batch_execute("COMMIT").await.unwrap();
                    committed += 1;
                }
            }
            committed
        }));
    }

    // The consumer reads and acknowledges while the writers write.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let expected = WRITERS * (1 + TRANSACTIONS - 3);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < expected && tokio::time::Instant::now() < deadline {
            let batch = read(&consumer, "audit", 5).await;
            match batch.last() {
                Some(last) => ack(&consumer, "audit", *last).await,
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
            seen.extend(batch);
        }
        // Nothing more comes after everything was seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
        seen.extend(read(&consumer, "audit", 100).await);
        seen
    });
    let mut committed = 0;
    for task in tasks {
        committed += task.await.unwrap();
    }
    assert_eq!(committed, WRITERS * (TRANSACTIONS - 2));
    let seen = reader.await.unwrap();

    // Exactly the committed events, each once; per ticket in version order.
    let unique: BTreeSet<(i64, i64)> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was handed out twice");
    let sql = app.sql().await;
    let all: BTreeSet<(i64, i64)> = sql
        .query("SELECT ticket_id, version FROM ticket_events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(unique, all, "the feed skipped or invented events");
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for (ticket, version) in &seen {
        let before = last.insert(*ticket, *version).unwrap_or(0);
        assert_eq!(
            *version,
            before + 1,
            "ticket {ticket}: version {version} after {before}"
        );
    }
}

#[tokio::test]
async fn positions_survive_a_crash_and_consumers_are_independent() {
    let app = TestApp::spawn().await;
    let (role, _agent) = writer_role(&app).await;
    let a = connect_as(&app.dbname, &role).await;
    for consumer in ["billing", "crm"] {
        a.query_one("SELECT ld_feed_start($1, 'now')", &[&consumer])
            .await
            .unwrap();
    }
    let mut tickets = Vec::new();
    for i in 0..3 {
        tickets.push(new_ticket(&a, &format!("T{i}")).await);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read(&a, "billing", 100).await.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read(&a, "billing", 1).await, vec![(tickets[0], 1)]);
    ack(&a, "billing", (tickets[0], 1)).await;
    // Read without acknowledging, then "crash": a new connection reads the
    // same events again, from the acknowledged position.
    let unacked = read(&a, "billing", 100).await;
    assert_eq!(unacked, vec![(tickets[1], 1), (tickets[2], 1)]);
    drop(a);
    let b = connect_as(&app.dbname, &role).await;
    assert_eq!(read(&b, "billing", 100).await, unacked);
    // An acknowledgement never rewinds; starting again keeps the position.
    ack(&b, "billing", (tickets[2], 1)).await;
    ack(&b, "billing", (tickets[0], 1)).await;
    let position: serde_json::Value = b
        .query_one("SELECT ld_feed_start('billing', 'beginning')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(position["ticket_id"], tickets[2]);
    assert_eq!(read(&b, "billing", 100).await, vec![]);
    // The other consumer still has all three.
    assert_eq!(
        read(&b, "crm", 100).await,
        tickets.iter().map(|t| (*t, 1)).collect::<Vec<_>>()
    );
    // An unknown consumer is LD404.
    let err = b
        .query("SELECT * FROM ld_feed_read('nobody', 10)", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "LD404");
}
