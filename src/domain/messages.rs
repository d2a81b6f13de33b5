//! Messages on a ticket: customer messages, agent replies and internal notes.

use serde::Deserialize;

use super::tickets::CustomerRef;
use super::{Agent, DomainError, RawJson};
use crate::db::Database;

/// The body of `POST /api/tickets/{id}/messages`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// `reply`, `note`, or (service tokens) `customer`.
    #[schema(value_type = super::vocabulary::MessageKind)]
    pub kind: String,
    pub body: String,
    /// Replies: the newest message the author saw (0: none).
    pub seen_message_id: Option<i64>,
    /// An idempotency key: a retry answers 200 with the first message.
    pub client_id: Option<String>,
    pub customer: Option<CustomerRef>,
}

/// The outcome of a post: created now, or the original of a retried `client_id`.
pub struct Posted {
    pub created: bool,
    pub message: RawJson,
}

/// Add a message; the duplicate-reply rule and idempotency are SQL's.
pub async fn post(
    db: &Database,
    ticket_id: i64,
    actor: &Agent,
    input: &NewMessage,
) -> Result<Posted, DomainError> {
    let (email, name) = match &input.customer {
        Some(c) => (Some(c.email.as_str()), c.name.as_deref()),
        None => (None, None),
    };
    let client = db.client().await?;
    let statement = client
        .prepare_cached(
            "SELECT created, message::text FROM ld_post_message($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    let row = client
        .query_one(
            &statement,
            &[
                &ticket_id,
                &actor.id,
                &input.kind,
                &input.body,
                &input.seen_message_id,
                &input.client_id,
                &email,
                &name,
            ],
        )
        .await?;
    Ok(Posted {
        created: row.get(0),
        message: RawJson(row.get(1)),
    })
}
