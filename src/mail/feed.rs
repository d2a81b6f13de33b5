//! The durable feed (`sql/rules/80_feed.sql`, docs/direct-sql.md "The
//! durable feed") from Rust: read after the consumer's position, handle,
//! acknowledge. Reading never moves the position, so a consumer that dies
//! before acknowledging reads the same events again.

use serde_json::Value;
use tokio_postgres::Client;

use super::MailError;

/// One event of the feed.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub ticket_id: i64,
    pub version: i64,
    pub kind: String,
    /// The API's event object (`ld_event_json`).
    pub event: Value,
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events committed from now on.
    Now,
    /// The whole history.
    Beginning,
}

/// Create the mail sender's consumer unless it exists (an existing one
/// keeps its position). Every mail role shares it (`ld_mail_feed_start`):
/// `serve --mail` and `mail send` may take turns.
pub async fn start_for_mail(
    client: &Client,
    consumer: &str,
    from: Start,
) -> Result<Value, MailError> {
    let from = match from {
        Start::Now => "now",
        Start::Beginning => "beginning",
    };
    let row = client
        .query_one("SELECT ld_mail_feed_start($1, $2)", &[&consumer, &from])
        .await?;
    Ok(row.get(0))
}

/// The next events after the consumer's position, in feed order.
pub async fn read(
    client: &Client,
    consumer: &str,
    limit: i32,
) -> Result<Vec<FeedEvent>, MailError> {
    let rows = client
        .query(
            "SELECT ticket_id, version, kind, event FROM ld_feed_read($1, $2)",
            &[&consumer, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| FeedEvent {
            ticket_id: row.get(0),
            version: row.get(1),
            kind: row.get(2),
            event: row.get(3),
        })
        .collect())
}

/// Acknowledge everything up to and including this event.
pub async fn ack(
    client: &Client,
    consumer: &str,
    ticket_id: i64,
    version: i64,
) -> Result<(), MailError> {
    client
        .query_one(
            "SELECT ld_feed_ack($1, $2, $3)",
            &[&consumer, &ticket_id, &version],
        )
        .await?;
    Ok(())
}
