//! The WebSocket protocol of contract §6: client frames, server frames, close codes.

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::{json, Value};

/// Close codes livedesk uses (1000–1015 are the standard's; 4000–4999 are ours).
pub mod close {
    /// The peer broke a rule (abuse: too many frames, binary frames).
    pub const POLICY: u16 = 1008;
    /// A frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed.
    pub const SERVER_ERROR: u16 = 1011;
    /// Too slow to keep up: reconnect and resume with `since`.
    pub const TRY_AGAIN: u16 = 1013;
    /// Nothing was heard from the client within the heartbeat TTL.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    /// The agent was disabled or its token replaced or expired: do not
    /// reconnect with it (contract §6).
    pub const REVOKED: u16 = 4001;
    /// The server is shutting down; reconnect (to another process) with `since`.
    pub const GOING_AWAY: u16 = 1001;
}

/// A frame sent by a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        ticket_id: i64,
        since: Option<i64>,
    },
    Unsubscribe {
        ticket_id: i64,
    },
    SubscribeInbox {},
    UnsubscribeInbox {},
    Presence {
        ticket_id: i64,
        state: PresenceState,
    },
    Ping {},
}

impl ClientFrame {
    /// The ticket the frame is about, if any (named in a refusal).
    pub fn ticket_id(&self) -> Option<i64> {
        match self {
            ClientFrame::Subscribe { ticket_id, .. }
            | ClientFrame::Unsubscribe { ticket_id }
            | ClientFrame::Presence { ticket_id, .. } => Some(*ticket_id),
            _ => None,
        }
    }
}

/// What an agent is doing on a ticket, from most to least active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Typing,
    Viewing,
    Idle,
}

impl PresenceState {
    /// The value stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceState::Typing => "typing",
            PresenceState::Viewing => "viewing",
            PresenceState::Idle => "idle",
        }
    }
}

/// Why a client frame could not be read, as an `error` frame.
pub fn parse(text: &str) -> Result<ClientFrame, (&'static str, String)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ("invalid_json", format!("The frame is not valid JSON: {e}.")))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .ok_or((
            "invalid_frame",
            "The frame needs a string \"type\".".to_string(),
        ))?
        .to_string();
    const KNOWN: [&str; 6] = [
        "subscribe",
        "unsubscribe",
        "subscribe_inbox",
        "unsubscribe_inbox",
        "presence",
        "ping",
    ];
    if !KNOWN.contains(&kind.as_str()) {
        return Err(("unknown_type", format!("Unknown frame type {kind:?}.")));
    }
    serde_json::from_value(value)
        .map_err(|e| ("invalid_frame", format!("Invalid {kind} frame: {e}.")))
}

/// `{"type":"error",...}`; `ticket_id` tells which subscription it concerns.
pub fn error_frame(code: &str, message: &str, ticket_id: Option<i64>) -> ByteString {
    let mut frame = json!({"type": "error", "code": code, "message": message});
    if let Some(id) = ticket_id {
        frame["ticket_id"] = json!(id);
    }
    frame.to_string().into()
}

/// `{"type":"subscribed",...}`.
pub fn subscribed_frame(ticket_id: i64, version: i64) -> ByteString {
    json!({"type": "subscribed", "ticket_id": ticket_id, "version": version})
        .to_string()
        .into()
}

/// `{"type":"reset",...}` (contract v2 §6): the database went back in time,
/// or the ticket's log has a gap; drop the ticket's state and subscribe
/// again without `since`. `version` is the database's version now.
pub fn reset_frame(ticket_id: i64, version: i64) -> ByteString {
    json!({"type": "reset", "ticket_id": ticket_id, "version": version})
        .to_string()
        .into()
}

/// `{"type":"hello",...}`.
pub fn hello_frame(agent: &crate::domain::Agent, heartbeat_ms: u64) -> ByteString {
    json!({"type": "hello", "agent": agent, "heartbeat_ms": heartbeat_ms})
        .to_string()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_frames() {
        assert!(matches!(
            parse(r#"{"type":"subscribe","ticket_id":4,"since":2}"#),
            Ok(ClientFrame::Subscribe {
                ticket_id: 4,
                since: Some(2)
            })
        ));
        assert!(matches!(
            parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping {})
        ));
        assert!(matches!(
            parse(r#"{"type":"presence","ticket_id":1,"state":"typing"}"#),
            Ok(ClientFrame::Presence {
                state: PresenceState::Typing,
                ..
            })
        ));
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        assert_eq!(parse("nope").unwrap_err().0, "invalid_json");
        assert_eq!(parse("[]").unwrap_err().0, "invalid_frame");
        assert_eq!(parse(r#"{"type":"dance"}"#).unwrap_err().0, "unknown_type");
        assert_eq!(
            parse(r#"{"type":"subscribe","ticket_id":"x"}"#)
                .unwrap_err()
                .0,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"presence","ticket_id":1,"state":"asleep"}"#)
                .unwrap_err()
                .0,
            "invalid_frame"
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","ticket_id":1,"extra":1}"#)
                .unwrap_err()
                .0,
            "invalid_frame"
        );
    }
}
