//! The embedded default's superuser step: create the roles and hand the
//! database to the non-superuser owner that migrates and serves
//! (`sql/bootstrap/embedded.sql`, contract §4a).

use super::{Database, DbError};

/// The role that owns the schema, migrates and serves in the embedded default.
pub const OWNER: &str = "livedesk_owner";

const EMBEDDED: &str = include_str!("../../sql/bootstrap/embedded.sql");

/// Run the bootstrap on a superuser connection (idempotent).
pub async fn embedded(admin: &Database) -> Result<(), DbError> {
    let client = admin.client().await?;
    client
        .batch_execute(EMBEDDED)
        .await
        .map_err(|e| DbError::SqlFile {
            file: "sql/bootstrap/embedded.sql".into(),
            text: e.to_string(),
            source: e,
        })
}
