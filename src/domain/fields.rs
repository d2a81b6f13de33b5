//! Custom field definitions (admin-managed); values are validated by SQL.

use serde::Deserialize;

use super::{json_call, DomainError, RawJson};
use crate::db::Database;

/// The body of `PUT /api/fields/{key}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldDefinition {
    pub label: String,
    #[serde(rename = "type")]
    /// `text`, `number`, `date`, `select`, `multiselect` or `checkbox`.
    #[schema(value_type = super::vocabulary::FieldType)]
    pub kind: String,
    /// The choices of a `select` or `multiselect` field: distinct strings.
    pub options: Option<serde_json::Value>,
    pub position: Option<i32>,
}

/// Every definition, ordered for display.
pub async fn list(db: &Database) -> Result<RawJson, DomainError> {
    json_call(db, "SELECT ld_list_fields()::text", &[]).await
}

/// Create or replace a definition.
pub async fn put(db: &Database, key: &str, def: &FieldDefinition) -> Result<RawJson, DomainError> {
    json_call(
        db,
        "SELECT ld_put_field($1, $2, $3, $4, $5)::text",
        &[
            &key,
            &def.label,
            &def.kind,
            &def.options,
            &def.position.unwrap_or(0),
        ],
    )
    .await
}
