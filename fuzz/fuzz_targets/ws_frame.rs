//! Arbitrary bytes as a WebSocket client frame, through the parser the
//! sessions use (`realtime::protocol::parse`, called by
//! `realtime::session::Session::on_frame`). It must never panic, and every
//! refusal must be an `error` frame in the contract's shape (docs/protocol.md):
//! `{"type":"error","code","message"[,"ticket_id"]}`, with a snake_case code
//! and the message intact through JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livedesk::realtime::protocol::{self, ClientFrame};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // actix-ws hands the session text frames as UTF-8 only (a text frame
    // that is not closes the connection with 1002); other bytes come as a
    // binary frame, answered `unsupported_frame`.
    let Ok(text) = std::str::from_utf8(data) else {
        let message = "Frames must be JSON text.";
        let frame = protocol::error_frame("unsupported_frame", message, None);
        check_error_frame(&frame, "unsupported_frame", message, None);
        return;
    };
    match protocol::parse(text) {
        Err((code, message)) => {
            let frame = protocol::error_frame(code, &message, None);
            check_error_frame(&frame, code, &message, None);
        }
        Ok(frame) => {
            // A frame that parses is a JSON object with a known "type".
            let value: Value = serde_json::from_str(text).expect("a parsed frame is JSON");
            let kind = value.get("type").and_then(Value::as_str);
            assert!(kind.is_some(), "a parsed frame has a string type");
            // The refusals that name the frame's ticket carry its id intact.
            let ticket_id = match frame {
                ClientFrame::Subscribe { ticket_id, .. }
                | ClientFrame::Unsubscribe { ticket_id }
                | ClientFrame::Presence { ticket_id, .. } => Some(ticket_id),
                ClientFrame::SubscribeInbox {}
                | ClientFrame::UnsubscribeInbox {}
                | ClientFrame::Ping {} => None,
            };
            if let ClientFrame::Presence { state, .. } = frame {
                assert_eq!(value["state"].as_str(), Some(state.as_str()));
            }
            if let Some(id) = ticket_id {
                let message = "You are not subscribed to this ticket.";
                let frame = protocol::error_frame("not_subscribed", message, Some(id));
                check_error_frame(&frame, "not_subscribed", message, Some(id));
            }
        }
    }
});

/// The frame is `{"type":"error","code","message"[,"ticket_id"]}` and says
/// exactly what it was built from.
fn check_error_frame(frame: &str, code: &str, message: &str, ticket_id: Option<i64>) {
    let value: Value = serde_json::from_str(frame).expect("an error frame is valid JSON");
    let object = value.as_object().expect("an error frame is a JSON object");
    assert_eq!(object.get("type").and_then(Value::as_str), Some("error"));
    let sent_code = object.get("code").and_then(Value::as_str);
    assert_eq!(sent_code, Some(code));
    assert!(is_snake_case(code), "error code {code:?} is not snake_case");
    let sent_message = object.get("message").and_then(Value::as_str);
    assert_eq!(sent_message, Some(message));
    assert!(!message.is_empty(), "an error frame says why");
    assert_eq!(object.get("ticket_id").and_then(Value::as_i64), ticket_id);
    let expected_keys = 3 + usize::from(ticket_id.is_some());
    assert_eq!(object.len(), expected_keys, "unexpected keys in {frame}");
}

fn is_snake_case(code: &str) -> bool {
    code.starts_with(|c: char| c.is_ascii_lowercase())
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
