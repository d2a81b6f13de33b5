//! The WebSocket handshake: the Origin allow-list (against cross-site
//! WebSocket hijacking), the token (header or `access_token` query, never
//! logged), the connection cap; then the socket goes to a session task.
//!
//! The upgrade is an HTTP route like the others (it answers with the
//! contract's error shape and is described in the OpenAPI document), so it
//! lives here; `realtime` only offers what it needs — a connection slot
//! (`Realtime::open_connection`) and a `Session` to run — and knows nothing
//! of HTTP.

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use tracing::Instrument;

use crate::http::auth::{authenticate, bearer_token};
use crate::http::{ApiError, AppState};
use crate::realtime::session::Session;
use crate::realtime::SlotRefused;

/// `GET /ws`: check the Origin and the token, then hand the socket to a session task.
#[utoipa::path(
    get,
    path = "/ws",
    operation_id = "websocket",
    tag = "service",
    description = "The WebSocket upgrade: live events, presence and drafts; the frames are in docs/protocol.md.",
    params(
        ("access_token" = Option<String>, Query, description = "The token, for browsers (they cannot set Authorization on a WebSocket)"),
        ("Origin" = Option<String>, Header, description = "When sent (browsers), it must be in LIVEDESK_ALLOWED_ORIGINS (default: the server's own)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; the first frame is hello"),
        (status = 400, description = "Not a WebSocket upgrade request", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "The Origin is not allowed", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests, or too many WebSocket connections of this agent", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "This process has no room for another connection, or the database is unavailable", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = []), ()),
)]
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let query_token = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("access_token").cloned());
    let token = bearer_token(&req).map(str::to_owned).or(query_token);
    let peer = req.peer_addr().map(|a| a.ip());
    let agent = authenticate(&state, token.as_deref(), peer).await?;
    // The connection remembers its token's digest (as stored), so that it can
    // be closed (4001) when that token stops working.
    let digest = crate::domain::agents::token_digest(token.as_deref().unwrap_or_default());
    let slot =
        state
            .realtime
            .open_connection(agent.id, digest)
            .map_err(|refused| match refused {
                SlotRefused::Process => {
                    ApiError::Unavailable("Too many WebSocket connections; retry later.".into())
                }
                SlotRefused::Agent => {
                    ApiError::TooManyConnections(state.settings.max_connections_per_agent)
                }
            })?;
    let (response, ws, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("invalid_upgrade", e.to_string()))?;
    let max = state.settings.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let session = Session::new(slot, agent, state.realtime.clone());
    // The session's log lines carry the id of the request that opened it.
    let session = session.run(ws, stream).instrument(tracing::Span::current());
    actix_web::rt::spawn(state.realtime.sessions.track_future(session));
    Ok(response)
}

/// Browsers always send `Origin` on WebSockets: it must be allowed. Clients
/// that send none (services, tools) are not browsers and cannot be hijacked.
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get("origin") else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    // By default "our own origin" is also the one the browser addressed
    // (behind a proxy or a load balancer the bind address is not what the
    // browser sees): same scheme-less host as the Host header.
    let same_host = state.settings.allowed_origins.is_empty()
        && req
            .headers()
            .get("host")
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin == format!("http://{host}") || origin == format!("https://{host}")
            });
    if same_host || allowed_origins(state).iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "This Origin may not open WebSockets here (LIVEDESK_ALLOWED_ORIGINS).",
        ))
    }
}

/// The configured allow-list, or the server's own origins by default.
pub fn allowed_origins(state: &AppState) -> Vec<String> {
    let settings = &state.settings;
    if !settings.allowed_origins.is_empty() {
        return settings
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .collect();
    }
    let bind = settings.bind;
    let port = bind.port();
    let mut own = vec![format!("http://{bind}")];
    if bind.ip().is_loopback() || bind.ip().is_unspecified() {
        own.push(format!("http://localhost:{port}"));
        own.push(format!("http://127.0.0.1:{port}"));
        own.push(format!("http://[::1]:{port}"));
    }
    own
}
