//! The HTTP error type: every failure becomes the contract's shape
//! `{"error": {"code", "message", ...details}}`, mapped here and nowhere else.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value};

use crate::domain::{DomainError, Rejection};

/// Why a request failed, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// The agent holds as many WebSocket connections as it may (the value).
    #[error("too many connections")]
    TooManyConnections(usize),
    /// Too many requests from this token or address: try again after `retry_after`.
    #[error("too many requests")]
    RateLimited { retry_after: std::time::Duration },
}

impl ApiError {
    /// A 400 with a code and a sentence.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, String, Map<String, Value>) {
        match self {
            ApiError::Domain(DomainError::Rejected {
                kind,
                message,
                detail,
            }) => {
                let status = match kind {
                    Rejection::DuplicateReply
                    | Rejection::AlreadyAssigned
                    | Rejection::StaleVersion
                    | Rejection::FieldConflict
                    | Rejection::AlreadyExists => StatusCode::CONFLICT,
                    Rejection::NotFound => StatusCode::NOT_FOUND,
                    Rejection::InvalidCustomField | Rejection::Invalid => StatusCode::BAD_REQUEST,
                };
                (status, kind.code(), message.clone(), detail.clone())
            }
            ApiError::Domain(DomainError::Db(e)) if e.timed_out() => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The database did not finish this in time, or it was cancelled (most often another writer holds the ticket); nothing was changed. Try again shortly.".into(),
                Map::new(),
            ),
            ApiError::Domain(DomainError::Db(e)) if e.is_unavailable() => unavailable(),
            ApiError::Domain(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "Something went wrong on our side; it has been logged.".into(),
                Map::new(),
            ),
            ApiError::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code, message.clone(), Map::new())
            }
            ApiError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                (*message).into(),
                Map::new(),
            ),
            ApiError::Forbidden(message) => (
                StatusCode::FORBIDDEN,
                "forbidden",
                (*message).into(),
                Map::new(),
            ),
            ApiError::NotFound(message) => (
                StatusCode::NOT_FOUND,
                "not_found",
                message.clone(),
                Map::new(),
            ),
            ApiError::TooLarge(message) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                message.clone(),
                Map::new(),
            ),
            ApiError::Unavailable(message) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                message.clone(),
                Map::new(),
            ),
            ApiError::TooManyConnections(max) => {
                let mut detail = Map::new();
                detail.insert("limit".into(), json!(max));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_connections",
                    format!(
                        "This agent already has {max} WebSocket connections open: close one (another tab or device) first."
                    ),
                    detail,
                )
            }
            ApiError::RateLimited { retry_after } => {
                let seconds = retry_after_seconds(*retry_after);
                let mut detail = Map::new();
                detail.insert("retry_after".into(), json!(seconds));
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("Too many requests: try again in {seconds} s."),
                    detail,
                )
            }
        }
    }
}

fn unavailable() -> (StatusCode, &'static str, String, Map<String, Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "The database is unavailable; try again shortly.".into(),
        Map::new(),
    )
}

/// The contract's error body.
pub fn error_body(code: &str, message: &str, detail: Map<String, Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), json!(code));
    error.insert("message".into(), json!(message));
    for (key, value) in detail {
        if key != "code" && key != "message" {
            error.insert(key, value);
        }
    }
    json!({ "error": error })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code, message, detail) = self.parts();
        if status.is_server_error() {
            tracing::error!(error = ?self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if let ApiError::RateLimited { retry_after } = self {
            response.insert_header((
                actix_web::http::header::RETRY_AFTER,
                retry_after_seconds(*retry_after).to_string(),
            ));
        }
        response.json(error_body(code, &message, detail))
    }
}

/// Whole seconds to wait, at least 1 (Retry-After has no fractions).
pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

/// Extractor errors (bad JSON, oversize bodies, bad query strings) in the contract's shape.
pub mod extractors {
    use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
    use actix_web::{Error, HttpRequest};

    use super::ApiError;

    /// For `web::JsonConfig`.
    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> Error {
        match err {
            JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::TooLarge(format!(
                "The body is {length} bytes; the limit is {limit} bytes."
            )),
            JsonPayloadError::Overflow { limit } => ApiError::TooLarge(format!(
                "The body is larger than the limit of {limit} bytes."
            )),
            JsonPayloadError::ContentType => ApiError::bad_request(
                "invalid_content_type",
                "The body must be JSON (Content-Type: application/json).",
            ),
            JsonPayloadError::Deserialize(e) if e.is_data() => {
                ApiError::bad_request("invalid_field", format!("Invalid body: {e}."))
            }
            JsonPayloadError::Deserialize(e) => {
                ApiError::bad_request("invalid_json", format!("The body is not valid JSON: {e}."))
            }
            other => {
                ApiError::bad_request("invalid_json", format!("Cannot read the body: {other}."))
            }
        }
        .into()
    }

    /// For `web::QueryConfig`.
    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> Error {
        ApiError::bad_request("invalid_query", format!("Invalid query string: {err}.")).into()
    }

    /// For `web::PathConfig`: a path that names no resource.
    pub fn path(_err: PathError, req: &HttpRequest) -> Error {
        ApiError::NotFound(format!("Nothing is found at {}.", req.path())).into()
    }
}
