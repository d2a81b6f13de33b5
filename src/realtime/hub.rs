//! The hub: which connections watch which tickets, and for each subscriber
//! the last version queued to it. It owns the seam between a subscriber's
//! own read (snapshot or backlog) and live events: a subscriber joins at the
//! version its read reached, the fetcher reads each ticket from the lowest
//! position of its subscribers, and the hub gives every subscriber exactly
//! its next versions, so nobody else fills gaps.
//!
//! Each event is read from the database once and serialised once (by SQL);
//! the same bytes go to every subscriber without waiting (a direct write to
//! a parked session's socket, or `try_send` into its queue: `handoff`), so
//! a slow connection never slows its neighbours: when its bounded queue is
//! full it is told to close with 1013 and resume with `since`.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use bytestring::ByteString;

use super::event_log::EventFrame;

mod conn;
mod direct;
mod handoff;
#[cfg(test)]
mod tests;

use conn::Offers;
pub use conn::{ConnHandle, ConnId, Outbound, Overflow};
pub use direct::{Registration, Sent};
pub use handoff::{Handoff, HANDOFF_LIMIT};

/// One connection on one ticket.
#[derive(Debug)]
struct Subscriber {
    conn: ConnHandle,
    /// The last version queued to it, or that its own read reached when it
    /// joined; `None` while it reads (it gets viewer lists, no events yet).
    at: Option<i64>,
}

/// Per-ticket state.
#[derive(Debug, Default)]
struct TicketEntry {
    /// The highest version fanned out (or, for a fresh entry, the version its
    /// first subscriber joined at): what `rewind` checks the database against.
    delivered: Option<i64>,
    /// The frame of that version when the hub sent it (shared bytes): after
    /// a reconnect it tells whether the database still has the same event
    /// there (`rewind`).
    last_frame: Option<ByteString>,
    subscribers: HashMap<ConnId, Subscriber>,
}

/// What a subscriber's join needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Live events reach it from here on; nothing to read.
    Live,
    /// The ticket must be read once after the subscriber's position: the
    /// entry is fresh (wake-ups that came while it read were not served) or
    /// the others are ahead of it (it needs their versions too).
    Read,
    /// It is not registered any more (a `reset` is in its queue).
    Gone,
}

#[derive(Debug, Default)]
struct State {
    tickets: HashMap<i64, TicketEntry>,
    inbox: HashMap<ConnId, ConnHandle>,
}

/// Counts of one fan-out, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct FanoutStats {
    pub queued: u64,
    pub overflowed: u64,
}

/// The subscription registry of one process.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

impl Hub {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way worse than losing a subscription; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Register `conn` on `ticket_id` before its read: viewer lists reach it
    /// from now on, events once it joins. A connection already on the
    /// ticket starts again (a new subscribe reads again).
    pub fn subscribe(&self, ticket_id: i64, conn: &ConnHandle) {
        self.lock()
            .tickets
            .entry(ticket_id)
            .or_default()
            .subscribers
            .insert(
                conn.id,
                Subscriber {
                    conn: conn.clone(),
                    at: None,
                },
            );
    }

    /// The subscriber's read (snapshot or backlog) reached `version`: events
    /// after it reach its queue from now on, in order.
    pub fn join(&self, ticket_id: i64, conn: ConnId, version: i64) -> Join {
        let mut state = self.lock();
        let Some(entry) = state.tickets.get_mut(&ticket_id) else {
            return Join::Gone;
        };
        // Served: another subscriber has joined, so the fetcher reads this
        // ticket on every wake-up and `delivered` is where it got to.
        let served = entry
            .subscribers
            .iter()
            .any(|(id, s)| *id != conn && s.at.is_some());
        let Some(subscriber) = entry.subscribers.get_mut(&conn) else {
            return Join::Gone;
        };
        subscriber.at = Some(version);
        if entry.delivered.is_none() {
            entry.delivered = Some(version);
        }
        if served && entry.delivered.is_some_and(|d| d <= version) {
            Join::Live
        } else {
            Join::Read
        }
    }

    /// Remove `conn` from a ticket; forget the ticket when nobody watches it.
    pub fn unsubscribe(&self, ticket_id: i64, conn: ConnId) {
        let mut state = self.lock();
        if let Some(entry) = state.tickets.get_mut(&ticket_id) {
            entry.subscribers.remove(&conn);
            forget_if_unwatched(&mut state.tickets, ticket_id);
        }
    }

    /// Add or remove an inbox subscriber.
    pub fn set_inbox(&self, conn: &ConnHandle, on: bool) {
        let mut state = self.lock();
        if on {
            state.inbox.insert(conn.id, conn.clone());
        } else {
            state.inbox.remove(&conn.id);
        }
    }

    /// Forget a closed connection everywhere.
    pub fn remove_connection(&self, conn: ConnId, tickets: impl IntoIterator<Item = i64>) {
        for ticket in tickets {
            self.unsubscribe(ticket, conn);
        }
        self.lock().inbox.remove(&conn);
    }

    /// What a notification for `ticket_id` concerns in this process: whether
    /// anyone watches it, and whether anyone watches the inbox.
    pub fn interest(&self, ticket_id: i64) -> (bool, bool) {
        let state = self.lock();
        (
            state.tickets.contains_key(&ticket_id),
            !state.inbox.is_empty(),
        )
    }

    /// Whether anyone watches the inbox.
    pub fn has_inbox(&self) -> bool {
        !self.lock().inbox.is_empty()
    }

    /// Where to read the given tickets from: the lowest position of each
    /// ticket's joined subscribers (tickets nobody has joined yet are left
    /// out: the join asks for their read).
    pub fn cursors(&self, tickets: &HashSet<i64>) -> Vec<(i64, i64)> {
        let state = self.lock();
        tickets
            .iter()
            .filter_map(|id| {
                let entry = state.tickets.get(id)?;
                let lowest = entry.subscribers.values().filter_map(|s| s.at).min()?;
                Some((*id, lowest))
            })
            .collect()
    }

    /// Every watched ticket with its cursor (`None` while not seeded yet)
    /// and the frame of that version if the hub sent it.
    pub fn all_cursors(&self) -> Vec<(i64, Option<i64>, Option<ByteString>)> {
        self.lock()
            .tickets
            .iter()
            .map(|(id, entry)| (*id, entry.delivered, entry.last_frame.clone()))
            .collect()
    }

    /// Cursors of every watched ticket (catch-up after the listener reconnects).
    pub fn all_tickets(&self) -> HashSet<i64> {
        self.lock().tickets.keys().copied().collect()
    }

    /// Fan out events read from the log after the positions in `read` (as
    /// `cursors` gave them), in version order per ticket. Each subscriber
    /// gets exactly the version after its position; versions it has are
    /// skipped; one that would skip a version the read covered (missing from
    /// the log) gets `reset` instead and is dropped from the ticket. One that
    /// joined below the read's position meanwhile is left for the read its
    /// join asked for.
    pub fn fan_out_events(&self, read: &[(i64, i64)], events: Vec<EventFrame>) -> FanoutStats {
        let read: HashMap<i64, i64> = read.iter().copied().collect();
        let mut offers = Offers::default();
        let mut state = self.lock();
        for EventFrame {
            ticket_id,
            version,
            frame,
        } in events
        {
            let Some(entry) = state.tickets.get_mut(&ticket_id) else {
                continue;
            };
            let from = read.get(&ticket_id).copied().unwrap_or(i64::MIN);
            let mut gap = Vec::new();
            for (id, subscriber) in &mut entry.subscribers {
                match subscriber.at {
                    Some(at) if version == at + 1 => {
                        let item = Outbound::Event {
                            ticket_id,
                            version,
                            frame: frame.clone(),
                        };
                        offers.offer(&subscriber.conn, item);
                        subscriber.at = Some(version);
                    }
                    // Rows come in version order after the position, and
                    // versions commit in order, so a missing version can
                    // never appear later (only the owner bypassing the
                    // triggers makes one, or a restore that went back in
                    // time). Neither stall the subscriber nor send it a gap
                    // it would chase: tell it once to start again from a
                    // snapshot, and forget it here.
                    Some(at) if version > at + 1 && at >= from => gap.push((*id, at)),
                    _ => {}
                }
            }
            for (id, at) in gap {
                tracing::warn!(
                    ticket_id,
                    after = at,
                    version,
                    "versions missing from the event log; resetting the subscriber"
                );
                if let Some(subscriber) = entry.subscribers.remove(&id) {
                    let item = Outbound::Reset { ticket_id, version };
                    offers.offer(&subscriber.conn, item);
                }
            }
            if entry.delivered.is_none_or(|d| version > d) {
                entry.delivered = Some(version);
                entry.last_frame = Some(frame);
            }
            forget_if_unwatched(&mut state.tickets, ticket_id);
        }
        offers.finish()
    }

    /// The database went back in time for this ticket (it is at `version`,
    /// below what was delivered, or it is a different history): every
    /// subscriber gets `reset`, and the hub forgets the ticket and its cursor.
    pub fn reset(&self, ticket_id: i64, version: i64) -> FanoutStats {
        let mut offers = Offers::default();
        let mut state = self.lock();
        if let Some(entry) = state.tickets.remove(&ticket_id) {
            for subscriber in entry.subscribers.values() {
                offers.offer(&subscriber.conn, Outbound::Reset { ticket_id, version });
            }
        }
        offers.finish()
    }

    /// Send a frame to every subscriber of a ticket (presence lists).
    pub fn fan_out_ticket_frame(&self, ticket_id: i64, frame: ByteString) -> FanoutStats {
        let mut offers = Offers::default();
        let state = self.lock();
        if let Some(entry) = state.tickets.get(&ticket_id) {
            for subscriber in entry.subscribers.values() {
                offers.offer(&subscriber.conn, Outbound::Frame(frame.clone()));
            }
        }
        offers.finish()
    }

    /// Send a frame to every inbox subscriber.
    pub fn fan_out_inbox(&self, frame: ByteString) -> FanoutStats {
        let mut offers = Offers::default();
        let state = self.lock();
        for conn in state.inbox.values() {
            offers.offer(conn, Outbound::Frame(frame.clone()));
        }
        offers.finish()
    }
}

/// Forget a ticket (and its cursor) once nobody watches it.
fn forget_if_unwatched(tickets: &mut HashMap<i64, TicketEntry>, ticket_id: i64) {
    if tickets
        .get(&ticket_id)
        .is_some_and(|entry| entry.subscribers.is_empty())
    {
        tickets.remove(&ticket_id);
    }
}
