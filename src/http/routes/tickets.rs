//! Tickets: list, create, read, compare-and-set changes, history.

use actix_web::http::StatusCode;
use actix_web::{get, patch, post, web, HttpRequest, HttpResponse};
use serde::{de, Deserialize, Deserializer};
use serde_json::value::RawValue;

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
    page_limit(filter.limit, TICKETS_PAGE_MAX)?;
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
/// The largest page of `GET /api/tickets` (docs/contract-notes.md).
const TICKETS_PAGE_MAX: i32 = 200;
/// The largest page of `GET /api/tickets/{id}/events` (docs/contract-notes.md).
const EVENTS_PAGE_MAX: i32 = 1000;

/// A page size asked for: absent (the default) or 1..=`max`; any other
/// value is 400 `invalid_field`, not cut to fit: an event page has no
/// next-page marker, and a cut page would look like the end of the log.
fn page_limit(limit: Option<i32>, max: i32) -> Result<(), ApiError> {
    match limit {
        Some(limit) if !(1..=max).contains(&limit) => Err(ApiError::bad_request(
            "invalid_field",
            format!("limit must be between 1 and {max}."),
        )),
        _ => Ok(()),
    }
}

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
    page_limit(query.limit, MESSAGES_PAGE_MAX)?;
    let limit = query.limit.unwrap_or(50);
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
#[serde(deny_unknown_fields, from = "wire::PatchBody")]
pub struct PatchBody {
    /// Field → `{"from", "to"}`: `subject`, `status`, `priority`,
    /// `assignee_id`, `custom_fields.<key>`.
    // Parsed only to check the body as before (an object of JSON values):
    // its numbers went through f64/i64/u64, so SQL gets `changes_json`.
    #[schema(value_type = std::collections::BTreeMap<String, crate::http::openapi::Change>)]
    pub changes: serde_json::Map<String, serde_json::Value>,
    // `changes` exactly as the client wrote it: a number custom field holding
    // 12345678901234567890123 or 0.12345678901234567891 must match its own
    // `from` and store its `to` digit for digit (compare-and-set in SQL).
    #[serde(skip)]
    changes_json: String,
}

impl PatchBody {
    /// `changes` as JSON text with every value as the client wrote it.
    pub fn changes_json(&self) -> &str {
        &self.changes_json
    }
}

/// What `PatchBody` is read as: the same fields (and name, which serde's
/// messages show), `changes` also kept as written.
mod wire {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct PatchBody {
        pub(super) changes: super::ExactChanges,
    }
}

impl From<wire::PatchBody> for PatchBody {
    fn from(wire: wire::PatchBody) -> Self {
        PatchBody {
            changes: wire.changes.parsed,
            changes_json: wire.changes.json,
        }
    }
}

/// The object of changes, parsed and as written.
struct ExactChanges {
    parsed: serde_json::Map<String, serde_json::Value>,
    json: String,
}

impl<'de> Deserialize<'de> for ExactChanges {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // As a map, like `serde_json::Map`: anything else is refused where
        // and as it was ("invalid type: sequence, expected a map at …").
        deserializer.deserialize_map(ExactChangesVisitor)
    }
}

struct ExactChangesVisitor;

impl<'de> de::Visitor<'de> for ExactChangesVisitor {
    type Value = ExactChanges;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<ExactChanges, A::Error> {
        let mut parsed = serde_json::Map::new();
        let mut json = String::from("{");
        while let Some(key) = map.next_key::<String>()? {
            // Each value as written, then parsed as before. What only a full
            // parse refuses (a number beyond f64, a lone surrogate, nesting
            // deeper than 128 inside the value) is still a 400, though
            // `invalid_field` where it was `invalid_json` (a Deserialize can
            // raise only data errors); the message drops the position inside
            // the value and the outer parser adds the body's.
            let raw = map.next_value::<Box<RawValue>>()?;
            let value = serde_json::from_str(raw.get()).map_err(|e| {
                let message = e.to_string();
                let position = format!(" at line {} column {}", e.line(), e.column());
                de::Error::custom(message.strip_suffix(&position).unwrap_or(&message))
            })?;
            if json.len() > 1 {
                json.push(',');
            }
            json.push_str(&serde_json::Value::String(key.clone()).to_string());
            json.push(':');
            json.push_str(raw.get());
            // A repeated key: the last wins, here and in PostgreSQL's jsonb.
            parsed.insert(key, value);
        }
        json.push('}');
        Ok(ExactChanges { parsed, json })
    }
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
    let ticket = state
        .writes
        .patch(*id, &agent, body.changes_json(), if_match)
        .await?;
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
    page_limit(query.limit, EVENTS_PAGE_MAX)?;
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
