//! The HTTP boundary: state shared by handlers, the route table, request
//! logging and metrics, and the mapping of every error to the contract's shape.

pub mod agent_watch;
pub mod auth;
pub mod errors;
pub mod openapi;
pub mod request_span;
pub mod routes;
pub mod web_console;

use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};

use crate::config::Settings;
use crate::db::Database;
use crate::domain::write_batch::WriteBatcher;
use crate::metrics::Metrics;
use crate::realtime::Realtime;
pub use errors::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub db: Database,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub realtime: Realtime,
    /// The token cache and rate limits (shared by HTTP and the WebSocket handshake).
    pub auth: Arc<auth::Authenticator>,
    /// PATCH and message writes, committed in batches under load.
    pub writes: WriteBatcher,
    /// The database's health for `/healthz`, one ping per half second.
    pub health: routes::health::SharedPing,
}

impl AppState {
    /// The state of one process; the authenticator is built from the settings.
    pub fn new(
        db: Database,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        realtime: Realtime,
    ) -> Self {
        let auth = Arc::new(auth::Authenticator::new(&settings));
        let writes = WriteBatcher::start(db.clone(), metrics.clone());
        let health = routes::health::SharedPing::new(db.clone(), metrics.health_pings.clone());
        AppState {
            db,
            settings,
            metrics,
            realtime,
            auth,
            writes,
            health,
        }
    }
}

/// Register the routes, the extractor error handlers and the body limit.
pub fn configure(cfg: &mut web::ServiceConfig, settings: &Settings) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(settings.max_body_bytes)
            .content_type_required(false)
            .error_handler(errors::extractors::json),
    )
    .app_data(web::QueryConfig::default().error_handler(errors::extractors::query))
    .app_data(web::PathConfig::default().error_handler(errors::extractors::path))
    .app_data(web::PayloadConfig::default().limit(settings.max_body_bytes))
    .service(routes::health::healthz)
    .service(routes::health::metrics)
    .service(routes::me::me)
    .service(routes::login::redeem)
    .service(routes::login::logout)
    .service(routes::tickets::list)
    .service(routes::tickets::create)
    .service(routes::tickets::get)
    .service(routes::tickets::patch)
    .service(routes::tickets::events)
    .service(routes::tickets::messages)
    .service(routes::drafts::put)
    .service(routes::drafts::get)
    .service(routes::drafts::delete)
    .service(routes::drafts::list)
    .service(routes::agents::list)
    .service(routes::messages::post)
    .service(routes::tags::change)
    .service(routes::fields::list)
    .service(routes::fields::put)
    .service(openapi::document)
    .route("/ws", web::get().to(routes::ws::upgrade))
    .configure(web_console::configure)
    .default_service(web::to(not_found));
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "There is no {} {}.",
        req.method(),
        req.path()
    )))
}

/// Count and time every request, log it without its query string
/// (WebSocket tokens travel there and must never reach a log), and return
/// its id in `x-request-id` (the id its log lines carry, see `request_span`).
pub fn observe<S>(
    req: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse, actix_web::Error>> + 'static
where
    S: Service<ServiceRequest, Response = ServiceResponse, Error = actix_web::Error>,
    S::Future: 'static,
{
    let started = Instant::now();
    // A bounded label: arbitrary methods must not grow the metrics' memory.
    let method = metric_method(req.method()).to_string();
    let path = req.path().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "other".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let request_id = request_span::request_id(&req).and_then(request_span::header_value);
    let future = service.call(req);
    async move {
        let mut response = future.await.map_err(|error| -> actix_web::Error {
            // An error from a middleware (a timed-out request): its answer
            // is built here, so that it carries the id and headers too.
            let mut answer = error.error_response();
            protect(answer.headers_mut());
            if let Some(id) = request_id.clone() {
                answer
                    .headers_mut()
                    .insert(request_span::REQUEST_ID_HEADER, id);
            }
            actix_web::error::InternalError::from_response(error, answer).into()
        });
        if let Ok(response) = response.as_mut() {
            protect(response.headers_mut());
            if let Some(id) = request_id {
                response
                    .headers_mut()
                    .insert(request_span::REQUEST_ID_HEADER, id);
            }
            if let (Some(metrics), Some(error)) = (
                metrics.as_ref(),
                response
                    .response()
                    .error()
                    .and_then(|e| e.as_error::<ApiError>()),
            ) {
                count_refusal(metrics, error);
            }
        }
        let elapsed = started.elapsed();
        let status = match &response {
            Ok(r) => r.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        if let Some(metrics) = metrics {
            metrics
                .http_requests
                .with_label_values(&[&method, &route, &status.to_string()])
                .inc();
            metrics
                .http_duration
                .with_label_values(&[&method, &route])
                .observe(elapsed.as_secs_f64());
        }
        tracing::info!(%method, %path, status, micros = elapsed.as_micros() as u64, "request");
        response
    }
}

/// The method as a metrics label: the standard ones, else `OTHER`.
fn metric_method(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Headers every answer carries unless its handler chose otherwise: no
/// content sniffing, and API answers (tickets, tokens' agents) are never
/// stored by a browser or proxy cache.
fn protect(headers: &mut actix_web::http::header::HeaderMap) {
    use actix_web::http::header::{HeaderValue, CACHE_CONTROL, X_CONTENT_TYPE_OPTIONS};
    if !headers.contains_key(X_CONTENT_TYPE_OPTIONS) {
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    if !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

/// Conflicts and rate limits in `/metrics`: the collisions livedesk stops are
/// its reason to exist, so operators should see them.
fn count_refusal(metrics: &Metrics, error: &ApiError) {
    use crate::domain::{DomainError, Rejection};
    let rule = match error {
        ApiError::RateLimited { .. } => {
            metrics.rate_limited.inc();
            return;
        }
        ApiError::Domain(DomainError::Rejected { kind, .. }) => match kind {
            Rejection::DuplicateReply => "duplicate_reply",
            Rejection::AlreadyAssigned => "already_assigned",
            Rejection::StaleVersion => "stale_version",
            Rejection::FieldConflict => "field_conflict",
            _ => return,
        },
        _ => return,
    };
    metrics.conflicts.with_label_values(&[rule]).inc();
}
