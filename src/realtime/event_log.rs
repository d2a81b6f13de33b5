//! Reading the event log: the one query behind live fan-out and replays.

use bytestring::ByteString;
use futures_util::{pin_mut, TryStreamExt};

use crate::db::{Database, DbError};

/// Rows read per query at most.
pub const MAX_ROWS: i32 = 1000;
/// Bytes of frames per read: the read stops at the frame that passes it, in
/// SQL and here alike (`ld_event_frames`): with message bodies up to 256
/// KiB, rows alone would not bound memory.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;

/// One event frame, serialised by SQL.
pub struct EventFrame {
    pub ticket_id: i64,
    pub version: i64,
    pub frame: ByteString,
}

/// The frames after each ticket's cursor, in (ticket, version) order, within
/// the row and byte budgets; `true` when more may remain.
pub async fn read(
    db: &Database,
    ticket_ids: &[i64],
    after: &[i64],
) -> Result<(Vec<EventFrame>, bool), DbError> {
    // Bounded: a stuck database must not stall fan-out or a replay forever
    // (and a read past its time is cancelled, not left running).
    db.read_within(async |client| read_on(client, ticket_ids, after).await)
        .await
}

async fn read_on(
    client: &deadpool_postgres::Object,
    ticket_ids: &[i64],
    after: &[i64],
) -> Result<(Vec<EventFrame>, bool), DbError> {
    let statement = client
        .prepare_cached("SELECT ticket_id, version, frame FROM ld_event_frames($1, $2, $3)")
        .await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&ticket_ids, &after, &MAX_ROWS];
    let rows = client.query_raw(&statement, params).await?;
    pin_mut!(rows);
    let mut frames = Vec::new();
    let mut bytes = 0;
    while let Some(row) = rows.try_next().await? {
        let frame: String = row.get(2);
        bytes += frame.len();
        frames.push(EventFrame {
            ticket_id: row.get(0),
            version: row.get(1),
            frame: ByteString::from(frame),
        });
        if bytes >= MAX_BYTES {
            // `ld_event_frames` stops at this same frame.
            return Ok((frames, true));
        }
    }
    let more = frames.len() >= MAX_ROWS as usize;
    Ok((frames, more))
}
