//! Drafts over plain HTTP (contract §5 `PUT/GET/DELETE /api/tickets/{id}/draft`,
//! the `drafts` list of `GET /api/tickets/{id}`), the draft deleted by sending,
//! the `draft` marker on presence viewers, `GET /api/agents`, and
//! `GET /api/tickets/{id}/messages` paging.

#![allow(clippy::unwrap_used)]

use crate::common;

use common::ws::WsClient;
use common::{error_code, send, TestApp};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

async fn put_draft(app: &TestApp, token: &str, id: i64, body: Value) -> (u16, Value) {
    send(
        app.req(Method::PUT, &format!("/api/tickets/{id}/draft"), token)
            .json(&body),
    )
    .await
}

async fn delete_draft(app: &TestApp, token: &str, id: i64) -> (u16, Value) {
    send(app.req(Method::DELETE, &format!("/api/tickets/{id}/draft"), token)).await
}

#[tokio::test]
async fn a_draft_is_saved_read_replaced_and_deleted_by_its_author_only() {
    let app = TestApp::spawn().await;
    let (alice, ta) = app.agent("Alice", "agent").await;
    let (_, tb) = app.agent("Bob", "agent").await;
    let id = app.ticket(&ta, "Printer").await["id"].as_i64().unwrap();
    let path = format!("/api/tickets/{id}/draft");

    // Nothing yet: 404 in the error shape, and an empty list on the ticket.
    let (status, body) = app.get(&path, &ta).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &tb).await;
    assert_eq!(full["drafts"], json!([]), "{full}");

    let (status, saved) = put_draft(
        &app,
        &ta,
        id,
        json!({"kind": "reply", "body": "Dear customer,", "seen_message_id": 0}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(saved["kind"], "reply");
    assert_eq!(saved["body"], "Dear customer,");
    assert_eq!(saved["seen_message_id"], 0);
    assert!(saved["updated_at"].as_str().is_some(), "{saved}");

    // Replaced, not added: one draft per agent and ticket.
    let (status, saved) = put_draft(
        &app,
        &ta,
        id,
        json!({"kind": "note", "body": "Check the invoice first", "seen_message_id": null}),
    )
    .await;
    assert_eq!(status, 200, "{saved}");
    let (status, mine) = app.get(&path, &ta).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["kind"], "note");
    assert_eq!(mine["body"], "Check the invoice first");
    assert_eq!(mine["seen_message_id"], Value::Null);

    // Bob sees that Alice has a draft, never its body; his own is still absent.
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &tb).await;
    let drafts = full["drafts"].as_array().unwrap();
    assert_eq!(drafts.len(), 1, "{full}");
    assert_eq!(drafts[0]["agent"]["id"], alice.id);
    assert_eq!(drafts[0]["agent"]["name"], "Alice");
    assert_eq!(drafts[0]["kind"], "note");
    assert!(drafts[0].get("body").is_none(), "{full}");
    assert!(!full.to_string().contains("Check the invoice"), "{full}");
    let (status, list) = app.get(&format!("/api/tickets/{id}/drafts"), &tb).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["drafts"], full["drafts"]);
    let (status, body) = app.get(&path, &tb).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");

    // Bob deleting "his" draft leaves Alice's alone; deleting is idempotent.
    let (status, _) = delete_draft(&app, &tb, id).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&path, &ta).await.0, 200);
    let (status, _) = delete_draft(&app, &ta, id).await;
    assert_eq!(status, 204);
    let (status, _) = delete_draft(&app, &ta, id).await;
    assert_eq!(status, 204);
    assert_eq!(app.get(&path, &ta).await.0, 404);
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &tb).await;
    assert_eq!(full["drafts"], json!([]), "{full}");
}

#[tokio::test]
async fn bad_drafts_are_refused_in_the_error_shape_and_change_nothing() {
    let app = TestApp::spawn().await;
    let (_, ta) = app.agent("Alice", "agent").await;
    let id = app.ticket(&ta, "Printer").await["id"].as_i64().unwrap();
    let good = json!({"kind": "reply", "body": "kept", "seen_message_id": 0});
    assert_eq!(put_draft(&app, &ta, id, good).await.0, 200);

    let cases = [
        (
            json!({"kind": "customer", "body": "x"}),
            400,
            "invalid_field",
        ),
        (
            json!({"kind": "reply", "body": "  \n "}),
            400,
            "invalid_field",
        ),
        (
            json!({"kind": "reply", "body": "x", "seen_message_id": -1}),
            400,
            "invalid_field",
        ),
        (json!({"kind": "reply"}), 400, "invalid_field"),
        (
            json!({"kind": "reply", "body": "x", "colour": "red"}),
            400,
            "invalid_field",
        ),
        (
            json!({"kind": "reply", "body": "x".repeat(256 * 1024 + 1)}),
            413,
            "payload_too_large",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, answer) = put_draft(&app, &ta, id, body.clone()).await;
        assert_eq!(
            (status, error_code(&answer)),
            (want_status, want_code),
            "{body:.80}: {answer}"
        );
    }
    let (status, answer) = send(
        app.req(Method::PUT, &format!("/api/tickets/{id}/draft"), &ta)
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!((status, error_code(&answer)), (400, "invalid_json"));

    // The draft is unchanged by all of that.
    let (_, mine) = app.get(&format!("/api/tickets/{id}/draft"), &ta).await;
    assert_eq!(mine["body"], "kept", "{mine}");

    // A ticket that does not exist; no token.
    let (status, answer) =
        put_draft(&app, &ta, 999_999, json!({"kind": "reply", "body": "x"})).await;
    assert_eq!(
        (status, error_code(&answer)),
        (404, "not_found"),
        "{answer}"
    );
    for method in [Method::GET, Method::DELETE] {
        let (status, answer) =
            send(app.req(method.clone(), "/api/tickets/999999/draft", &ta)).await;
        assert_eq!(
            (status, error_code(&answer)),
            (404, "not_found"),
            "{method}: {answer}"
        );
    }
    let (status, answer) = send(app.http.get(format!("{}/api/tickets/{id}/draft", app.base))).await;
    assert_eq!((status, error_code(&answer)), (401, "unauthorized"));
}

#[tokio::test]
async fn sending_deletes_the_authors_draft_of_that_kind_only() {
    let app = TestApp::spawn().await;
    let (_, ta) = app.agent("Alice", "agent").await;
    let (_, tb) = app.agent("Bob", "agent").await;
    let id = app.ticket(&ta, "Printer").await["id"].as_i64().unwrap();
    let draft = format!("/api/tickets/{id}/draft");
    let messages = format!("/api/tickets/{id}/messages");

    put_draft(
        &app,
        &ta,
        id,
        json!({"kind": "reply", "body": "Dear customer"}),
    )
    .await;
    put_draft(&app, &tb, id, json!({"kind": "reply", "body": "Hello"})).await;

    // A note does not send a reply draft.
    let (status, body) = app
        .post(&messages, &ta, json!({"kind": "note", "body": "internal"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(app.get(&draft, &ta).await.0, 200);

    // A refused reply (Bob's is a duplicate now) keeps the draft.
    let (status, body) = app
        .post(
            &messages,
            &ta,
            json!({"kind": "reply", "body": "Dear customer", "seen_message_id": 0}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        app.get(&draft, &ta).await.0,
        404,
        "sent: Alice's draft is gone"
    );
    let (status, body) = app
        .post(
            &messages,
            &tb,
            json!({"kind": "reply", "body": "Hello", "seen_message_id": 0}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (409, "duplicate_reply"),
        "{body}"
    );
    let (status, kept) = app.get(&draft, &tb).await;
    assert_eq!(
        (status, kept["body"].as_str()),
        (200, Some("Hello")),
        "{kept}"
    );

    let (_, full) = app.get(&format!("/api/tickets/{id}"), &ta).await;
    let who: Vec<&str> = full["drafts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["agent"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(who, ["Bob"], "{full}");
}

/// Presence viewers carry `draft` (contract §6), re-announced when a draft is saved or deleted.
#[tokio::test]
async fn viewers_carry_the_draft_marker_live() {
    let app = TestApp::spawn().await;
    let (alice, ta) = app.agent("Alice", "agent").await;
    let (_, tb) = app.agent("Bob", "agent").await;
    let id = app.ticket(&ta, "Printer").await["id"].as_i64().unwrap();

    let mut alice_ws = WsClient::connect(&app.base, &ta).await;
    alice_ws.subscribe(id, None).await;
    let mut bob_ws = WsClient::connect(&app.base, &tb).await;
    bob_ws.subscribe(id, None).await;
    // A frame matching `want` within 5 s, skipping others.
    async fn wait_for(ws: &mut WsClient, want: impl Fn(&Value) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Some(frame) = ws
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            if want(&frame) {
                return true;
            }
        }
        false
    }

    let marker = |frame: &Value| -> Option<Value> {
        frame["viewers"]
            .as_array()?
            .iter()
            .find(|v| v["agent"]["id"] == alice.id)
            .map(|v| v["draft"].clone())
    };
    put_draft(&app, &ta, id, json!({"kind": "note", "body": "thinking"})).await;
    let seen = wait_for(&mut bob_ws, |f| {
        f["type"] == "presence" && marker(f) == Some(json!("note"))
    })
    .await;
    assert!(seen, "Bob never saw Alice's note draft marker");
    delete_draft(&app, &ta, id).await;
    let seen = wait_for(&mut bob_ws, |f| {
        f["type"] == "presence" && marker(f) == Some(Value::Null)
    })
    .await;
    assert!(seen, "Bob never saw the marker cleared");
}

/// `GET /api/tickets/{id}` carries the newest 50 messages; older pages come
/// from `GET /api/tickets/{id}/messages?before=` until `messages_before` is null.
#[tokio::test]
async fn long_threads_are_paged_newest_first_oldest_first_within_a_page() {
    let app = TestApp::spawn().await;
    let (_, ta) = app.agent("Alice", "agent").await;
    let id = app.ticket(&ta, "Long thread").await["id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for n in 0..120 {
        let (status, m) = app
            .post(
                &format!("/api/tickets/{id}/messages"),
                &ta,
                json!({"kind": "note", "body": format!("note {n}")}),
            )
            .await;
        assert_eq!(status, 201, "{m}");
        ids.push(m["id"].as_i64().unwrap());
    }
    let (_, full) = app.get(&format!("/api/tickets/{id}"), &ta).await;
    let first: Vec<i64> = full["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(first, ids[70..], "the newest 50, oldest first");
    let mut before = full["messages_before"].as_i64().expect("an older page");
    let mut seen = first;
    loop {
        let b = before;
        let (status, page) = app
            .get(
                &format!("/api/tickets/{id}/messages?before={b}&limit=30"),
                &ta,
            )
            .await;
        assert_eq!(status, 200, "{page}");
        let got: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        assert!(got.iter().all(|&m| m < b), "{got:?} before {b}");
        seen.splice(0..0, got);
        match page["messages_before"].as_i64() {
            Some(next) => before = next,
            None => break,
        }
    }
    assert_eq!(seen, ids, "every message once, in order");

    for (query, code) in [
        ("limit=0", "invalid_field"),
        ("limit=201", "invalid_field"),
        ("before=-3", "invalid_field"),
        ("before=abc", "invalid_query"),
        ("colour=red", "invalid_query"),
    ] {
        let (status, body) = app
            .get(&format!("/api/tickets/{id}/messages?{query}"), &ta)
            .await;
        assert_eq!((status, error_code(&body)), (400, code), "{query}: {body}");
    }
    let (status, body) = app.get("/api/tickets/999999/messages", &ta).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"), "{body}");
}

#[tokio::test]
async fn the_agent_directory_lists_enabled_agents_by_name_without_secrets() {
    let app = TestApp::spawn().await;
    let (_, tz) = app.agent("Zoe", "agent").await;
    app.agent("adam", "admin").await;
    app.agent("Gateway", "service").await;
    let (status, body) = app.get("/api/agents", &tz).await;
    assert_eq!(status, 200, "{body}");
    let agents = body["agents"].as_array().unwrap();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["adam", "Gateway", "Zoe"], "{body}");
    for a in agents {
        let mut keys: Vec<&str> = a.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["avatar_url", "id", "name", "role"], "{a}");
    }
    // A disabled agent (contract §5a) is not offered for assigning.
    let adam = &agents[0];
    let email: String = app
        .sql()
        .await
        .query_one(
            "SELECT email FROM agents WHERE id = $1",
            &[&adam["id"].as_i64().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    livedesk::domain::agents::set_disabled(&app.db, &email, true)
        .await
        .unwrap();
    let (_, body) = app.get("/api/agents", &tz).await;
    let names: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Gateway", "Zoe"], "{body}");
    let (status, body) = send(app.http.get(format!("{}/api/agents", app.base))).await;
    assert_eq!((status, error_code(&body)), (401, "unauthorized"));
}
