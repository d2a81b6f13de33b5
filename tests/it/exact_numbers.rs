//! PATCH compares and stores custom `number` values exactly: a value that an
//! f64 cannot hold (an integer beyond 2^64, a decimal with more than 17
//! significant digits), written by a direct SQL writer or by an earlier
//! PATCH, matches its own `from` as the client read it, and a `to` is stored
//! digit for digit. The test never parses a number itself: bodies are built
//! as text and values are read back as raw JSON text.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;

use common::{error_code, send, TestApp};
use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Detail {
    ticket: Ticket,
}

#[derive(Deserialize)]
struct Ticket {
    custom_fields: BTreeMap<String, Box<RawValue>>,
}

/// The values: two controls an f64 holds, then three it cannot.
const VALUES: [&str; 5] = [
    "1",
    "2.5",
    "12345678901234567890123",
    "0.12345678901234567891",
    "-98765432109876543210.123456789012345",
];

/// `custom_fields.amount` as JSON text in a ticket's JSON text, if set.
fn amount(ticket: &Ticket) -> Option<String> {
    ticket
        .custom_fields
        .get("amount")
        .map(|v| v.get().to_string())
}

/// GET the ticket; its `custom_fields.amount` as the server wrote it.
async fn get_amount(app: &TestApp, token: &str, id: i64) -> Option<String> {
    let response = app
        .req(reqwest::Method::GET, &format!("/api/tickets/{id}"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let detail: Detail = serde_json::from_str(&text).unwrap();
    amount(&detail.ticket)
}

/// PATCH `custom_fields.amount` from `from` to `to` (both JSON text, sent
/// as they are); the status and the body's text.
async fn patch_amount(app: &TestApp, token: &str, id: i64, from: &str, to: &str) -> (u16, String) {
    let body =
        format!(r#"{{"changes": {{"custom_fields.amount": {{"from": {from}, "to": {to}}}}}}}"#);
    let response = app
        .req(reqwest::Method::PATCH, &format!("/api/tickets/{id}"), token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The stored value as PostgreSQL prints it (jsonb keeps numeric digits).
async fn stored(sql: &tokio_postgres::Client, id: i64) -> Option<String> {
    sql.query_one(
        "SELECT (custom_fields -> 'amount')::text FROM tickets WHERE id = $1",
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn number_fields_compare_and_store_exactly() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let (_, admin) = app.agent("Root", "admin").await;
    let (status, body) = send(
        app.req(reqwest::Method::PUT, "/api/fields/amount", &admin)
            .json(&serde_json::json!({"label": "Amount", "type": "number"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sql = app.sql().await;

    let mut failures = Vec::new();
    for value in VALUES {
        // Written by a direct SQL writer; the client reads it and sends it back.
        let id = app.ticket(&token, "sql writer").await["id"]
            .as_i64()
            .unwrap();
        sql.execute(
            "UPDATE tickets SET custom_fields = custom_fields || jsonb_build_object('amount', $2::text::jsonb) WHERE id = $1",
            &[&id, &value],
        )
        .await
        .unwrap();
        let seen = get_amount(&app, &token, id).await.unwrap();
        assert_eq!(seen, value, "GET shows the stored value exactly");
        let (status, body) = patch_amount(&app, &token, id, &seen, "7").await;
        if status != 200 {
            failures.push(format!(
                "from {seen} (written in SQL) to 7: {status} {body}"
            ));
        } else if stored(&sql, id).await.as_deref() != Some("7") {
            failures.push(format!("from {seen} to 7: not applied"));
        }

        // Written by a PATCH (`to` exact), then changed by the next one.
        let id = app.ticket(&token, "patch writer").await["id"]
            .as_i64()
            .unwrap();
        let (status, body) = patch_amount(&app, &token, id, "null", value).await;
        assert_eq!(status, 200, "from null to {value}: {body}");
        let answered: Ticket = serde_json::from_str(&body).unwrap();
        let kept = stored(&sql, id).await.unwrap();
        if kept != value || amount(&answered).as_deref() != Some(value) {
            failures.push(format!(
                "to {value}: stored {kept}, answered {:?}",
                amount(&answered)
            ));
        }
        let seen = get_amount(&app, &token, id).await.unwrap();
        let (status, body) = patch_amount(&app, &token, id, &seen, "null").await;
        if status != 200 {
            failures.push(format!(
                "from {seen} (written by PATCH) to null: {status} {body}"
            ));
        } else if stored(&sql, id).await.is_some() {
            failures.push(format!("from {seen} to null: not applied"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A body whose `changes` is not an object is refused before SQL with the
/// same answer as before (these are the messages the server gave then).
#[tokio::test]
async fn changes_that_are_not_an_object_get_the_same_400() {
    let app = TestApp::spawn().await;
    let (_, token) = app.agent("Alice", "agent").await;
    let id = app.ticket(&token, "shape").await["id"].as_i64().unwrap();
    let path = format!("/api/tickets/{id}");
    for (body, code, message) in [
        (
            r#"{"changes": []}"#,
            "invalid_field",
            "Invalid body: invalid type: sequence, expected a map at line 1 column 12.",
        ),
        (
            r#"  {"changes": []}"#,
            "invalid_field",
            "Invalid body: invalid type: sequence, expected a map at line 1 column 14.",
        ),
        (
            r#"{"changes": [1, tru"#,
            "invalid_field",
            "Invalid body: invalid type: sequence, expected a map at line 1 column 12.",
        ),
        (
            r#"{"changes": "x"}"#,
            "invalid_field",
            "Invalid body: invalid type: string \"x\", expected a map at line 1 column 15.",
        ),
        (
            r#"{"changes": 12345678901234567890123}"#,
            "invalid_field",
            "Invalid body: invalid type: floating point `1.2345678901234568e+22`, expected a map at line 1 column 35.",
        ),
        (
            r#"{"changes": null}"#,
            "invalid_field",
            "Invalid body: invalid type: null, expected a map at line 1 column 16.",
        ),
        (
            r#"{"status": "open"}"#,
            "invalid_field",
            "Invalid body: unknown field `status`, expected `changes` at line 1 column 9.",
        ),
        (
            r#"{}"#,
            "invalid_field",
            "Invalid body: missing field `changes` at line 1 column 2.",
        ),
        (
            r#""x""#,
            "invalid_field",
            "Invalid body: invalid type: string \"x\", expected struct PatchBody at line 1 column 3.",
        ),
        (
            r#"[]"#,
            "invalid_field",
            "Invalid body: invalid length 0, expected struct PatchBody with 1 element at line 1 column 2.",
        ),
        (
            r#"{"changes": {"status": {"from": "new", "to": "open"}}, "changes": {}}"#,
            "invalid_field",
            "Invalid body: duplicate field `changes` at line 1 column 64.",
        ),
        (
            r#"{"changes": {"status": {"from": "new", "to": "open"}}"#,
            "invalid_json",
            "The body is not valid JSON: EOF while parsing an object at line 1 column 53.",
        ),
    ] {
        let (status, answer) = send(
            app.req(reqwest::Method::PATCH, &path, &token)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(error_code(&answer), code, "{body}: {answer}");
        assert_eq!(answer["error"]["message"], message, "{body}");
    }
    // What only a full parse refuses inside `changes` (a number beyond f64,
    // a lone surrogate, nesting deeper than 128) is still a 400.
    let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
    for body in [
        r#"{"changes": {"custom_fields.amount": {"from": null, "to": 1e400}}}"#.to_string(),
        r#"{"changes": {"subject": {"from": "shape", "to": "\ud800"}}}"#.to_string(),
        format!(r#"{{"changes": {{"subject": {{"from": "shape", "to": {deep}}}}}}}"#),
    ] {
        let (status, answer) = send(
            app.req(reqwest::Method::PATCH, &path, &token)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        error_code(&answer);
    }
    let (_, now) = app.get(&path, &token).await;
    assert_eq!(now["ticket"]["version"], 1, "nothing applied: {now}");
}
