//! Field definitions change rarely (an admin's `PUT /api/fields/{key}`, or
//! SQL by the owner) but every open console shows them: on
//! `NOTIFY livedesk_fields` (sent by a trigger on `field_definitions`) every
//! inbox subscriber gets the whole list, `{"type":"fields","fields":[…]}`,
//! so a new custom field appears without a reload. The notice is work for
//! the fetcher's in-tray, so however many arrive, one read follows at a time
//! (and a failed read is retried with the rest of the batch).

use bytestring::ByteString;

use crate::db::{Database, DbError};

/// The `fields` frame: every field definition, as SQL lists them.
pub async fn frame(db: &Database) -> Result<ByteString, DbError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT (jsonb_build_object('type', 'fields') || ld_list_fields())::text",
            &[],
        )
        .await?;
    Ok(ByteString::from(row.get::<_, String>(0)))
}
