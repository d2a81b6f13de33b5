//! Tickets: list, create, read, compare-and-set changes, history.

use actix_web::http::StatusCode;
use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::raw_json;
use crate::domain::tickets::{self, NewTicket, TicketFilter};
use crate::domain::{Agent, DomainError, RawJson};
use crate::http::{ApiError, AppState};

/// `GET /api/tickets`: newest first, filtered, paged by `before`.
#[utoipa::path(
    operation_id = "list_tickets",
    tag = "tickets",
    params(TicketFilter),
    responses(
        (status = 200, description = "Tickets, newest first", body = crate::http::openapi::TicketList),
        (status = 400, description = "An invalid query parameter", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets")]
pub async fn list(
    state: web::Data<AppState>,
    agent: Agent,
    filter: web::Query<TicketFilter>,
) -> Result<HttpResponse, ApiError> {
    let page = tickets::list(&state.db, &agent, &filter).await?;
    Ok(raw_json(StatusCode::OK, page))
}

/// `POST /api/tickets`.
#[utoipa::path(
    operation_id = "create_ticket",
    tag = "tickets",
    request_body = NewTicket,
    responses(
        (status = 201, description = "The new ticket", body = crate::http::openapi::Ticket),
        (status = 400, description = "Bad JSON, an unknown or invalid field", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[post("/api/tickets")]
pub async fn create(
    state: web::Data<AppState>,
    agent: Agent,
    body: web::Json<NewTicket>,
) -> Result<HttpResponse, ApiError> {
    if let Some(text) = &body.body {
        check_message_size(&state, text)?;
    }
    let ticket = tickets::create(&state.db, &agent, &body).await?;
    Ok(raw_json(StatusCode::CREATED, ticket))
}

/// `GET /api/tickets/{id}`: the ticket, its newest messages, who is on it
/// now and who has an unsent draft on it (so nobody starts a second answer).
#[utoipa::path(
    operation_id = "get_ticket",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id")),
    responses(
        (status = 200, description = "The ticket, its newest 50 messages, its viewers and draft markers", body = crate::http::openapi::TicketDetail),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets/{id}")]
pub async fn get(
    state: web::Data<AppState>,
    _agent: Agent,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let detail = tickets::get(&state.db, *id).await?;
    Ok(raw_json(StatusCode::OK, detail))
}

/// Query of `GET /api/tickets/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    pub before: Option<i64>,
    pub limit: Option<i32>,
}

/// The largest page of `GET /api/tickets/{id}/messages` (contract §5).
const MESSAGES_PAGE_MAX: i32 = 200;

/// `GET /api/tickets/{id}/messages?before=&limit=`: older messages, oldest
/// first, with `messages_before` pointing at the next older page (or null).
#[utoipa::path(
    operation_id = "list_messages",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id"), MessagesQuery),
    responses(
        (status = 200, description = "An older page of messages, oldest first", body = crate::http::openapi::MessagePage),
        (status = 400, description = "An invalid query parameter", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets/{id}/messages")]
pub async fn messages(
    state: web::Data<AppState>,
    _agent: Agent,
    id: web::Path<i64>,
    query: web::Query<MessagesQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=MESSAGES_PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("limit must be between 1 and {MESSAGES_PAGE_MAX}."),
        ));
    }
    if query.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_request(
            "invalid_field",
            "before must be a message id (1 or more).",
        ));
    }
    // ld_list_messages (sql/) pages by id under the same rules as the snapshot.
    let client = state.db.client().await.map_err(DomainError::from)?;
    let statement = client
        .prepare_cached("SELECT ld_list_messages($1, $2, $3)::text")
        .await
        .map_err(DomainError::from)?;
    let row = client
        .query_one(&statement, &[&*id, &query.before, &limit])
        .await
        .map_err(DomainError::from)?;
    Ok(raw_json(StatusCode::OK, RawJson(row.get(0))))
}

/// The body of `PATCH /api/tickets/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    /// Field → `{"from", "to"}`: `subject`, `status`, `priority`,
    /// `assignee_id`, `custom_fields.<key>`.
    #[schema(value_type = std::collections::BTreeMap<String, crate::http::openapi::Change>)]
    pub changes: serde_json::Map<String, serde_json::Value>,
}

/// `PATCH /api/tickets/{id}`: per-field compare-and-set, all or nothing.
#[utoipa::path(
    operation_id = "patch_ticket",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id"), ("If-Match" = Option<String>, Header, description = "\"<version>\": demand that the whole ticket is unchanged")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "The ticket after the changes (all or nothing)", body = crate::http::openapi::Ticket),
        (status = 400, description = "Bad JSON, an unknown field, an invalid value or If-Match header", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "already_assigned, stale_version (If-Match) or field_conflict: nothing was applied", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "The body (or a message body, a custom text value) is too large", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[patch("/api/tickets/{id}")]
pub async fn patch(
    state: web::Data<AppState>,
    agent: Agent,
    id: web::Path<i64>,
    body: web::Json<PatchBody>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let if_match = if_match(&req)?;
    let changes = serde_json::Value::Object(body.into_inner().changes);
    let ticket = tickets::patch(&state.db, *id, &agent, &changes, if_match).await?;
    Ok(raw_json(StatusCode::OK, ticket))
}

/// Query of `GET /api/tickets/{id}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    #[serde(default)]
    pub since: i64,
    pub limit: Option<i32>,
}

/// `GET /api/tickets/{id}/events?since=&limit=`.
#[utoipa::path(
    operation_id = "list_events",
    tag = "tickets",
    params(("id" = i64, Path, description = "The ticket id"), EventsQuery),
    responses(
        (status = 200, description = "The events after since, in version order", body = crate::http::openapi::EventList),
        (status = 400, description = "An invalid query parameter", body = crate::http::openapi::ErrorBody),
        (status = 401, description = "No token, or an unknown, replaced, expired or disabled one", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "No such ticket", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "Too many requests from this token (or bad ones from this address)", body = crate::http::openapi::ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The database is unavailable; try again shortly", body = crate::http::openapi::ErrorBody),
    ),
    security(("bearer" = [])),
)]
#[get("/api/tickets/{id}/events")]
pub async fn events(
    state: web::Data<AppState>,
    _agent: Agent,
    id: web::Path<i64>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let events = tickets::events(&state.db, *id, query.since, query.limit).await?;
    Ok(raw_json(StatusCode::OK, events))
}

/// `If-Match: "<version>"` (quotes optional; `W/` weak prefix refused).
fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    let Some(value) = req.headers().get("if-match") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_header",
                "If-Match must be the ticket version in quotes, e.g. \"7\".",
            )
        })
}

/// Message bodies have their own limit (contract §6), below the body limit.
pub(crate) fn check_message_size(state: &AppState, body: &str) -> Result<(), ApiError> {
    let limit = state.settings.max_message_bytes;
    if body.len() > limit {
        return Err(ApiError::TooLarge(format!(
            "The message body is {} bytes; the limit is {limit} bytes.",
            body.len()
        )));
    }
    Ok(())
}
