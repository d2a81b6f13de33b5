//! `POST /api/tickets/{id}/messages`: replies, notes and (service) customer messages.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpResponse};

use super::raw_json;
use super::tickets::check_message_size;
use crate::domain::drafts;
use crate::domain::messages::{self, NewMessage};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 201 with the message; 200 with the original on a retried `client_id`;
/// 409 `duplicate_reply` with the colleague's unseen replies.
#[post("/api/tickets/{id}/messages")]
pub async fn post(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
    body: web::Json<NewMessage>,
) -> Result<HttpResponse, ApiError> {
    check_message_size(&state, &body.body)?;
    if body.kind == "customer" && !agent.is_service() {
        return Err(ApiError::Forbidden(
            "Only service tokens may post customer messages.",
        ));
    }
    let posted = messages::post(&state.db, *id, &agent, &body).await?;
    if posted.created && body.kind != "customer" {
        // Sent: the author's draft of that kind is done with. The message is
        // stored already, so a failure here is logged, not reported.
        if let Err(e) = drafts::delete(&state.db, *id, agent.id, Some(&body.kind)).await {
            tracing::warn!(error = %e, ticket_id = *id, "could not delete the sent draft");
        }
    }
    let status = if posted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(raw_json(status, posted.message))
}
