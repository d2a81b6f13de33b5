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
    // Pooled connections opened when the cursors were last checked.
    let mut checked = 0;
    // When tickets whose announced version was not visible yet are read again.
    let mut awaited_timer: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = rt.wake.notified() => {}
            _ = super::sleep_until(presence_timer) => presence_timer = None,
            _ = super::sleep_until(awaited_timer) => {
                awaited_timer = None;
                if let Some((tickets, _)) = rt.still_awaited() {
                    rt.request_catch_up(tickets, false);
                }
            }
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
                serve(
                    &rt,
                    &mut checked,
                    &pending.events,
                    &pending.inbox,
                    &pending.presence,
                )
                .await
            };
            let result = rt.db.within(work).await;
            // The logical bus announces a version at its commit, which a
            // new snapshot may see a moment later: read those again soon.
            if result.is_ok() && awaited_timer.is_none() {
                if let Some((_, retry_in)) = rt.still_awaited() {
                    awaited_timer = Some(Instant::now() + retry_in);
                }
            }
            if let Err(e) = result {
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
    checked: &mut u64,
    events: &HashSet<i64>,
    inbox: &HashSet<i64>,
    presence: &HashSet<i64>,
) -> Result<(), DbError> {
    // While the LISTEN connection is down, the database may be restarting
    // or restored from a copy: no event is read until the listener is back
    // and has checked the cursors. Its catch-up reads every watched ticket.
    if rt.listener_up() && !events.is_empty() {
        read_events(rt, checked, events).await?;
    }
    serve_summaries(rt, inbox, presence).await
}

/// Read and fan out the events after each ticket's cursor. A read through a
/// connection opened since the cursors were last checked may come from a
/// database that restarted or was restored (before the LISTEN connection
/// noticed): the cursors are checked first (`rewind`), and a read during
/// which a connection was opened is checked and done again.
async fn read_events(
    rt: &Realtime,
    checked: &mut u64,
    events: &HashSet<i64>,
) -> Result<(), DbError> {
    loop {
        let opened = rt.db.connections_opened();
        if opened != *checked {
            super::rewind::verify(rt, super::Verify::Cursors).await?;
            *checked = opened;
            continue;
        }
        let cursors = rt.hub.cursors(events);
        if cursors.is_empty() {
            return Ok(());
        }
        let (ids, afters): (Vec<i64>, Vec<i64>) = cursors.into_iter().unzip();
        let (frames, more) = event_log::read(&rt.db, &ids, &afters).await?;
        if rt.db.connections_opened() != opened {
            continue;
        }
        rt.metrics.event_fetches.inc();
        tracing::trace!(
            rows = frames.len(),
            first = frames.first().map(|f| f.version),
            opened,
            "fanning out"
        );
        record(rt, rt.hub.fan_out_events(frames));
        if more {
            rt.request_catch_up(ids, false);
        }
        return Ok(());
    }
}

async fn serve_summaries(
    rt: &Realtime,
    inbox: &HashSet<i64>,
    presence: &HashSet<i64>,
) -> Result<(), DbError> {
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
