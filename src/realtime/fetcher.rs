//! Reads what notifications announced, in batches: one query for the events
//! of many tickets, one for inbox summaries, one for presence lists (and the
//! field definitions when they changed). The only reader of the live side.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytestring::ByteString;

use super::event_log;
use super::hub::FanoutStats;
use super::work::Batch;
use super::Realtime;
use crate::db::DbError;

/// Presence lists are sent at most this often per process: a list is O(viewers)
/// and goes to every viewer, so a crowd joining a ticket would otherwise cost
/// O(viewers²) bytes and delay that ticket's events behind it.
pub const PRESENCE_EVERY: Duration = Duration::from_millis(250);

/// How many times a ticket is read again for a version the stream announced.
const AWAITED_READS: u32 = 6;

/// How long the fetcher pauses after a failed read before trying again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// The fetcher's own state: what it must read again, and when. Only its
/// task touches it; nothing is ever put back into the in-tray.
struct Fetcher {
    rt: Realtime,
    /// Work to do again at once (a full batch, a failed read).
    again: Batch,
    /// Viewer lists held until their next slot (`PRESENCE_EVERY`).
    held: HashSet<i64>,
    presence_due: Instant,
    /// Versions the stream announced and no read reached yet (ticket →
    /// version, reads so far).
    awaited: HashMap<i64, (i64, u32)>,
    awaited_at: Option<Instant>,
    /// Pooled connections opened when the cursors were last checked.
    checked: u64,
}

/// Wait for wake-ups and serve them until shutdown.
pub async fn run(rt: Realtime) {
    let mut fetcher = Fetcher {
        rt,
        again: Batch::default(),
        held: HashSet::new(),
        presence_due: Instant::now(),
        awaited: HashMap::new(),
        awaited_at: None,
        checked: 0,
    };
    fetcher.run().await
}

impl Fetcher {
    async fn run(&mut self) {
        loop {
            let batch = self.next_batch();
            if batch.is_empty() {
                let presence_at = (!self.held.is_empty()).then_some(self.presence_due);
                tokio::select! {
                    _ = self.rt.work.notified() => {}
                    _ = super::sleep_until(presence_at) => {}
                    _ = super::sleep_until(self.awaited_at) => {
                        self.awaited_at = None;
                        if let Some((tickets, _)) = self.still_awaited() {
                            self.again.events.extend(tickets);
                        }
                    }
                    _ = self.rt.bus_stop.cancelled() => return,
                }
                continue;
            }
            if !batch.presence.is_empty() {
                self.presence_due = Instant::now() + PRESENCE_EVERY;
            }
            let rt = self.rt.clone();
            let checked = &mut self.checked;
            let work = async {
                if let Some(verify) = batch.verify {
                    super::rewind::verify(&rt, verify).await?;
                }
                serve(&rt, checked, &batch).await
            };
            match rt.db.within(work).await {
                Ok(more) => {
                    self.again.events.extend(more);
                    // The logical bus announces a version at its commit,
                    // which a new snapshot may see a moment later: read
                    // those again soon.
                    if self.awaited_at.is_none() {
                        if let Some((_, retry_in)) = self.still_awaited() {
                            self.awaited_at = Some(Instant::now() + retry_in);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading events failed; retrying");
                    self.again.merge(batch);
                    tokio::select! {
                        _ = self.rt.bus_stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    }

    /// This task's re-reads plus everything added to the in-tray, with
    /// "every watched ticket" resolved and viewer lists held for their slot.
    fn next_batch(&mut self) -> Batch {
        let mut batch = std::mem::take(&mut self.again);
        batch.merge(self.rt.work.take());
        if let Some(presence) = batch.everything.take() {
            let tickets = self.rt.hub.all_tickets();
            if presence {
                batch.presence.extend(tickets.iter().copied());
            }
            batch.events.extend(tickets);
        }
        for (ticket, version) in std::mem::take(&mut batch.announced) {
            let entry = self.awaited.entry(ticket).or_insert((version, 0));
            entry.0 = entry.0.max(version);
        }
        if Instant::now() < self.presence_due {
            // Hold presence back until its next slot; events go now.
            self.held.extend(batch.presence.drain());
        } else {
            batch.presence.extend(self.held.drain());
        }
        batch
    }

    /// After a read: forget awaited versions that were delivered (or whose
    /// ticket is no longer watched); the tickets still short of theirs, to
    /// read again after the returned pause (a few times: a forged message's
    /// version never comes).
    fn still_awaited(&mut self) -> Option<(Vec<i64>, Duration)> {
        if self.awaited.is_empty() {
            return None;
        }
        let delivered: HashMap<i64, Option<i64>> = self
            .rt
            .hub
            .all_cursors()
            .into_iter()
            .map(|(id, cursor, _)| (id, cursor))
            .collect();
        let mut tries = 0;
        self.awaited.retain(|ticket, (version, reads)| {
            let keep = match delivered.get(ticket) {
                None => false,
                Some(cursor) => cursor.is_some_and(|c| c < *version) && *reads < AWAITED_READS,
            };
            if keep {
                *reads += 1;
                tries = tries.max(*reads);
            }
            keep
        });
        if self.awaited.is_empty() {
            return None;
        }
        Some((
            self.awaited.keys().copied().collect(),
            Duration::from_millis(2u64 << tries.min(6)),
        ))
    }
}

/// Serve one batch; the tickets whose events must be read again at once
/// (a read that hit its row or byte budget).
async fn serve(rt: &Realtime, checked: &mut u64, batch: &Batch) -> Result<Vec<i64>, DbError> {
    // While the LISTEN connection is down, the database may be restarting
    // or restored from a copy: no event is read until the listener is back
    // and has checked the cursors. Its catch-up reads every watched ticket.
    let more = if rt.listener_up() && !batch.events.is_empty() {
        read_events(rt, checked, &batch.events).await?
    } else {
        Vec::new()
    };
    serve_summaries(rt, &batch.inbox, &batch.presence).await?;
    if batch.fields && rt.hub.has_inbox() {
        record(
            rt,
            rt.hub.fan_out_inbox(super::fields::frame(&rt.db).await?),
        );
    }
    Ok(more)
}

/// Read and fan out the events after each ticket's cursor. A read through a
/// connection opened since the cursors were last checked may come from a
/// database that restarted or was restored (before the LISTEN connection
/// noticed): the cursors are checked first (`rewind`), and a read during
/// which a connection was opened is checked and done again. Returns the
/// tickets to read again (the read hit its budget).
async fn read_events(
    rt: &Realtime,
    checked: &mut u64,
    events: &HashSet<i64>,
) -> Result<Vec<i64>, DbError> {
    loop {
        let opened = rt.db.connections_opened();
        if opened != *checked {
            super::rewind::verify(rt, super::Verify::Cursors).await?;
            *checked = opened;
            continue;
        }
        let cursors = rt.hub.cursors(events);
        if cursors.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, afters): (Vec<i64>, Vec<i64>) = cursors.iter().copied().unzip();
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
        record(rt, rt.hub.fan_out_events(&cursors, frames));
        return Ok(if more { ids } else { Vec::new() });
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
