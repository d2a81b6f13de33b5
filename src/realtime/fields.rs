//! Field definitions change rarely (an admin's `PUT /api/fields/{key}`, or
//! SQL by the owner) but every open console shows them: on
//! `NOTIFY livedesk_fields` (sent by a trigger on `field_definitions`) every
//! inbox subscriber gets the whole list, `{"type":"fields","fields":[…]}`,
//! so a new custom field appears without a reload. Notifications are
//! coalesced: however many arrive, one read follows at a time.

use bytestring::ByteString;

use super::Realtime;

/// Read the definitions and send them, each time `fields_changed` is notified.
pub async fn run(rt: Realtime) {
    loop {
        tokio::select! {
            _ = rt.shutdown.cancelled() => return,
            _ = rt.fields_changed.notified() => {}
        }
        if !rt.hub.has_inbox() {
            continue;
        }
        match read(&rt).await {
            Ok(frame) => {
                rt.hub.fan_out_inbox(frame);
            }
            Err(e) => tracing::warn!(error = %e, "could not read the field definitions to send"),
        }
    }
}

async fn read(rt: &Realtime) -> Result<ByteString, crate::db::DbError> {
    let client = rt.db.client().await?;
    let row = client
        .query_one(
            "SELECT (jsonb_build_object('type', 'fields') || ld_list_fields())::text",
            &[],
        )
        .await?;
    Ok(ByteString::from(row.get::<_, String>(0)))
}
