//! Domain errors, and the one mapping from PostgreSQL's SQLSTATEs to them.
//!
//! Every rule lives in SQL; a refusal arrives here as an error with a
//! SQLSTATE and (for livedesk's own codes) a JSON DETAIL carrying what the
//! client needs. HTTP and WebSocket layers map these variants once each.

use serde_json::{Map, Value};

use crate::db::DbError;

/// Why the domain refused a request (the contract's conflict rules and input checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// LD001: a colleague replied after the message the author saw.
    DuplicateReply,
    /// LD002: the expected assignee is no longer the current one.
    AlreadyAssigned,
    /// LD003: the ticket moved on since the version the writer read.
    StaleVersion,
    /// LD004: a field no longer holds the value the writer saw.
    FieldConflict,
    /// LD005: an unknown custom field or a value of the wrong type.
    InvalidCustomField,
    /// LD400 and constraint violations: the input is invalid.
    Invalid,
    /// LD404: the ticket (or agent, ...) does not exist.
    NotFound,
    /// A unique value already taken (e.g. an agent's email).
    AlreadyExists,
}

impl Rejection {
    /// The contract's snake_case error code.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::DuplicateReply => "duplicate_reply",
            Rejection::AlreadyAssigned => "already_assigned",
            Rejection::StaleVersion => "stale_version",
            Rejection::FieldConflict => "field_conflict",
            Rejection::InvalidCustomField => "invalid_custom_field",
            Rejection::Invalid => "invalid_field",
            Rejection::NotFound => "not_found",
            Rejection::AlreadyExists => "already_exists",
        }
    }
}

/// A failed domain operation.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// The request broke a rule; nothing was changed.
    #[error("{message}")]
    Rejected {
        kind: Rejection,
        message: String,
        detail: Map<String, Value>,
    },
    /// The database could not be used.
    #[error(transparent)]
    Db(DbError),
    /// Something that should not happen (a bug or a schema mismatch).
    #[error("unexpected: {0}")]
    Unexpected(String),
    /// An answer of the database that does not have the shape this code
    /// expects (a bug or a schema mismatch): what it was, and the JSON error
    /// kept as the source, so the log shows both.
    #[error("unexpected: {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DomainError {
    /// An answer (`what`: a row, a function's result) that did not decode.
    pub fn decode(what: impl Into<String>, source: serde_json::Error) -> Self {
        DomainError::Decode {
            what: what.into(),
            source,
        }
    }

    /// A rejection built on the Rust side (shape errors the SQL never sees).
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut detail = Map::new();
        detail.insert("field".into(), Value::String(field.into()));
        DomainError::Rejected {
            kind: Rejection::Invalid,
            message: message.into(),
            detail,
        }
    }
}

impl From<DbError> for DomainError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Query(e) => DomainError::from(e),
            other => DomainError::Db(other),
        }
    }
}

impl From<tokio_postgres::Error> for DomainError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            return DomainError::Db(DbError::Query(e));
        };
        match DomainError::refused(db.code().code(), db.message(), db.detail()) {
            Some(refusal) => refusal,
            None => DomainError::Db(DbError::Query(e)),
        }
    }
}

impl DomainError {
    /// The refusal a SQLSTATE stands for, from the parts of a PostgreSQL
    /// error (also as a write batch reports them, `domain::write_batch`);
    /// `None` for a code that is not a refusal (the caller keeps its error).
    pub fn refused(code: &str, message: &str, detail: Option<&str>) -> Option<Self> {
        let kind = match code {
            "LD001" => Rejection::DuplicateReply,
            "LD002" => Rejection::AlreadyAssigned,
            "LD003" => Rejection::StaleVersion,
            "LD004" => Rejection::FieldConflict,
            "LD005" => Rejection::InvalidCustomField,
            "LD404" => Rejection::NotFound,
            "23505" => Rejection::AlreadyExists,
            // LD400, check/not-null/foreign-key violations, bad values and casts.
            "LD400" | "23514" | "23502" | "23503" | "22P02" | "22003" | "22001" | "22007"
            | "22008" | "22023" | "22004" | "2202E" | "22P05" | "22021" => Rejection::Invalid,
            _ => return None,
        };
        let detail = detail
            .and_then(|d| serde_json::from_str::<Map<String, Value>>(d).ok())
            .unwrap_or_default();
        Some(DomainError::Rejected {
            kind,
            message: client_message(code, message),
            detail,
        })
    }
}

/// The sentence a client sees. livedesk's own errors (LDxxx) are written for
/// people; PostgreSQL's own (constraint and type errors) name tables and
/// constraints, which are nobody's business outside: they get a plain
/// sentence, and the original goes to the debug log.
fn client_message(code: &str, message: &str) -> String {
    if code.starts_with("LD") {
        return message.to_string();
    }
    tracing::debug!(code, message, "database refused a value");
    match code {
        "23505" => "It already exists.",
        "23503" => "It refers to something that does not exist.",
        "23502" => "A required value is missing.",
        "23514" => "A value is not allowed here.",
        "22001" => "A value is too long.",
        "22003" => "A number is out of range.",
        "22007" | "22008" => "A date or time is not valid.",
        _ => "A value has the wrong form.",
    }
    .to_string()
}
