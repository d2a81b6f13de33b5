//! The schema at start-up: refinery migrations for tables (`sql/V*.sql`,
//! frozen once landed), then the rules (`sql/rules/*.sql`: functions,
//! triggers, privileges, all `CREATE OR REPLACE`), re-applied whenever their
//! text differs from what the database last ran.

use sha2::{Digest, Sha256};

use super::{Database, DbError};

mod embedded {
    refinery::embed_migrations!("sql");
}

/// The rule files in the order they are applied (name order). A test checks
/// that this list and the folder agree.
pub const RULES: &[(&str, &str)] = &[
    (
        "00_helpers.sql",
        include_str!("../../sql/rules/00_helpers.sql"),
    ),
    (
        "05_row_checks.sql",
        include_str!("../../sql/rules/05_row_checks.sql"),
    ),
    ("10_json.sql", include_str!("../../sql/rules/10_json.sql")),
    (
        "20_versions_events.sql",
        include_str!("../../sql/rules/20_versions_events.sql"),
    ),
    (
        "30_version_check.sql",
        include_str!("../../sql/rules/30_version_check.sql"),
    ),
    (
        "31_assignee.sql",
        include_str!("../../sql/rules/31_assignee.sql"),
    ),
    (
        "32_duplicate_reply.sql",
        include_str!("../../sql/rules/32_duplicate_reply.sql"),
    ),
    ("33_tags.sql", include_str!("../../sql/rules/33_tags.sql")),
    (
        "34_field_conflict.sql",
        include_str!("../../sql/rules/34_field_conflict.sql"),
    ),
    (
        "35_custom_fields.sql",
        include_str!("../../sql/rules/35_custom_fields.sql"),
    ),
    (
        "40_presence.sql",
        include_str!("../../sql/rules/40_presence.sql"),
    ),
    ("50_api.sql", include_str!("../../sql/rules/50_api.sql")),
    (
        "55_write_batch.sql",
        include_str!("../../sql/rules/55_write_batch.sql"),
    ),
    (
        "60_realtime.sql",
        include_str!("../../sql/rules/60_realtime.sql"),
    ),
    (
        "70_agents.sql",
        include_str!("../../sql/rules/70_agents.sql"),
    ),
    ("80_feed.sql", include_str!("../../sql/rules/80_feed.sql")),
    (
        "90_privileges.sql",
        include_str!("../../sql/rules/90_privileges.sql"),
    ),
];

/// Arbitrary constant key for the advisory lock that serialises migrations
/// when several livedesk processes start at once on one database.
const MIGRATION_LOCK: i64 = 0x6c64_6d69_6772;

/// What a start did to the schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    /// Migrations applied now.
    pub migrations: usize,
    /// Whether the rules were (re-)applied now.
    pub rules: bool,
}

/// The digest that identifies a set of rule files (names and text).
pub fn rules_digest() -> String {
    let mut hasher = Sha256::new();
    for (name, text) in RULES {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Apply every pending migration, then the rules if they changed
/// (idempotent; safe with concurrent starters).
pub async fn run(db: &Database) -> Result<Report, DbError> {
    let mut client = unbounded_client(db).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let client: &mut tokio_postgres::Client = &mut client;
    let result = migrate(client).await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = result?;
    unlock?;
    Ok(report)
}

/// The tables as an older release left them: the migrations up to
/// `version` only, and no rules. For upgrade tests (`tests/it/upgrade.rs`),
/// which then put that release's rules in place themselves. Returns how
/// many migrations it applied.
pub async fn run_tables_until(db: &Database, version: u32) -> Result<usize, DbError> {
    let mut client = unbounded_client(db).await?;
    let client: &mut tokio_postgres::Client = &mut client;
    let report = embedded::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .set_abort_divergent(true)
        .run_async(client)
        .await
        .map_err(DbError::Migrations)?;
    Ok(report.applied_migrations().len())
}

/// A connection taken out of the pool, without the pool's statement
/// timeout: a migration may rewrite a large table, and a starter waits for
/// another's migrations (the advisory lock) as long as they take. It is
/// closed when dropped, its setting with it.
async fn unbounded_client(db: &Database) -> Result<deadpool_postgres::ClientWrapper, DbError> {
    let client = deadpool_postgres::Object::take(db.client().await?);
    client.batch_execute("SET statement_timeout = 0").await?;
    Ok(client)
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<Report, DbError> {
    let report = embedded::migrations::runner()
        .set_abort_divergent(true)
        .run_async(client)
        .await
        .map_err(DbError::Migrations)?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    let migrations = report.applied_migrations().len();
    let rules = apply_rules(client, migrations > 0).await?;
    Ok(Report { migrations, rules })
}

/// Run every rule file in one transaction when the database runs other
/// rules (or a migration just changed the tables under them).
async fn apply_rules(client: &mut tokio_postgres::Client, force: bool) -> Result<bool, DbError> {
    let digest = rules_digest();
    let tx = client.transaction().await?;
    let current: Option<String> = tx
        .query_opt("SELECT sha256 FROM rules_applied WHERE id = 1", &[])
        .await?
        .map(|row| row.get(0));
    if !force && current.as_deref() == Some(digest.as_str()) {
        return Ok(false);
    }
    for (name, text) in RULES {
        tx.batch_execute(text).await.map_err(|e| DbError::SqlFile {
            file: format!("sql/rules/{name}"),
            text: describe(&e),
            source: e,
        })?;
    }
    tx.execute(
        "INSERT INTO rules_applied (id, sha256) VALUES (1, $1) \
         ON CONFLICT (id) DO UPDATE SET sha256 = EXCLUDED.sha256, applied_at = now()",
        &[&digest],
    )
    .await?;
    tx.commit().await?;
    tracing::info!(sha256 = %digest, "applied the rules of sql/rules/");
    Ok(true)
}

/// PostgreSQL's own words for a failed statement (message, detail, hint).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" Hint: {hint}"));
            }
            if let Some(position) = db.position() {
                text.push_str(&format!(" [at {position:?}]"));
            }
            text
        }
        None => e.to_string(),
    }
}
