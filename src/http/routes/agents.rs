//! `GET /api/agents`: who a ticket can be assigned to (contract §5).

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpResponse};

use super::raw_json;
use crate::domain::drafts;
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 200 `{"agents": [{"id","name","avatar_url","role"}]}`, enabled agents by name.
#[get("/api/agents")]
pub async fn list(state: web::Data<AppState>, _agent: Agent) -> Result<HttpResponse, ApiError> {
    let agents = drafts::agent_directory(&state.db).await?;
    Ok(raw_json(StatusCode::OK, agents))
}
