//! Write batches (src/domain/write_batch.rs): HTTP writes that arrive
//! together commit together, and each still gets exactly the answer and the
//! effect it would get alone — the races of contract §3 included, and a
//! ticket held by a direct writer holds up nobody else.

use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use serde_json::{json, Value};

use crate::common::TestApp;

/// An HTTP request under way: (status, body).
type Answer<'a> = BoxFuture<'a, (u16, Value)>;

/// Rounds of 48 concurrent requests on 8 tickets: per ticket two PATCHes
/// from the same value (one wins, one `field_conflict`), one invalid PATCH
/// (400), two replies having seen the same message (one wins, one
/// `duplicate_reply`) and a note (201). Every winner's change is logged once,
/// as its own author's, with gapless versions; the losers changed nothing.
#[tokio::test]
async fn concurrent_writes_share_commits_and_each_gets_its_own_answer() {
    let app = TestApp::spawn().await;
    let (alice, alice_token) = app.agent("Alice", "agent").await;
    let (bob, bob_token) = app.agent("Bob", "agent").await;
    let mut tickets = Vec::new();
    for n in 0..8 {
        let id = app.ticket(&alice_token, &format!("t{n} r0")).await["id"]
            .as_i64()
            .unwrap();
        tickets.push(id);
    }
    let mut seen = vec![0i64; tickets.len()];
    let rounds = 8;
    for round in 0..rounds {
        let mut requests: Vec<(&str, &str, usize, Answer<'_>)> = Vec::new();
        let patch = |path: String, token: &str, body: Value| {
            let token = token.to_owned();
            let app = &app;
            async move { app.patch(&path, &token, body).await }.boxed()
        };
        let post = |path: String, token: &str, body: Value| {
            let token = token.to_owned();
            let app = &app;
            async move { app.post(&path, &token, body).await }.boxed()
        };
        for (n, &id) in tickets.iter().enumerate() {
            let from = format!("t{n} r{round}");
            let path = format!("/api/tickets/{id}");
            let messages = format!("/api/tickets/{id}/messages");
            for (who, token) in [("alice", &alice_token), ("bob", &bob_token)] {
                let to = format!("t{n} r{}", round + 1);
                let body =
                    json!({"changes": {"subject": {"from": from, "to": format!("{to} {who}")}}});
                requests.push(("patch", who, n, patch(path.clone(), token, body)));
            }
            let bad = json!({"changes": {"status": {"from": "new", "to": "bogus"}}});
            requests.push(("bad", "alice", n, patch(path.clone(), &alice_token, bad)));
            for (who, token) in [("alice", &alice_token), ("bob", &bob_token)] {
                let body = json!({"kind": "reply", "body": format!("{who} r{round}"), "seen_message_id": seen[n]});
                requests.push(("reply", who, n, post(messages.clone(), token, body)));
            }
            let note = json!({"kind": "note", "body": format!("note r{round}")});
            requests.push(("note", "bob", n, post(messages.clone(), &bob_token, note)));
        }
        let (kinds, futures): (Vec<_>, Vec<_>) = requests
            .into_iter()
            .map(|(kind, who, n, f)| ((kind, who, n), f))
            .unzip();
        let answers = join_all(futures).await;
        let mut patched = vec![Vec::new(); tickets.len()];
        let mut replied = vec![Vec::new(); tickets.len()];
        for ((kind, who, n), (status, body)) in kinds.into_iter().zip(answers) {
            match (kind, status) {
                ("patch", 200) => patched[n].push((who, body)),
                ("patch", 409) => assert_eq!(body["error"]["code"], "field_conflict", "{body}"),
                ("bad", 400) => assert_eq!(body["error"]["code"], "invalid_field", "{body}"),
                ("reply", 201) => replied[n].push((who, body)),
                ("reply", 409) => assert_eq!(body["error"]["code"], "duplicate_reply", "{body}"),
                ("note", 201) => {}
                _ => panic!("round {round}: {kind} by {who} answered {status} {body}"),
            }
        }
        for n in 0..tickets.len() {
            assert_eq!(
                patched[n].len(),
                1,
                "round {round}, ticket {n}: one PATCH wins"
            );
            assert_eq!(
                replied[n].len(),
                1,
                "round {round}, ticket {n}: one reply wins"
            );
            let (who, ticket) = &patched[n][0];
            assert_eq!(ticket["subject"], format!("t{n} r{} {who}", round + 1));
            let (_, reply) = &replied[n][0];
            seen[n] = reply["id"].as_i64().unwrap();
        }
        // The next round's PATCHes start from the winner's subject.
        let sql = app.sql().await;
        for (n, &id) in tickets.iter().enumerate() {
            sql.execute(
                "UPDATE tickets SET subject = $2 WHERE id = $1",
                &[&id, &format!("t{n} r{}", round + 1)],
            )
            .await
            .unwrap();
        }
    }

    // Per ticket and round: the winning PATCH, the reply, the note and the
    // test's own reset of the subject; versions gapless; each change
    // logged as its author's.
    let sql = app.sql().await;
    for &id in &tickets {
        let rows = sql
            .query(
                "SELECT version, kind, actor_agent_id, data FROM ticket_events WHERE ticket_id = $1 ORDER BY version",
                &[&id],
            )
            .await
            .unwrap();
        let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let expected: Vec<i64> = (1..=1 + 4 * rounds as i64).collect();
        assert_eq!(
            versions, expected,
            "ticket {id}: one event per change, gapless"
        );
        for row in &rows {
            let kind: String = row.get(1);
            let actor: Option<i64> = row.get(2);
            let data: Value = row.get(3);
            if kind == "ticket.updated" {
                let to = data["changes"]["subject"]["to"]
                    .as_str()
                    .unwrap_or_default();
                if to.ends_with(" alice") {
                    assert_eq!(actor, Some(alice.id), "{data}");
                } else if to.ends_with(" bob") {
                    assert_eq!(actor, Some(bob.id), "{data}");
                } else {
                    assert_eq!(actor, None, "the test's own reset: {data}");
                }
            } else if kind == "message.created" {
                assert_eq!(actor, data["message"]["author"]["id"].as_i64(), "{data}");
            }
        }
    }
    let batches = app.metric("livedesk_write_batches_total").await;
    let calls = app.metric("livedesk_write_batch_calls_total").await;
    assert_eq!(
        calls,
        48 * rounds as u64,
        "every PATCH and message was batched"
    );
    assert!(
        batches < calls,
        "{calls} calls in {batches} batches: some were committed together"
    );
}

/// Two tickets held by a direct writer's open transaction: the PATCHes on
/// them give up their batches after the lock wait (250 ms) and wait on
/// their own, so the next PATCHes, on other tickets, are answered while the
/// writer still holds its tickets; when it commits, the two go through.
#[tokio::test]
async fn a_ticket_held_elsewhere_holds_up_no_other_write() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            app.ticket(&token, &format!("held {n}")).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    let holder = app.sql().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tickets WHERE id IN ({}, {}) FOR UPDATE",
            ids[0], ids[1]
        ))
        .await
        .unwrap();
    let patch = |n: usize| {
        let (app, token, id) = (&app, &token, ids[n]);
        async move {
            let body = json!({"changes": {"subject": {"from": format!("held {n}"), "to": format!("done {n}")}}});
            app.patch(&format!("/api/tickets/{id}"), token, body).await
        }
    };
    let held = join_all([patch(0), patch(1)]);
    tokio::pin!(held);
    // Both held PATCHes are in (one or two) batches that wait for the lock.
    assert!(tokio::time::timeout(Duration::from_millis(100), &mut held)
        .await
        .is_err());
    let others = tokio::time::timeout(Duration::from_secs(10), join_all((2..10).map(patch)));
    let others = tokio::select! {
        others = others => others.expect("the other PATCHes were answered"),
        _ = &mut held => panic!("the held PATCHes finished while their tickets were held"),
    };
    for (status, body) in others {
        assert_eq!(status, 200, "{body}");
    }
    // Both held calls leave their batches (now or within their lock wait).
    calls_left_their_batches(&app, 2, "the held calls never left their batches").await;
    holder.batch_execute("COMMIT").await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held PATCHes went through after the commit");
    for (status, body) in held {
        assert_eq!(status, 200, "{body}");
    }
}

/// `ld_write_batch` as the server calls it, in a transaction of a session
/// whose `lock_timeout` is 7 s, on a subject change per ticket in `ids`
/// (each ticket's subject is its name); its rows' codes, how long it took,
/// and the session's `lock_timeout` after it.
async fn write_batch(
    app: &TestApp,
    actor: i64,
    ids: &[(i64, &str)],
) -> (Vec<Option<String>>, Duration, String) {
    let changes: Vec<Option<String>> = ids
        .iter()
        .map(|(_, from)| Some(json!({"subject": {"from": from, "to": "changed"}}).to_string()))
        .collect();
    let n = ids.len();
    let ids: Vec<i64> = ids.iter().map(|(id, _)| *id).collect();
    let none_text: Vec<Option<String>> = vec![None; n];
    let none_id: Vec<Option<i64>> = vec![None; n];
    let sql = app.sql().await;
    sql.batch_execute("SET lock_timeout = '7s'; BEGIN")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let rows = sql
        .query(
            "SELECT n, result, code FROM ld_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 250)",
            &[
                &vec!["patch"; n],
                &ids,
                &vec![actor; n],
                &changes,
                &none_id,
                &none_text,
                &none_text,
                &none_id,
                &none_text,
                &none_text,
                &none_text,
            ],
        )
        .await
        .unwrap();
    let waited = started.elapsed();
    let lock_timeout: String = sql
        .query_one("SHOW lock_timeout", &[])
        .await
        .unwrap()
        .get(0);
    sql.batch_execute("COMMIT").await.unwrap();
    let codes = rows.iter().map(|r| r.get("code")).collect();
    (codes, waited, lock_timeout)
}

/// A ticket held elsewhere costs the batch one lock wait, not one per call
/// on it (the later calls give up at once, for the server to run on their
/// own), the other calls go through, and the wait is the calls' only: the
/// commit, which waits for NOTIFY's queue lock, runs with the session's own
/// `lock_timeout`.
#[tokio::test]
async fn a_batch_waits_once_for_a_held_ticket_and_commits_with_its_own_lock_timeout() {
    let app = TestApp::spawn().await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let held = app.ticket(&token, "held").await["id"].as_i64().unwrap();
    let free = app.ticket(&token, "free").await["id"].as_i64().unwrap();
    let holder = app.sql().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tickets WHERE id = {held} FOR UPDATE"
        ))
        .await
        .unwrap();
    let calls = 8;
    let mut ids = vec![(held, "held"); calls];
    ids.push((free, "free"));
    let (codes, waited, lock_timeout) = write_batch(&app, alice.id, &ids).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        lock_timeout, "7s",
        "the commit keeps the session's lock_timeout"
    );
    let mut expected = vec![Some("55P03".to_string()); calls];
    expected.push(None);
    assert_eq!(
        codes, expected,
        "the held ticket's calls give up, the free one goes through"
    );
    assert!(
        waited < Duration::from_millis(250 * calls as u64 / 2),
        "one wait for the held ticket, not {calls}: {waited:?}"
    );
    let (_, ticket) = app.get(&format!("/api/tickets/{free}"), &token).await;
    assert_eq!(ticket["ticket"]["subject"], "changed");
}

/// Many tickets held at once still cost a batch one lock wait: enough
/// waits of 250 ms would take it past its `statement_timeout`, and the
/// cancelled batch would roll back its good calls too (found by a review).
/// Eight tickets held by a direct writer, one free one last: the eight give
/// up after one wait, the free one goes through. Fails without it: eight
/// waits, 2 s.
#[tokio::test]
async fn a_batch_waits_once_however_many_tickets_are_held() {
    let app = TestApp::spawn().await;
    let (alice, token) = app.agent("Alice", "agent").await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push((
            app.ticket(&token, "held").await["id"].as_i64().unwrap(),
            "held",
        ));
    }
    let held: Vec<String> = ids.iter().map(|(id, _)| id.to_string()).collect();
    let free = app.ticket(&token, "free").await["id"].as_i64().unwrap();
    ids.push((free, "free"));
    let holder = app.sql().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tickets WHERE id IN ({}) FOR UPDATE",
            held.join(", ")
        ))
        .await
        .unwrap();
    let (codes, waited, _) = write_batch(&app, alice.id, &ids).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    let mut expected = vec![Some("55P03".to_string()); 8];
    expected.push(None);
    assert_eq!(
        codes, expected,
        "the held calls give up, the free one goes through"
    );
    assert!(
        waited < Duration::from_millis(2 * 250),
        "one wait for eight held tickets, not eight: {waited:?}"
    );
    let (_, ticket) = app.get(&format!("/api/tickets/{free}"), &token).await;
    assert_eq!(ticket["ticket"]["subject"], "changed");
}

/// A request whose deadline passed is not run later: its PATCH waits in
/// its batch for a ticket a direct writer holds, gives up there (250 ms),
/// and by then the request has been answered 503 (deadline 100 ms); so it
/// is not run on its own afterwards, and when the writer lets go the
/// ticket is as the writer left it — no change the client was told failed.
#[tokio::test]
async fn a_request_answered_503_at_its_deadline_is_not_run_later() {
    let mut settings = crate::common::test_settings();
    settings.request_timeout_ms = 100;
    let app = TestApp::spawn_with(settings).await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "held").await["id"].as_i64().unwrap();
    let holder = app.sql().await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM tickets WHERE id = {id} FOR UPDATE"
        ))
        .await
        .unwrap();
    let (status, body) = app
        .patch(
            &format!("/api/tickets/{id}"),
            &token,
            json!({"changes": {"subject": {"from": "held", "to": "too late"}}}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    // Past the batch's lock wait: the call has left its batch by now.
    calls_left_their_batches(&app, 1, "the call never left its batch").await;
    holder.batch_execute("COMMIT").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sql = app.sql().await;
    let (subject, version): (String, i64) = sql
        .query_one("SELECT subject, version FROM tickets WHERE id = $1", &[&id])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((subject.as_str(), version), ("held", 1));
}

/// Wait (at most 10 s) until `at_least` batched calls were run again on
/// their own (`livedesk_write_batch_alone_total`).
async fn calls_left_their_batches(app: &TestApp, at_least: u64, otherwise: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while app.metric("livedesk_write_batch_alone_total").await < at_least {
        assert!(std::time::Instant::now() < deadline, "{otherwise}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
