//! `POST /api/tickets/{id}/messages`: replies, notes and (service) customer messages.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpResponse};

use super::raw_json;
use super::tickets::check_message_size;
use crate::domain::messages::NewMessage;
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 201 with the message; 200 with the original on a retried `client_id`;
/// 409 `duplicate_reply` with the colleague's unseen replies.
#[utoipa::path(
    operation_id = "post_message",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id")),
    request_body = NewMessage,
    responses(
        (status = 201, description = "The new message", body = crate::http::openapi::Message),
        (status = 200, description = "The original message of a retried client_id", body = crate::http::openapi::Message),
        (status = 400, description = "Bad JSON, an unknown or invalid field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "Only service tokens post customer messages", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "duplicate_reply: a colleague replied after seen_message_id; `replies` carries the unseen replies", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
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
    // Sent, it also deletes the author's draft of that kind.
    let posted = state
        .writes
        .post_message(*id, &agent, body.into_inner())
        .await?;
    let status = if posted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(raw_json(status, posted.message))
}
