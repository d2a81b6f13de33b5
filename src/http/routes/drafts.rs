//! `PUT/GET/DELETE /api/tickets/{id}/draft`: the caller's own draft, and
//! (extension) `GET /api/tickets/{id}/drafts`: who has one, without bodies.

use actix_web::http::StatusCode;
use actix_web::{delete, get, put, web, HttpResponse};
use serde_json::json;

use super::raw_json;
use super::tickets::check_message_size;
use crate::domain::drafts::{self, DraftInput};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 200 with the saved draft `{"ticket_id","kind","body","seen_message_id","updated_at"}`.
#[utoipa::path(
    operation_id = "put_draft",
    tag = "drafts",
    params(("id" = i64, Path, description = "The ticket id")),
    request_body = DraftInput,
    responses(
        (status = 200, description = "The saved draft", body = crate::http::openapi::Draft),
        (status = 400, description = "Bad JSON, an unknown or invalid field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[put("/api/tickets/{id}/draft")]
pub async fn put(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
    body: web::Json<DraftInput>,
) -> Result<HttpResponse, ApiError> {
    // A draft becomes a message: the same size limit, checked before SQL.
    check_message_size(&state, &body.body)?;
    let draft = drafts::put(&state.db, *id, &agent, &body).await?;
    Ok(raw_json(StatusCode::OK, draft))
}

/// 200 with the caller's draft; 404 `not_found` when there is none.
#[utoipa::path(
    operation_id = "get_draft",
    tag = "drafts",
    params(("id" = i64, Path, description = "The ticket id")),
    responses(
        (status = 200, description = "The caller's draft", body = crate::http::openapi::Draft),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket, or no draft of the caller on it", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets/{id}/draft")]
pub async fn get(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let draft = drafts::get(&state.db, *id, &agent).await?;
    Ok(raw_json(StatusCode::OK, draft))
}

/// 204 whether or not there was a draft (deleting is idempotent); 404 for a missing ticket.
#[utoipa::path(
    operation_id = "delete_draft",
    tag = "drafts",
    params(("id" = i64, Path, description = "The ticket id")),
    responses(
        (status = 204, description = "Deleted, or there was none"),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[delete("/api/tickets/{id}/draft")]
pub async fn delete(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    drafts::delete(&state.db, *id, agent.id, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Extension: `{"drafts": [draft…]}`, what GET /api/tickets/{id} carries, on
/// its own so a console can refresh it when viewers come and go.
#[utoipa::path(
    operation_id = "list_drafts",
    tag = "drafts",
    params(("id" = i64, Path, description = "The ticket id")),
    responses(
        (status = 200, description = "Who has an unsent draft on the ticket (no bodies)", body = crate::http::openapi::DraftList),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets/{id}/drafts")]
pub async fn list(
    state: web::Data<AppState>,
    _agent: Agent,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let list = drafts::of_ticket(&state.db, *id).await?;
    Ok(HttpResponse::Ok().json(json!({ "drafts": list })))
}
