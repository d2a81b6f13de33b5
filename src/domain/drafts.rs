//! Drafts: an agent's unsent reply or note on a ticket, kept in the database
//! so it survives reloads and follows the agent to another device, and so
//! colleagues see who is already answering (contract §5, §6 `draft` marker).
//! Also the agent directory used to assign a ticket to a colleague.

use serde::Deserialize;

use super::{json_call, Agent, DomainError, RawJson};
use crate::db::Database;

/// The body of `PUT /api/tickets/{id}/draft`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DraftInput {
    /// `reply` or `note`.
    #[schema(value_type = super::vocabulary::DraftKind)]
    pub kind: String,
    pub body: String,
    #[serde(default)]
    pub seen_message_id: Option<i64>,
}

/// Save (create or replace) the agent's draft; the rules are SQL's.
pub async fn put(
    db: &Database,
    ticket_id: i64,
    agent: &Agent,
    input: &DraftInput,
) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_draft_put($1, $2, $3, $4, $5)::text",
        &[
            &ticket_id,
            &agent.id,
            &input.kind,
            &input.body,
            &input.seen_message_id,
        ],
    )
    .await
}

/// The agent's own draft (with its body), or `NotFound`.
pub async fn get(db: &Database, ticket_id: i64, agent: &Agent) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_draft_get($1, $2)::text",
        &[&ticket_id, &agent.id],
    )
    .await
}

/// Drop the agent's draft (only one of `kind` when given). True when one was deleted.
pub async fn delete(
    db: &Database,
    ticket_id: i64,
    agent_id: i64,
    kind: Option<&str>,
) -> Result<bool, DomainError> {
    let client = db.client().await?;
    let statement = client
        .prepare_cached("SELECT ld_draft_delete($1, $2, $3)")
        .await?;
    let row = client
        .query_one(&statement, &[&ticket_id, &agent_id, &kind])
        .await?;
    Ok(row.get(0))
}

/// Who has a draft on the ticket (no bodies), newest first.
pub async fn of_ticket(db: &Database, ticket_id: i64) -> Result<serde_json::Value, DomainError> {
    let client = db.client().await?;
    let statement = client.prepare_cached("SELECT ld_ticket_drafts($1)").await?;
    let row = client.query_one(&statement, &[&ticket_id]).await?;
    Ok(row.get(0))
}

/// `{"agents": [{"id","name","avatar_url","role"}]}`: enabled agents, by name.
pub async fn agent_directory(db: &Database) -> Result<RawJson, DomainError> {
    json_call(db, "SELECT ld_agents_directory()::text", &[]).await
}
