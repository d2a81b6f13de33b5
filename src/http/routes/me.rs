//! `GET /api/me`: who the token belongs to.

use actix_web::{get, HttpResponse};

use crate::domain::Agent;

/// The agent of the token.
#[utoipa::path(
    operation_id = "me",
    tag = "agents",
    responses(
        (status = 200, description = "The agent of the token", body = crate::http::openapi::Me),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/me")]
pub async fn me(agent: Agent) -> HttpResponse {
    HttpResponse::Ok().json(agent)
}
