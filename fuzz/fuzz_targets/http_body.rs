//! Arbitrary bytes as the JSON body of every HTTP route that reads one,
//! through the same deserialization the routes use: actix's `web::Json<T>`
//! is `serde_json::from_slice::<T>` over the body, and its failures go to
//! the app's `JsonConfig` error handler (`http::errors::extractors::json`).
//! Then the checks the handlers make before SQL. Never a panic, and every
//! refusal is a 4xx in the contract's shape
//! `{"error": {"code": "snake_case", "message": "...", ...}}`.
#![no_main]

use actix_web::body::MessageBody;
use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::test::TestRequest;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use libfuzzer_sys::fuzz_target;
use livedesk::domain::drafts::DraftInput;
use livedesk::domain::fields::FieldDefinition;
use livedesk::domain::messages::NewMessage;
use livedesk::domain::tags::TagDelta;
use livedesk::domain::tickets::NewTicket;
use livedesk::http::errors::{extractors, ApiError};
use livedesk::http::routes::login::LoginLink;
use livedesk::http::routes::tickets::PatchBody;
use serde::de::DeserializeOwned;
use serde_json::Value;

thread_local! {
    static REQUEST: HttpRequest = TestRequest::default().to_http_request();
}

fuzz_target!(|data: &[u8]| {
    // POST /api/tickets
    let _: Option<NewTicket> = body(data);
    // PATCH /api/tickets/{id}: the changes go to SQL as one JSON value.
    if let Some(patch) = body::<PatchBody>(data) {
        let changes = Value::Object(patch.changes);
        serde_json::to_vec(&changes).expect("the changes serialize for SQL");
    }
    // POST /api/tickets/{id}/messages: only a service posts a customer's words.
    if let Some(message) = body::<NewMessage>(data) {
        if message.kind == "customer" {
            let refusal = ApiError::Forbidden("Only service tokens may post customer messages.");
            check_error(refusal.error_response(), StatusCode::FORBIDDEN);
        }
    }
    // POST /api/tickets/{id}/tags
    let _: Option<TagDelta> = body(data);
    // PUT /api/tickets/{id}/draft
    let _: Option<DraftInput> = body(data);
    // PUT /api/fields/{key}
    let _: Option<FieldDefinition> = body(data);
    // POST /api/login: codes longer than 200 bytes are refused before SQL.
    if let Some(link) = body::<LoginLink>(data) {
        if link.code.len() > 200 {
            let refusal = ApiError::bad_request("invalid_field", "That is not a login code.");
            check_error(refusal.error_response(), StatusCode::BAD_REQUEST);
        }
    }
});

/// What `web::Json<T>` gives the handler, or checks the 400 it answers.
fn body<T: DeserializeOwned>(data: &[u8]) -> Option<T> {
    match serde_json::from_slice::<T>(data) {
        Ok(value) => Some(value),
        Err(e) => {
            let expected = if e.is_data() {
                "invalid_field"
            } else {
                "invalid_json"
            };
            let error = REQUEST.with(|req| extractors::json(JsonPayloadError::Deserialize(e), req));
            let body = check_error(error.error_response(), StatusCode::BAD_REQUEST);
            assert_eq!(body["error"]["code"], expected);
            None
        }
    }
}

/// The answer has `status` and the contract's error body; returns the body.
fn check_error(response: HttpResponse, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    let bytes = response
        .into_body()
        .try_into_bytes()
        .unwrap_or_else(|_| panic!("an error body is in memory"));
    let value: Value = serde_json::from_slice(&bytes).expect("an error body is valid JSON");
    let top = value.as_object().expect("an error body is an object");
    assert_eq!(top.len(), 1, "only \"error\" at the top: {value}");
    let error = top
        .get("error")
        .and_then(Value::as_object)
        .expect("\"error\" is an object");
    let code = error
        .get("code")
        .and_then(Value::as_str)
        .expect("a string code");
    assert!(
        code.starts_with(|c: char| c.is_ascii_lowercase())
            && code
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "code {code:?} is not snake_case"
    );
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .expect("a string message");
    assert!(!message.is_empty(), "the message says why");
    value
}
