//! `GET /api/me`: who the token belongs to.

use actix_web::{get, HttpResponse};

use crate::domain::Agent;

/// The agent of the token.
#[get("/api/me")]
pub async fn me(agent: Agent) -> HttpResponse {
    HttpResponse::Ok().json(agent)
}
