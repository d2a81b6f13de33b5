//! Noticing that the database went back in time: a point-in-time restore, a
//! failover to an asynchronous replica, a crash that lost commits
//! (`synchronous_commit = off`). Cursors and clients are then ahead of the
//! database, and versions will be reused for different changes: silently
//! skipping them would lose those changes. The subscribers of every affected
//! ticket get `reset` (contract v2 §6) and take a fresh snapshot.
//!
//! Two signs, checked each time the LISTEN connection comes back:
//! - the history's identity changed: the cluster's system identifier (a
//!   different cluster) or its timeline (a restore that ended recovery, a
//!   promoted replica): every watched ticket is reset;
//! - a watched ticket's version is below the hub's cursor, the ticket is
//!   gone, or the event at the cursor is not the one the hub sent (another
//!   commit time): that ticket is reset. The last check catches a copy put
//!   back on the same timeline whose new writes already went past a cursor.

use std::collections::HashMap;

use super::fetcher::record;
use super::{Realtime, Verify};
use crate::db::DbError;

/// The cluster's system identifier and the current timeline, as one string.
/// Both functions are callable by any role (PostgreSQL 15).
pub async fn identity(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT system_identifier::text || '/' \
                    || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) \
             FROM pg_control_system()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Compare every watched ticket with the database and reset those that went
/// back (or all of them after a change of history).
pub async fn verify(rt: &Realtime, verify: Verify) -> Result<(), DbError> {
    let cursors = rt.hub.all_cursors();
    if cursors.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = cursors.iter().map(|(id, _, _)| *id).collect();
    // The commit time the hub saw for the event at each cursor.
    let sent: Vec<(i64, i64, String)> = cursors
        .iter()
        .filter_map(|(id, cursor, frame)| Some((*id, (*cursor)?, event_time(frame.as_ref()?)?)))
        .collect();
    let client = rt.db.client().await?;
    let statement = client
        .prepare_cached("SELECT id, version FROM tickets WHERE id = ANY($1)")
        .await?;
    let now: HashMap<i64, i64> = client
        .query(&statement, &[&ids])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let (sent_ids, sent_versions): (Vec<i64>, Vec<i64>) =
        sent.iter().map(|(id, version, _)| (*id, *version)).unzip();
    let statement = client
        .prepare_cached(
            "SELECT c.id, ld_ts(e.created_at) \
             FROM unnest($1::bigint[], $2::bigint[]) AS c(id, version) \
             LEFT JOIN ticket_events e ON e.ticket_id = c.id AND e.version = c.version",
        )
        .await?;
    let stored: HashMap<i64, Option<String>> = client
        .query(&statement, &[&sent_ids, &sent_versions])
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    drop(client);
    let rewritten: std::collections::HashSet<i64> = sent
        .iter()
        .filter(|(id, _, at)| stored.get(id).is_some_and(|now| now.as_deref() != Some(at)))
        .map(|(id, _, _)| *id)
        .collect();
    tracing::debug!(
        ?verify,
        tickets = now.len(),
        checked = sent.len(),
        "cursors checked against the database"
    );
    let mut reset = 0;
    for (ticket_id, cursor, _) in cursors {
        let version = now.get(&ticket_id).copied();
        let behind = match (version, cursor) {
            (None, _) => true,
            (Some(v), Some(c)) => v < c,
            (Some(_), None) => false,
        };
        if verify == Verify::All || behind || rewritten.contains(&ticket_id) {
            tracing::warn!(
                ticket_id,
                delivered = cursor,
                database = version,
                "the database went back in time; resetting the ticket's subscribers"
            );
            record(rt, rt.hub.reset(ticket_id, version.unwrap_or(0)));
            reset += 1;
        }
    }
    if reset > 0 {
        tracing::info!(tickets = reset, "subscribers told to start again");
    }
    Ok(())
}

/// The history the bus last saw (`identity`): the listener and the stream
/// both report to it, so a change seen by either is noticed once.
#[derive(Debug, Default)]
pub struct History {
    identity: std::sync::Mutex<Option<String>>,
}

/// Remember the history the bus sees now; ask the fetcher for a check of
/// the cursors after a reconnect, of everything when the history changed.
pub fn observe(rt: &Realtime, seen: Option<String>, reconnect: bool) {
    let mut known = rt
        .history
        .identity
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let changed = matches!((&*known, &seen), (Some(old), Some(new)) if old != new);
    if changed {
        tracing::warn!(
            before = known.as_deref(),
            now = seen.as_deref(),
            "the database is another history (system identifier or timeline changed)"
        );
        rt.work.verify(Verify::All);
    } else if reconnect {
        rt.work.verify(Verify::Cursors);
    }
    if seen.is_some() {
        *known = seen;
    }
}

/// The `at` (commit time, as SQL wrote it) of an event frame.
fn event_time(frame: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct At {
        at: String,
    }
    serde_json::from_str::<At>(frame).ok().map(|a| a.at)
}
