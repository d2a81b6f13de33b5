//! A span per HTTP request, carrying its id, so that every log line of a
//! request (the access line, a 5xx's cause, a slow query's warning) can be
//! found by the id the client got back in `x-request-id`.
//!
//! `tracing-actix-web`'s `TracingLogger` makes the id (a v4 UUID, never
//! taken from the client, so it cannot be forged into someone else's logs)
//! and keeps the span entered while the handler and the response body run.
//! Its default span records the target with its query string, the user
//! agent and more: WebSocket tokens travel in the query (`access_token`), so
//! [`RequestSpan`] records the id alone. Method, path (without the query)
//! and status are in the access line of `http::observe`, inside the span.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::HttpMessage;
use tracing::Span;
use tracing_actix_web::{RequestId, RootSpanBuilder, TracingLogger};

/// The response header that carries the request's id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The root span of a request: `request{request_id=…}` and nothing else, so
/// no secret (query string, `Authorization`, cookies) can reach a log
/// through it.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let id = request_id(request).map_or_else(|| "-".to_string(), |id| id.to_string());
        // At ERROR level the span exists whatever `RUST_LOG` lets through:
        // a span's level only decides whether it is created, and a warning
        // of a request logged under `RUST_LOG=warn` must still carry its id.
        tracing::error_span!("request", request_id = %id)
    }

    fn on_request_end<B: MessageBody>(
        _span: Span,
        _outcome: &Result<ServiceResponse<B>, actix_web::Error>,
    ) {
        // The status and the time are logged by `http::observe`.
    }
}

/// The middleware to wrap the app in (outermost, so every other middleware
/// and handler runs inside the span).
pub fn middleware() -> TracingLogger<RequestSpan> {
    TracingLogger::new()
}

/// The id `TracingLogger` gave this request, if it runs.
pub fn request_id(request: &ServiceRequest) -> Option<RequestId> {
    request.extensions().get::<RequestId>().copied()
}

/// The id as a header value (a UUID is always a valid one).
pub fn header_value(id: RequestId) -> Option<HeaderValue> {
    HeaderValue::from_str(&id.to_string()).ok()
}
