//! Reads what notifications announced, in batches: one query for the events
//! of many tickets, one for inbox summaries, one for presence lists.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::event_log;
use super::hub::FanoutStats;
use super::Realtime;
use crate::db::DbError;

/// Presence lists are sent at most this often per process: a list is O(viewers)
/// and goes to every viewer, so a crowd joining a ticket would otherwise cost
/// O(viewers²) bytes and delay that ticket's events behind it.
pub const PRESENCE_EVERY: Duration = Duration::from_millis(250);

/// Wait for wake-ups and serve them until shutdown.
pub async fn run(rt: Realtime) {
    let mut presence_due = Instant::now();
    let mut presence_timer: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = rt.wake.notified() => {}
            _ = super::sleep_until(presence_timer) => presence_timer = None,
            _ = rt.bus_stop.cancelled() => return,
        }
        loop {
            let mut pending = rt.take_pending();
            if !pending.presence.is_empty() && Instant::now() < presence_due {
                // Hold presence back until its next slot; events go now.
                let held = std::mem::take(&mut pending.presence);
                rt.lock_pending().presence.extend(held);
                presence_timer = Some(presence_due);
            }
            if pending.is_empty() {
                break;
            }
            if !pending.presence.is_empty() {
                presence_due = Instant::now() + PRESENCE_EVERY;
            }
            let work = async {
                if let Some(verify) = pending.verify {
                    super::rewind::verify(&rt, verify).await?;
                }
                serve(&rt, &pending.events, &pending.inbox, &pending.presence).await
            };
            if let Err(e) = rt.db.within(work).await {
                tracing::warn!(error = %e, "reading events failed; retrying");
                // Put the work back; the read is retried after a pause.
                {
                    let mut back = rt.lock_pending();
                    back.events.extend(pending.events);
                    back.inbox.extend(pending.inbox);
                    back.presence.extend(pending.presence);
                    back.verify = super::Verify::merge(back.verify, pending.verify);
                }
                tokio::select! {
                    _ = rt.bus_stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

async fn serve(
    rt: &Realtime,
    events: &HashSet<i64>,
    inbox: &HashSet<i64>,
    presence: &HashSet<i64>,
) -> Result<(), DbError> {
    // While the LISTEN connection is down, the database may be restarting
    // or restored from a copy: cursors are not read against it until the
    // listener is back and has checked them (`rewind`). Its catch-up then
    // reads every watched ticket, these included.
    let cursors = if rt.listener_up() {
        rt.hub.cursors(events)
    } else {
        Vec::new()
    };
    if !cursors.is_empty() {
        let (ids, afters): (Vec<i64>, Vec<i64>) = cursors.into_iter().unzip();
        let (frames, more) = event_log::read(&rt.db, &ids, &afters).await?;
        rt.metrics.event_fetches.inc();
        record(rt, rt.hub.fan_out_events(frames));
        if more {
            rt.request_catch_up(ids, false);
        }
    }
    let summaries = (!inbox.is_empty() || !presence.is_empty()) && rt.hub.has_inbox();
    if !summaries && presence.is_empty() {
        return Ok(());
    }
    let client = rt.db.client().await?;
    if summaries {
        // A summary carries its viewers, so presence changes refresh it too.
        let ids: Vec<i64> = inbox.union(presence).copied().collect();
        let statement = client
            .prepare_cached("SELECT frame FROM ld_inbox_summary_frames($1)")
            .await?;
        for row in client.query(&statement, &[&ids]).await? {
            record(
                rt,
                rt.hub
                    .fan_out_inbox(ByteString::from(row.get::<_, String>(0))),
            );
        }
    }
    if !presence.is_empty() {
        let ids: Vec<i64> = presence.iter().copied().collect();
        let statement = client
            .prepare_cached("SELECT ticket_id, frame FROM ld_presence_frames($1)")
            .await?;
        for row in client.query(&statement, &[&ids]).await? {
            let frame = ByteString::from(row.get::<_, String>(1));
            record(rt, rt.hub.fan_out_ticket_frame(row.get(0), frame));
        }
    }
    Ok(())
}

pub(super) fn record(rt: &Realtime, stats: FanoutStats) {
    rt.metrics.events_delivered.inc_by(stats.queued);
    rt.metrics.ws_closed_slow.inc_by(stats.overflowed);
}
