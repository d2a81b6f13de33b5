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
#[get("/api/tickets/{id}/drafts")]
pub async fn list(
    state: web::Data<AppState>,
    _agent: Agent,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let list = drafts::of_ticket(&state.db, *id).await?;
    Ok(HttpResponse::Ok().json(json!({ "drafts": list })))
}
