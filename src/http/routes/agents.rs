//! `GET /api/agents`: who a ticket can be assigned to (contract §5).

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpResponse};

use super::raw_json;
use crate::domain::drafts;
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 200 `{"agents": [{"id","name","avatar_url","role"}]}`, enabled agents by name.
#[utoipa::path(
    operation_id = "list_agents",
    tag = "agents",
    responses(
        (status = 200, description = "Enabled agents, by name", body = crate::http::openapi::AgentDirectory),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/agents")]
pub async fn list(state: web::Data<AppState>, _agent: Agent) -> Result<HttpResponse, ApiError> {
    let agents = drafts::agent_directory(&state.db).await?;
    Ok(raw_json(StatusCode::OK, agents))
}
