//! Liveness and metrics, open without a token.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::http::{errors::ApiError, AppState};

/// 200 when the database answers and the LISTEN connection is up, else 503.
/// Each answer asks the database, so it is an unauthenticated request like
/// any other (contract §5a): past the address's budget, 429 without a query.
#[utoipa::path(
    operation_id = "healthz",
    tag = "service",
    responses(
        (status = 200, description = "The database and the LISTEN connection are up", body = crate::http::openapi::Health),
        (status = 429, description = "Too many unauthenticated requests from this address", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "The database or the LISTEN connection is down", body = crate::http::openapi::Health),
    ),
)]
#[get("/healthz")]
pub async fn healthz(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state
        .auth
        .limit_unauthenticated(req.peer_addr().map(|a| a.ip()))?;
    let database = state.db.ping().await;
    let listener = state.realtime.listener_up();
    let body = json!({"database": database, "listener": listener});
    Ok(if database && listener {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    })
}

/// Prometheus text format.
#[utoipa::path(
    operation_id = "metrics",
    tag = "service",
    responses(
        (status = 200, description = "Prometheus text format (docs/metrics.md)", body = String, content_type = "text/plain"),
    ),
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let status = state.db.pool().status();
    state.metrics.pool_size.set(status.size as i64);
    state.metrics.pool_available.set(status.available as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
