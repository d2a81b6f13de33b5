//! `POST /api/login`: spend a one-time login link (printed at first start
//! and by the demo) for a token. Unauthenticated, so it pays from the
//! per-address budget like a bad token does.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::domain::agents;
use crate::http::{ApiError, AppState};

/// The code of the link (`#login=<code>`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginLink {
    pub code: String,
}

/// `{"token", "agent"}`; the agent's previous token stops working.
#[post("/api/login")]
pub async fn redeem(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginLink>,
) -> Result<HttpResponse, ApiError> {
    state
        .auth
        .limit_unauthenticated(req.peer_addr().map(|a| a.ip()))?;
    if body.code.len() > 200 {
        return Err(ApiError::bad_request("invalid_field", "That is not a login code."));
    }
    let (agent, token) = agents::redeem_login_link(&state.db, &body.code).await?;
    Ok(HttpResponse::Ok().json(json!({"token": token.0, "agent": agent})))
}
