//! Tags: a set edited only by add/remove deltas, so a stale page cannot remove
//! a tag it never saw.

use serde::Deserialize;

use super::{json_call, Agent, DomainError, RawJson};
use crate::db::Database;

/// The body of `POST /api/tickets/{id}/tags`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagDelta {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Apply a delta; `{"tags", "version"}` after it.
pub async fn change(
    db: &Database,
    ticket_id: i64,
    actor: &Agent,
    delta: &TagDelta,
) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_change_tags($1, $2, $3, $4)::text",
        &[&ticket_id, &actor.id, &delta.add, &delta.remove],
    )
    .await
}
