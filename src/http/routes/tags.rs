//! `POST /api/tickets/{id}/tags`: add/remove deltas only.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpResponse};

use super::raw_json;
use crate::domain::tags::{self, TagDelta};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 200 `{"tags", "version"}`.
#[utoipa::path(
    operation_id = "change_tags",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id")),
    request_body = TagDelta,
    responses(
        (status = 200, description = "The tags after the delta and the ticket version", body = crate::http::openapi::TagsResult),
        (status = 400, description = "Bad JSON, an invalid tag, a tag both added and removed, or more than 100 tags", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[post("/api/tickets/{id}/tags")]
pub async fn change(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
    body: web::Json<TagDelta>,
) -> Result<HttpResponse, ApiError> {
    let result = tags::change(&state.db, *id, &agent, &body).await?;
    Ok(raw_json(StatusCode::OK, result))
}
