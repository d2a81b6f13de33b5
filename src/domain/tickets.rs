//! Tickets: create, read, list, compare-and-set changes, the event history.

use serde::Deserialize;

use super::{json_call, Agent, DomainError, RawJson};
use crate::db::Database;

/// A customer named by a writer; matched on email.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerRef {
    pub email: String,
    pub name: Option<String>,
}

/// The body of `POST /api/tickets`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    /// A chat may omit it: the first line of `body` (≤ 120 characters).
    pub subject: Option<String>,
    /// `email`, `chat`, `phone`, `web` or `api`.
    #[schema(value_type = Option<super::vocabulary::Channel>)]
    pub channel: Option<String>,
    pub customer: Option<CustomerRef>,
    /// The first message (a customer's when a customer is named).
    pub body: Option<String>,
}

/// Filters of `GET /api/tickets` (values validated by SQL).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TicketFilter {
    /// `new`, `open`, `pending`, `resolved` or `closed`.
    #[param(value_type = Option<super::vocabulary::TicketStatus>)]
    pub status: Option<String>,
    /// `me`, `none` or an agent id.
    pub assignee: Option<String>,
    pub tag: Option<String>,
    pub limit: Option<i32>,
    /// A ticket id: the page after it (`next_before` of the previous page).
    pub before: Option<i64>,
}

/// Create a ticket (and its first message when a body is given).
pub async fn create(
    db: &Database,
    actor: &Agent,
    input: &NewTicket,
) -> Result<RawJson, DomainError> {
    let (email, name) = match &input.customer {
        Some(c) => (Some(c.email.as_str()), c.name.as_deref()),
        None => (None, None),
    };
    json_call(
        db,
        "SELECT ld_create_ticket($1, $2, $3, $4, $5, $6)::text",
        &[
            &actor.id,
            &input.subject,
            &input.channel,
            &email,
            &name,
            &input.body,
        ],
    )
    .await
}

/// `{"ticket", "messages", "presence", "drafts"}` of one ticket, from one
/// snapshot (contract §5).
pub async fn get(db: &Database, id: i64) -> Result<RawJson, DomainError> {
    json_call(db, "SELECT ld_ticket_detail($1)", &[&id]).await
}

/// Apply per-field compare-and-set changes, all or nothing. `changes` is
/// JSON text that PostgreSQL parses itself, so numbers reach `from`/`to`
/// digit for digit (a `serde_json::Value` would hold them as f64/i64/u64).
pub async fn patch(
    db: &Database,
    id: i64,
    actor: &Agent,
    changes: &str,
    if_match: Option<i64>,
) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_patch_ticket($1, $2, $3::text::jsonb, $4)::text",
        &[&id, &actor.id, &changes, &if_match],
    )
    .await
}

/// A page of tickets, newest first, each with its current viewers.
pub async fn list(
    db: &Database,
    actor: &Agent,
    filter: &TicketFilter,
) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_list_ticket_summaries($1, $2, $3, $4, $5, $6)::text",
        &[
            &actor.id,
            &filter.status,
            &filter.assignee,
            &filter.tag,
            &filter.limit,
            &filter.before,
        ],
    )
    .await
}

/// The ticket's events after version `since`, in order.
pub async fn events(
    db: &Database,
    id: i64,
    since: i64,
    limit: Option<i32>,
) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_list_events($1, $2, $3)::text",
        &[&id, &since, &limit.unwrap_or(100)],
    )
    .await
}
