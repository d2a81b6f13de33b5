//! Custom field definitions: everyone reads, admins write.

use actix_web::http::StatusCode;
use actix_web::{get, put, web, HttpResponse};

use super::raw_json;
use crate::domain::fields::{self, FieldDefinition};
use crate::domain::Agent;
use crate::http::{ApiError, AppState};

/// `GET /api/fields`.
#[get("/api/fields")]
pub async fn list(state: web::Data<AppState>, _agent: Agent) -> Result<HttpResponse, ApiError> {
    Ok(raw_json(StatusCode::OK, fields::list(&state.db).await?))
}

/// `PUT /api/fields/{key}` (admin).
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
