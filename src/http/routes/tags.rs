//! `POST /api/tickets/{id}/tags`: add/remove deltas only.

use actix_web::http::StatusCode;
use actix_web::{post, web, HttpResponse};

use super::raw_json;
use crate::domain::tags::{self, TagDelta};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// 200 `{"tags", "version"}`.
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
