//! `POST /api/login`: spend a one-time login link (printed at first start
//! and by the demo) for a token. Unauthenticated, so it pays from the
//! per-address budget like a bad token does. `POST /api/logout` ends the
//! token it is sent with.

use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::domain::{agents, Agent};
use crate::http::{auth, ApiError, AppState};

/// The code of the link (`#login=<code>`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginLink {
    pub code: String,
}

/// `{"token", "agent"}`: a session of its own (the agent's other tokens go on).
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

/// End the token this request carries, on every process at once (its
/// WebSockets close with 4001): the console's "Log out". The agent's other
/// tokens (other devices, scripts) go on.
#[utoipa::path(
    operation_id = "logout",
    tag = "agents",
    responses(
        (status = 204, description = "The token no longer works"),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[post("/api/logout")]
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    agent: Agent,
) -> Result<HttpResponse, ApiError> {
    let token = auth::bearer_token(&req).ok_or_else(auth::invalid_token)?;
    agents::end_token(&state.db, token).await?;
    // This process forgets it now; the others when they hear the NOTIFY.
    state.auth.forget_agent(agent.id);
    Ok(HttpResponse::NoContent().finish())
}
