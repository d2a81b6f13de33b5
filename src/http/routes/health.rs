//! Liveness and metrics, open without a token.

use std::time::{Duration, Instant};

use actix_web::{get, web, HttpResponse};
use prometheus::IntCounter;
use serde_json::json;

use crate::db::Database;
use crate::http::AppState;

/// How long one answer of the database serves every `/healthz` after it.
pub const PING_FRESH_FOR: Duration = Duration::from_millis(500);

/// The database's health as `/healthz` tells it: one ping answers every
/// asker for `PING_FRESH_FOR`, and askers that arrive during a ping wait for
/// it instead of sending their own. So a flood of health checks costs the
/// database at most two queries a second per process, and needs no rate
/// limit: a load balancer that shares its address with a flooder (a NAT)
/// still gets its answer, never a 429 that would take the node out.
pub struct SharedPing {
    db: Database,
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
    pings: IntCounter,
}

impl SharedPing {
    /// `pings` counts the queries actually sent (`livedesk_health_pings_total`).
    pub fn new(db: Database, pings: IntCounter) -> Self {
        SharedPing {
            db,
            last: tokio::sync::Mutex::new(None),
            pings,
        }
    }

    /// Whether the database answered its latest ping, asking again when
    /// that answer is older than `PING_FRESH_FOR`.
    pub async fn database_up(&self) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, up)) = *last {
            if at.elapsed() < PING_FRESH_FOR {
                return up;
            }
        }
        self.pings.inc();
        let up = self.db.ping().await;
        *last = Some((Instant::now(), up));
        up
    }
}

/// 200 when the database answers and the LISTEN connection is up, else 503.
/// The database's answer is shared by the checks of the same half second
/// (`SharedPing`), so the route is as cheap as a static file and is not
/// charged to the address's budget.
#[utoipa::path(
    operation_id = "healthz",
    tag = "service",
    responses(
        (status = 200, description = "The database and the LISTEN connection are up", body = crate::http::openapi::Health),
        (status = 503, description = "The database or the LISTEN connection is down", body = crate::http::openapi::Health),
    ),
)]
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let database = state.health.database_up().await;
    let listener = state.realtime.listener_up();
    let body = json!({"database": database, "listener": listener});
    if database && listener {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
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
