//! `POST /api/login`: spend a one-time login link (printed at first start
//! and by the demo) for a token. Unauthenticated, so it pays from the
//! per-address budget like a bad token does.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::domain::agents;
use crate::http::{ApiError, AppState};

/// The code of the link (`#login=<code>`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginLink {
    pub code: String,
}

/// `{"token", "agent"}`; the agent's previous token stops working.
#[utoipa::path(
    operation_id = "login",
    tag = "agents",
    request_body = LoginLink,
    responses(
        (status = 200, description = "A new token for the link's agent", body = crate::http::openapi::LoginResult),
        (status = 400, description = "Bad JSON, an unknown or invalid field", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "The link was already used, has expired or does not exist", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many unauthenticated requests from this address", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
)]
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
        return Err(ApiError::bad_request(
            "invalid_field",
            "That is not a login code.",
        ));
    }
    let (agent, token) = agents::redeem_login_link(&state.db, &body.code).await?;
    Ok(HttpResponse::Ok().json(json!({"token": token.0, "agent": agent})))
}
