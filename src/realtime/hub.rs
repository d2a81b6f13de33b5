//! The hub: which connections watch which tickets, and for each subscriber
//! the last version queued to it. It owns the seam between a subscriber's
//! own read (snapshot or backlog) and live events: a subscriber joins at the
//! version its read reached, the fetcher reads each ticket from the lowest
//! position of its subscribers, and the hub gives every subscriber exactly
//! its next versions, so nobody else fills gaps.
//!
//! Each event is read from the database once and serialised once (by SQL);
//! the same bytes are queued to every subscriber with `try_send`, so a slow
//! connection never slows its neighbours: when its bounded queue is full it
//! is told to close with 1013 and resume with `since`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytestring::ByteString;
use tokio::sync::{mpsc, Notify};

use super::event_log::EventFrame;

/// Identifies a WebSocket connection within this process.
pub type ConnId = u64;

/// A frame queued for one connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// One ticket event; the session drops versions it already sent.
    Event {
        ticket_id: i64,
        version: i64,
        frame: ByteString,
    },
    /// Any other frame (presence, inbox), sent as is.
    Frame(ByteString),
    /// The ticket's history is not what was delivered (the database went
    /// back in time, or a version is missing from the log): the session
    /// sends `reset` and forgets the subscription; the client subscribes
    /// again without `since`.
    Reset { ticket_id: i64, version: i64 },
}

/// Tells a session that the hub gave up on it (its queue overflowed).
#[derive(Debug, Default)]
pub struct Overflow {
    flag: AtomicBool,
    notify: Notify,
}

impl Overflow {
    /// Wait until the connection overflowed.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn trip(&self) -> bool {
        let first = !self.flag.swap(true, Ordering::AcqRel);
        self.notify.notify_waiters();
        first
    }
}

/// The hub's handle on a connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    pub overflow: Arc<Overflow>,
}

impl ConnHandle {
    /// Queue without waiting; on a full queue trip the overflow (once) and
    /// return false.
    fn offer(&self, item: Outbound) -> Delivery {
        match self.tx.try_send(item) {
            Ok(()) => Delivery::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.overflow.trip() {
                    Delivery::Overflowed
                } else {
                    Delivery::Dropped
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Dropped,
        }
    }
}

enum Delivery {
    Queued,
    Overflowed,
    Dropped,
}

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
        let mut stats = FanoutStats::default();
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
                        count(&mut stats, subscriber.conn.offer(item));
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
                    count(&mut stats, subscriber.conn.offer(item));
                }
            }
            if entry.delivered.is_none_or(|d| version > d) {
                entry.delivered = Some(version);
                entry.last_frame = Some(frame);
            }
            forget_if_unwatched(&mut state.tickets, ticket_id);
        }
        stats
    }

    /// The database went back in time for this ticket (it is at `version`,
    /// below what was delivered, or it is a different history): every
    /// subscriber gets `reset`, and the hub forgets the ticket and its cursor.
    pub fn reset(&self, ticket_id: i64, version: i64) -> FanoutStats {
        let mut stats = FanoutStats::default();
        if let Some(entry) = self.lock().tickets.remove(&ticket_id) {
            reset_entry(&mut stats, entry, ticket_id, version);
        }
        stats
    }

    /// Send a frame to every subscriber of a ticket (presence lists).
    pub fn fan_out_ticket_frame(&self, ticket_id: i64, frame: ByteString) -> FanoutStats {
        let mut stats = FanoutStats::default();
        let state = self.lock();
        if let Some(entry) = state.tickets.get(&ticket_id) {
            for subscriber in entry.subscribers.values() {
                let item = Outbound::Frame(frame.clone());
                count(&mut stats, subscriber.conn.offer(item));
            }
        }
        stats
    }

    /// Send a frame to every inbox subscriber.
    pub fn fan_out_inbox(&self, frame: ByteString) -> FanoutStats {
        let mut stats = FanoutStats::default();
        let state = self.lock();
        for conn in state.inbox.values() {
            count(&mut stats, conn.offer(Outbound::Frame(frame.clone())));
        }
        stats
    }
}

fn reset_entry(stats: &mut FanoutStats, entry: TicketEntry, ticket_id: i64, version: i64) {
    for subscriber in entry.subscribers.values() {
        let item = Outbound::Reset { ticket_id, version };
        count(stats, subscriber.conn.offer(item));
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

fn count(stats: &mut FanoutStats, delivery: Delivery) {
    match delivery {
        Delivery::Queued => stats.queued += 1,
        Delivery::Overflowed => stats.overflowed += 1,
        Delivery::Dropped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId, capacity: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            ConnHandle {
                id,
                tx,
                overflow: Arc::default(),
            },
            rx,
        )
    }

    fn versions(rx: &mut mpsc::Receiver<Outbound>) -> Vec<i64> {
        let mut out = Vec::new();
        while let Ok(Outbound::Event { version, .. }) = rx.try_recv() {
            out.push(version);
        }
        out
    }

    fn ev(ticket_id: i64, version: i64) -> EventFrame {
        EventFrame {
            ticket_id,
            version,
            frame: ByteString::from(format!("e{version}")),
        }
    }

    fn items(rx: &mut mpsc::Receiver<Outbound>) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(match item {
                Outbound::Event { version, .. } => format!("e{version}"),
                Outbound::Reset { version, .. } => format!("reset{version}"),
                Outbound::Frame(frame) => frame.to_string(),
            });
        }
        got
    }

    #[test]
    fn delivers_only_the_next_version_once() {
        let hub = Hub::default();
        let (a, mut rx) = conn(1, 16);
        hub.subscribe(7, &a);
        assert_eq!(hub.join(7, 1, 3), Join::Read);
        hub.fan_out_events(&[(7, 3)], [3, 4, 5, 5, 7, 8].map(|v| ev(7, v)).into());
        // 6 is missing from the log: one reset instead of 7, and the hub
        // forgets the subscriber (8 is not sent either).
        assert_eq!(items(&mut rx), ["e4", "e5", "reset7"]);
        assert!(hub.all_tickets().is_empty());
    }

    #[test]
    fn a_reset_reaches_every_subscriber_once() {
        let hub = Hub::default();
        let (a, mut rx_a) = conn(1, 4);
        let (b, mut rx_b) = conn(2, 4);
        hub.subscribe(3, &a);
        hub.subscribe(3, &b);
        hub.join(3, 1, 10);
        assert_eq!(hub.reset(3, 4).queued, 2);
        assert_eq!(hub.reset(3, 4).queued, 0);
        assert_eq!(hub.join(3, 2, 10), Join::Gone);
        for rx in [&mut rx_a, &mut rx_b] {
            assert_eq!(items(rx), ["reset4"]);
        }
    }

    #[test]
    fn a_full_queue_trips_overflow_once_and_spares_neighbours() {
        let hub = Hub::default();
        let (slow, _slow_rx) = conn(1, 1);
        let (fast, mut fast_rx) = conn(2, 16);
        hub.subscribe(1, &slow);
        hub.subscribe(1, &fast);
        hub.join(1, 1, 0);
        hub.join(1, 2, 0);
        let stats = hub.fan_out_events(&[(1, 0)], (1..=3).map(|v| ev(1, v)).collect());
        assert_eq!(stats.overflowed, 1);
        assert!(slow.overflow.flag.load(Ordering::Acquire));
        assert_eq!(versions(&mut fast_rx), vec![1, 2, 3]);
    }

    #[test]
    fn a_subscriber_behind_the_others_gets_its_gap_from_the_same_read() {
        let hub = Hub::default();
        let (a, mut rx_a) = conn(1, 8);
        let (b, mut rx_b) = conn(2, 8);
        hub.subscribe(9, &a);
        assert_eq!(hub.join(9, 1, 10), Join::Read);
        hub.subscribe(9, &b);
        assert_eq!(hub.join(9, 2, 8), Join::Read);
        assert_eq!(hub.cursors(&HashSet::from([9])), vec![(9, 8)]);
        hub.fan_out_events(&[(9, 8)], (9..=11).map(|v| ev(9, v)).collect());
        assert_eq!(versions(&mut rx_a), vec![11]);
        assert_eq!(versions(&mut rx_b), vec![9, 10, 11]);
        assert_eq!(hub.cursors(&HashSet::from([9])), vec![(9, 11)]);
    }

    #[test]
    fn only_a_join_the_fetcher_already_serves_is_live_at_once() {
        let hub = Hub::default();
        let (a, _rx_a) = conn(1, 4);
        let (b, _rx_b) = conn(2, 4);
        let (c, _rx_c) = conn(3, 4);
        hub.subscribe(5, &a);
        // Wake-ups while nobody had joined were not read: a read is due.
        assert_eq!(hub.join(5, 1, 2), Join::Read);
        hub.subscribe(5, &b);
        assert_eq!(hub.join(5, 2, 2), Join::Live);
        assert_eq!(hub.join(5, 3, 2), Join::Gone);
        // Re-subscribing reads again; the others keep the ticket served.
        hub.subscribe(5, &c);
        hub.subscribe(5, &a);
        assert_eq!(hub.join(5, 1, 4), Join::Live);
        assert_eq!(hub.join(5, 3, 1), Join::Read);
    }

    #[test]
    fn readers_get_frames_not_events_and_a_gap_resets_only_who_would_skip_it() {
        let hub = Hub::default();
        let (a, mut rx_a) = conn(1, 8);
        let (b, mut rx_b) = conn(2, 8);
        let (c, mut rx_c) = conn(3, 8);
        hub.subscribe(4, &a);
        hub.subscribe(4, &b);
        hub.subscribe(4, &c);
        hub.join(4, 1, 3);
        hub.join(4, 2, 5);
        assert_eq!(hub.interest(4), (true, false));
        assert_eq!(hub.interest(8), (false, false));
        hub.fan_out_ticket_frame(4, ByteString::from("viewers"));
        // Version 4 is missing: a (at 3) is reset, b (at 5) goes on.
        hub.fan_out_events(&[(4, 3)], [5, 6].map(|v| ev(4, v)).into());
        assert_eq!(items(&mut rx_a), ["viewers", "reset5"]);
        assert_eq!(items(&mut rx_b), ["viewers", "e6"]);
        assert_eq!(items(&mut rx_c), ["viewers"]);
        assert_eq!(hub.cursors(&HashSet::from([4])), vec![(4, 6)]);
    }

    #[test]
    fn a_subscriber_that_joined_below_a_read_in_flight_waits_for_its_own() {
        let hub = Hub::default();
        let (a, mut rx_a) = conn(1, 8);
        let (b, mut rx_b) = conn(2, 8);
        hub.subscribe(6, &a);
        hub.join(6, 1, 10);
        hub.subscribe(6, &b);
        // The fetcher reads after 10; meanwhile b's snapshot says 9.
        let read = hub.cursors(&HashSet::from([6]));
        assert_eq!(hub.join(6, 2, 9), Join::Read);
        hub.fan_out_events(&read, [11, 12].map(|v| ev(6, v)).into());
        assert_eq!(items(&mut rx_a), ["e11", "e12"]);
        assert!(items(&mut rx_b).is_empty(), "no reset, no gap");
        // The read b's join asked for.
        let read = hub.cursors(&HashSet::from([6]));
        assert_eq!(read, vec![(6, 9)]);
        hub.fan_out_events(&read, (10..=13).map(|v| ev(6, v)).collect());
        assert_eq!(items(&mut rx_a), ["e13"]);
        assert_eq!(items(&mut rx_b), ["e10", "e11", "e12", "e13"]);
    }
}
