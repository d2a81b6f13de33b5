//! Schema migrations from `sql/`, embedded in the binary and applied at start-up.

use super::{Database, DbError};

mod embedded {
    refinery::embed_migrations!("sql");
}

/// Arbitrary constant key for the advisory lock that serialises migrations
/// when several livedesk processes start at once on one database.
const MIGRATION_LOCK: i64 = 0x6c64_6d69_6772;

/// Apply every pending migration (idempotent; safe with concurrent starters).
pub async fn run(db: &Database) -> Result<usize, DbError> {
    let mut client = db.client().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let client: &mut tokio_postgres::Client = &mut client;
    let result = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = result.map_err(|e| DbError::Migration(e.to_string()))?;
    unlock?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(report.applied_migrations().len())
}
