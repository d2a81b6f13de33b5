//! Custom field definitions: everyone reads, admins write.

use actix_web::http::StatusCode;
use actix_web::{get, put, web, HttpResponse};

use super::raw_json;
use crate::domain::fields::{self, FieldDefinition};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// `GET /api/fields`.
#[utoipa::path(
    operation_id = "list_fields",
    tag = "fields",
    responses(
        (status = 200, description = "Every definition, by position", body = crate::http::openapi::FieldList),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/fields")]
pub async fn list(state: web::Data<AppState>, _agent: Agent) -> Result<HttpResponse, ApiError> {
    Ok(raw_json(StatusCode::OK, fields::list(&state.db).await?))
}

/// `PUT /api/fields/{key}` (admin).
#[utoipa::path(
    operation_id = "put_field",
    tag = "fields",
    params(("key" = String, Path, description = "The field key, ^[a-z][a-z0-9_]{0,62}$")),
    request_body = FieldDefinition,
    responses(
        (status = 200, description = "The definition as stored", body = crate::http::openapi::Field),
        (status = 400, description = "Bad JSON, an unknown or invalid field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "Only admins manage field definitions", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[put("/api/fields/{key}")]
pub async fn put(
    state: web::Data<AppState>,
    agent: Agent,
    key: web::Path<String>,
    body: web::Json<FieldDefinition>,
) -> Result<HttpResponse, ApiError> {
    if !agent.is_admin() {
        return Err(ApiError::Forbidden("Only admins manage field definitions."));
    }
    Ok(raw_json(
        StatusCode::OK,
        fields::put(&state.db, &key, &body).await?,
    ))
}
