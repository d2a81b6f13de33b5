//! Liveness and metrics, open without a token.

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::http::AppState;

/// 200 when the database answers and the LISTEN connection is up, else 503.
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let database = state.db.ping().await;
    let listener = state.realtime.listener_up();
    let body = json!({"database": database, "listener": listener});
    if database && listener {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Prometheus text format.
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let status = state.db.pool().status();
    state.metrics.pool_size.set(status.size as i64);
    state.metrics.pool_available.set(status.available as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
