//! A new custom field appears on every open console without a reload: inbox
//! subscribers get `{"type":"fields","fields":[…]}` after a change by an
//! admin over HTTP and after one in plain SQL.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::ws::WsClient;
use common::{send, TestApp};
use serde_json::json;

#[tokio::test]
async fn field_definitions_reach_inbox_subscribers_live() {
    let app = TestApp::spawn().await;
    let (_, admin) = app.agent("Ada", "admin").await;
    let (_, agent) = app.agent("Alice", "agent").await;
    let mut ws = WsClient::connect(&app.base, &agent).await;
    ws.send(json!({"type": "subscribe_inbox"})).await;
    // Over HTTP, by an admin.
    let (status, _) = send(
        app.req(reqwest::Method::PUT, "/api/fields/plan", &admin)
            .json(&json!({"label": "Plan", "type": "select", "options": ["free", "pro"]})),
    )
    .await;
    assert_eq!(status, 200);
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next_of("fields"))
        .await
        .expect("a fields frame");
    assert_eq!(frame["fields"][0]["key"], "plan");
    assert_eq!(frame["fields"][0]["options"], json!(["free", "pro"]));
    // In plain SQL (the owner).
    app.sql()
        .await
        .batch_execute(
            "INSERT INTO field_definitions (key, label, type) VALUES ('order_id', 'Order', 'text')",
        )
        .await
        .unwrap();
    let frame = tokio::time::timeout(Duration::from_secs(5), ws.next_of("fields"))
        .await
        .expect("a fields frame");
    let keys: Vec<&str> = frame["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    // Ordered by position, then key.
    assert_eq!(keys, vec!["order_id", "plan"]);
}
