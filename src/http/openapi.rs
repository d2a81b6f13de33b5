//! The OpenAPI 3.1 description of the HTTP API, served at
//! `GET /api/openapi.json` (contract §5).
//!
//! Generated, never written by hand: `utoipa` builds it from the
//! `#[utoipa::path]` attributes on the handlers in `routes/` and from the
//! schema types below. The handlers pass JSON built by PostgreSQL through as
//! `RawJson`, so the answer types here are the only Rust spelling of those
//! shapes (`sql/rules/10_json.sql` and friends): they exist for the document,
//! and `tests/it/openapi.rs` checks real answers against them, so the SQL and
//! this file cannot drift apart unnoticed.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::{get, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub use crate::domain::vocabulary::{
    Channel, DraftKind, FieldType, MessageKind, Priority, Role, TicketStatus, ViewerState,
};
use crate::http::{routes, ApiError};

/// The document: every route of `http::configure` is listed here (the test
/// `tests/it/openapi.rs` fails when one is missing).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "livedesk",
        description = "Real-time collaboration server for helpdesk agents: the HTTP API of \
                       contract version 2. Live changes and presence travel over the \
                       WebSocket `GET /ws` (docs/protocol.md).",
        license(name = "MIT", identifier = "MIT")
    ),
    paths(
        routes::health::healthz,
        routes::health::metrics,
        document,
        routes::me::me,
        routes::login::redeem,
        routes::login::logout,
        routes::tickets::list,
        routes::tickets::create,
        routes::tickets::get,
        routes::tickets::patch,
        routes::tickets::events,
        routes::tickets::messages,
        routes::drafts::put,
        routes::drafts::get,
        routes::drafts::delete,
        routes::drafts::list,
        routes::agents::list,
        routes::messages::post,
        routes::tags::change,
        routes::fields::list,
        routes::fields::put,
        routes::ws::upgrade,
    ),
    modifiers(&BearerToken),
    tags(
        (name = "tickets", description = "Tickets, their messages, tags and history"),
        (name = "drafts", description = "Unsent replies and notes"),
        (name = "agents", description = "Who is working"),
        (name = "fields", description = "Custom field definitions"),
        (name = "service", description = "Health, metrics and this document")
    )
)]
pub struct ApiDoc;

/// The security scheme the handlers name (`security(("bearer" = []))`):
/// `Authorization: Bearer <token>`, tokens from the CLI or a login link.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`livedesk agent add`, `livedesk agent token`, or \
                         POST /api/login with a one-time login link).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, built once per process (it never changes while
/// the process runs).
pub fn document_json() -> Result<&'static str, serde_json::Error> {
    static JSON: OnceLock<String> = OnceLock::new();
    if let Some(json) = JSON.get() {
        return Ok(json);
    }
    let json = ApiDoc::openapi().to_json()?;
    Ok(JSON.get_or_init(|| json))
}

/// `GET /api/openapi.json`: open without a token, like `/healthz`, so
/// client generators can fetch it.
#[utoipa::path(
    operation_id = "openapi",
    tag = "service",
    responses(
        (status = 200, description = "This OpenAPI 3.1 document", body = Object, content_type = "application/json"),
    )
)]
#[get("/api/openapi.json")]
pub async fn document() -> Result<HttpResponse, ApiError> {
    let json = document_json().map_err(|e| {
        tracing::error!(error = %e, "the OpenAPI document could not be serialised");
        ApiError::Unavailable("The API description is not available.".into())
    })?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json))
}

// ---------------------------------------------------------------------------
// Vocabulary of the answers (the contract's own, §4, is `domain::vocabulary`).

/// Who wrote a message: an agent or a customer.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthorType {
    Agent,
    Customer,
}

/// The kinds of events in a ticket's history (contract §6).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum EventKind {
    #[serde(rename = "ticket.created")]
    TicketCreated,
    #[serde(rename = "ticket.updated")]
    TicketUpdated,
    #[serde(rename = "message.created")]
    MessageCreated,
    #[serde(rename = "tags.changed")]
    TagsChanged,
}

// ---------------------------------------------------------------------------
// Objects (contract §5). Strict (`deny_unknown_fields` → no additional
// properties): a field the SQL adds must be described here too, or the
// response test fails.

/// An agent as others see it: `{"id","name","avatar_url"}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    pub id: i64,
    pub name: String,
    #[schema(required = true)]
    pub avatar_url: Option<String>,
}

/// The agent of a token (`GET /api/me`, login).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Me {
    pub id: i64,
    pub name: String,
    pub email: String,
    #[schema(required = true)]
    pub avatar_url: Option<String>,
    pub role: Role,
}

/// An entry of the agent directory (`GET /api/agents`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryAgent {
    pub id: i64,
    pub name: String,
    #[schema(required = true)]
    pub avatar_url: Option<String>,
    pub role: Role,
}

/// A ticket's customer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id: i64,
    #[schema(required = true)]
    pub name: Option<String>,
    pub email: String,
}

/// The contract's `ticket`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    pub id: i64,
    /// Gapless per ticket: the resume cursor (contract §2).
    pub version: i64,
    pub subject: String,
    pub status: TicketStatus,
    pub priority: Priority,
    pub channel: Channel,
    #[schema(required = true)]
    pub customer: Option<Customer>,
    #[schema(required = true)]
    pub assignee: Option<AgentRef>,
    /// Sorted by code point.
    pub tags: Vec<String>,
    /// Custom field values by key (`GET /api/fields` defines them).
    #[schema(additional_properties)]
    pub custom_fields: BTreeMap<String, Value>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A ticket in a list (`GET /api/tickets`, the `inbox` frame): the ticket
/// and who is on it now.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketSummary {
    pub id: i64,
    pub version: i64,
    pub subject: String,
    pub status: TicketStatus,
    pub priority: Priority,
    pub channel: Channel,
    #[schema(required = true)]
    pub customer: Option<Customer>,
    #[schema(required = true)]
    pub assignee: Option<AgentRef>,
    pub tags: Vec<String>,
    #[schema(additional_properties)]
    pub custom_fields: BTreeMap<String, Value>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Extension: the ticket's viewers, as in `presence` frames.
    pub viewers: Vec<Viewer>,
}

/// A message's author; for a customer without a name, `name` is its email.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Author {
    #[serde(rename = "type")]
    pub kind: AuthorType,
    pub id: i64,
    pub name: String,
}

/// The contract's `message`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub id: i64,
    pub ticket_id: i64,
    pub kind: MessageKind,
    pub author: Author,
    pub body: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Extension: the newest message the author had seen (replies).
    #[schema(required = true)]
    pub seen_message_id: Option<i64>,
    /// Extension: the client's idempotency key, if it sent one.
    #[schema(required = true)]
    pub client_id: Option<String>,
}

/// An event's actor (always an agent; services are agents too).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Actor {
    #[serde(rename = "type")]
    #[schema(inline)]
    pub kind: ActorType,
    pub id: i64,
    pub name: String,
}

/// Only agents act on tickets.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorType {
    Agent,
}

/// One change of a field: the value the writer saw and the one it set.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Change {
    #[schema(value_type = Value)]
    pub from: Value,
    #[schema(value_type = Value)]
    pub to: Value,
}

/// `data` of `ticket.created`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketCreatedData {
    pub ticket: Ticket,
}

/// `data` of `ticket.updated`: field → change (version 2: no copy of the ticket).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketUpdatedData {
    pub changes: BTreeMap<String, Change>,
}

/// `data` of `message.created`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageCreatedData {
    pub message: Message,
}

/// `data` of `tags.changed`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsChangedData {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub tags: Vec<String>,
}

/// An event's `data`, one shape per kind.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EventData {
    TicketCreated(TicketCreatedData),
    TicketUpdated(TicketUpdatedData),
    MessageCreated(MessageCreatedData),
    TagsChanged(TagsChangedData),
}

/// The contract's `event`: one version of a ticket's history.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub ticket_id: i64,
    pub version: i64,
    pub kind: EventKind,
    #[schema(required = true)]
    pub actor: Option<Actor>,
    #[schema(format = DateTime)]
    pub at: String,
    pub data: EventData,
}

/// Who is on a ticket now (contract §6 presence).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Viewer {
    pub agent: AgentRef,
    pub state: ViewerState,
    #[schema(format = DateTime)]
    pub since: String,
    /// The kind of the agent's unsent draft on the ticket, if any.
    #[schema(required = true)]
    pub draft: Option<DraftKind>,
}

/// Who has an unsent draft on a ticket (never its body).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftMarker {
    pub agent: AgentRef,
    pub kind: DraftKind,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// The caller's own draft, with its body.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    pub ticket_id: i64,
    pub kind: DraftKind,
    pub body: String,
    #[schema(required = true)]
    pub seen_message_id: Option<i64>,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A custom field definition.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    pub key: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    /// The choices of a `select` or `multiselect` field, else null.
    #[schema(required = true)]
    pub options: Option<Vec<String>>,
    pub position: i32,
}

// ---------------------------------------------------------------------------
// Answers.

/// `GET /api/tickets`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketList {
    /// Newest first.
    pub tickets: Vec<TicketSummary>,
    /// Extension: `before` for the next page, null on the last one.
    #[schema(required = true)]
    pub next_before: Option<i64>,
}

/// `GET /api/tickets/{id}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketDetail {
    pub ticket: Ticket,
    /// The newest 50 messages, oldest first.
    pub messages: Vec<Message>,
    /// `before` for the older page, null when there is none.
    #[schema(required = true)]
    pub messages_before: Option<i64>,
    pub presence: Vec<Viewer>,
    pub drafts: Vec<DraftMarker>,
}

/// `GET /api/tickets/{id}/messages`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessagePage {
    /// Oldest first.
    pub messages: Vec<Message>,
    #[schema(required = true)]
    pub messages_before: Option<i64>,
}

/// `GET /api/tickets/{id}/events`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventList {
    /// In version order. A page stops at `limit` events or 8 MiB of JSON,
    /// whichever comes first (one event always).
    pub events: Vec<Event>,
    /// Later events exist: ask again with `since` = the last version here
    /// (livedesk extension; a short page is not the end while this is true).
    pub more: bool,
}

/// `POST /api/tickets/{id}/tags`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsResult {
    pub tags: Vec<String>,
    pub version: i64,
}

/// `GET /api/tickets/{id}/drafts`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftList {
    pub drafts: Vec<DraftMarker>,
}

/// `GET /api/agents`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentDirectory {
    pub agents: Vec<DirectoryAgent>,
}

/// `GET /api/fields`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldList {
    pub fields: Vec<Field>,
}

/// `POST /api/login`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginResult {
    /// A new API token, for this login (the agent's other tokens go on
    /// working; `POST /api/logout` ends this one).
    pub token: String,
    pub agent: Me,
}

/// `GET /healthz`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub database: bool,
    pub listener: bool,
}

/// What a field held and what the writer expected (a `field_conflict`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldConflict {
    #[schema(value_type = Value)]
    pub expected: Value,
    #[schema(value_type = Value)]
    pub current: Value,
}

/// The contract's error: `{"error": {"code", "message", ...details}}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Code, sentence, and what the client needs to recover; other details
/// may be added (the object is open).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// snake_case, e.g. `invalid_field`, `unauthorized`, `not_found`,
    /// `duplicate_reply`, `already_assigned`, `stale_version`,
    /// `field_conflict`, `payload_too_large`, `rate_limited`.
    #[schema(pattern = "^[a-z][a-z0-9_]*$")]
    pub code: String,
    /// A sentence for a person.
    #[schema(min_length = 1)]
    pub message: String,
    /// `duplicate_reply`: the colleague's replies the author has not seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replies: Option<Vec<Message>>,
    /// `already_assigned`: the current assignee (null: nobody).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<AgentRef>,
    /// `already_assigned`: the current assignee's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee_id: Option<i64>,
    /// `field_conflict` (and `already_assigned` from PATCH): each
    /// conflicting field with its current value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldConflict>>,
    /// `stale_version`: the ticket's current version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// `rate_limited`: seconds to wait (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// `invalid_field`: which field was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
