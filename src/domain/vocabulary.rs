//! The contract's vocabularies (§4) as types, for the API description
//! (`http::openapi`) and the request types' schemas. The values themselves
//! are checked by PostgreSQL (CHECK constraints, `ld_*` functions), which
//! stays the one place a rule lives; these only name them for clients.

use serde::Serialize;
use utoipa::ToSchema;

/// `tickets.status`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TicketStatus {
    New,
    Open,
    Pending,
    Resolved,
    Closed,
}

/// `tickets.priority`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Normal,
    High,
    Urgent,
}

/// `tickets.channel`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Chat,
    Phone,
    Web,
    Api,
}

/// `messages.kind`: from the customer, a reply to the customer, an internal note.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Customer,
    Reply,
    Note,
}

/// What an unsent draft will become.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DraftKind {
    Reply,
    Note,
}

/// `agents.role`: `service` is a non-human integration.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Admin,
    Service,
}

/// A viewer's state on a ticket (contract §6).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ViewerState {
    Viewing,
    Typing,
    Idle,
}

/// `field_definitions.type`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    Number,
    Date,
    Select,
    Multiselect,
    Checkbox,
}
