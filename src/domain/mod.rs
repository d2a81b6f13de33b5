//! The helpdesk's domain: agents, tickets, messages, tags and custom fields.
//!
//! Every rule is enforced by SQL functions and triggers in `sql/`; this layer
//! only calls them with bind parameters and passes their JSON through, so
//! the shapes are defined once (in SQL) for HTTP answers and live events.

pub mod agents;
pub mod demo;
pub mod drafts;
pub mod error;
pub mod fields;
pub mod messages;
pub mod tags;
pub mod tickets;
pub mod vocabulary;
pub mod write_batch;
pub mod writers;

pub use agents::Agent;
pub use error::{DomainError, Rejection};

/// A JSON document produced by PostgreSQL, passed to clients unchanged.
#[derive(Debug, Clone)]
pub struct RawJson(pub String);

/// Run a query returning one JSON text column and wrap it.
async fn json_call(
    db: &crate::db::Database,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<RawJson, DomainError> {
    let client = db.client().await?;
    let statement = client.prepare_cached(sql).await?;
    let row = client.query_one(&statement, params).await?;
    Ok(RawJson(row.get(0)))
}
