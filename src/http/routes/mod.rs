//! Handlers, one module per resource.

pub mod agents;
pub mod drafts;
pub mod fields;
pub mod health;
pub mod login;
pub mod me;
pub mod messages;
pub mod tags;
pub mod tickets;
pub mod ws;

use actix_web::HttpResponse;

use crate::domain::RawJson;

/// A JSON answer produced by PostgreSQL, sent as is.
pub(crate) fn raw_json(status: actix_web::http::StatusCode, json: RawJson) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(json.0)
}
