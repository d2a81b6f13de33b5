//! The hub: which connections watch which tickets, and how far each ticket's
//! events have been fanned out in this process.
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

/// Per-ticket state.
#[derive(Debug, Default)]
struct TicketEntry {
    /// The last version fanned out; `None` until a subscriber's first read seeds it.
    delivered: Option<i64>,
    /// The frame of that version when the hub sent it (shared bytes): after
    /// a reconnect it tells whether the database still has the same event
    /// there (`rewind`).
    last_frame: Option<ByteString>,
    /// A notification arrived before the entry was seeded.
    pending: bool,
    subscribers: HashMap<ConnId, ConnHandle>,
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

    /// Register `conn` on `ticket_id`; live events flow from now on.
    pub fn subscribe(&self, ticket_id: i64, conn: &ConnHandle) {
        self.lock()
            .tickets
            .entry(ticket_id)
            .or_default()
            .subscribers
            .insert(conn.id, conn.clone());
    }

    /// Tell the hub which version a subscriber has read (snapshot or replay).
    /// Seeds an unseeded entry. Returns the hub's cursor when it is ahead of
    /// `version` (the subscriber must then read the gap itself), and whether a
    /// fetch is due (notifications arrived before the seed).
    pub fn seed(&self, ticket_id: i64, version: i64) -> (Option<i64>, bool) {
        let mut state = self.lock();
        let Some(entry) = state.tickets.get_mut(&ticket_id) else {
            return (None, false);
        };
        match entry.delivered {
            None => {
                entry.delivered = Some(version);
                let due = std::mem::take(&mut entry.pending);
                (None, due)
            }
            Some(d) if d > version => (Some(d), false),
            Some(_) => (None, false),
        }
    }

    /// Remove `conn` from a ticket; forget the ticket when nobody watches it.
    pub fn unsubscribe(&self, ticket_id: i64, conn: ConnId) {
        let mut state = self.lock();
        if let Some(entry) = state.tickets.get_mut(&ticket_id) {
            entry.subscribers.remove(&conn);
            if entry.subscribers.is_empty() {
                state.tickets.remove(&ticket_id);
            }
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

    /// What a notification for `ticket_id` concerns in this process: its
    /// watchers (an unseeded entry is marked pending) and the inbox.
    pub fn interest(&self, ticket_id: i64) -> (bool, bool) {
        let mut state = self.lock();
        let watched = match state.tickets.get_mut(&ticket_id) {
            Some(entry) => {
                if entry.delivered.is_none() {
                    entry.pending = true;
                }
                true
            }
            None => false,
        };
        (watched, !state.inbox.is_empty())
    }

    /// Whether anyone watches the inbox.
    pub fn has_inbox(&self) -> bool {
        !self.lock().inbox.is_empty()
    }

    /// Cursors of the given tickets (seeded entries only), for a batched read.
    pub fn cursors(&self, tickets: &HashSet<i64>) -> Vec<(i64, i64)> {
        let mut state = self.lock();
        tickets
            .iter()
            .filter_map(|id| {
                let entry = state.tickets.get_mut(id)?;
                match entry.delivered {
                    Some(v) => Some((*id, v)),
                    None => {
                        entry.pending = true;
                        None
                    }
                }
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

    /// Fan out events read from the log, in version order per ticket. An event
    /// is sent only if it is the next version; older ones are skipped.
    pub fn fan_out_events(&self, events: Vec<EventFrame>) -> FanoutStats {
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
            match entry.delivered {
                Some(d) if version == d + 1 => {}
                // Rows come in version order after the cursor, and versions
                // commit in order, so a missing version can never appear
                // later (only the owner bypassing the triggers makes one, or
                // a restore that went back in time). Neither stall the ticket
                // nor send a gap the client would chase: tell each
                // subscriber once to start again from a snapshot. The hub
                // forgets the ticket, so this gap is reported once.
                Some(d) if version > d + 1 => {
                    tracing::warn!(
                        ticket_id,
                        after = d,
                        version,
                        "versions missing from the event log; resetting the ticket's subscribers"
                    );
                    if let Some(entry) = state.tickets.remove(&ticket_id) {
                        reset_entry(&mut stats, entry, ticket_id, version);
                    }
                    continue;
                }
                _ => continue,
            }
            entry.delivered = Some(version);
            entry.last_frame = Some(frame.clone());
            for conn in entry.subscribers.values() {
                let item = Outbound::Event {
                    ticket_id,
                    version,
                    frame: frame.clone(),
                };
                count(&mut stats, conn.offer(item));
            }
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
            for conn in entry.subscribers.values() {
                count(&mut stats, conn.offer(Outbound::Frame(frame.clone())));
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
    for conn in entry.subscribers.values() {
        count(stats, conn.offer(Outbound::Reset { ticket_id, version }));
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

    #[test]
    fn delivers_only_the_next_version_once() {
        let hub = Hub::default();
        let (a, mut rx) = conn(1, 16);
        hub.subscribe(7, &a);
        assert_eq!(hub.seed(7, 3), (None, false));
        let ev = |version| EventFrame {
            ticket_id: 7,
            version,
            frame: ByteString::from(format!("e{version}")),
        };
        hub.fan_out_events(vec![ev(3), ev(4), ev(5), ev(5), ev(7), ev(8)]);
        // 6 is missing from the log: one reset instead of 7, and the hub
        // forgets the ticket (8 is not sent either).
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(match item {
                Outbound::Event { version, .. } => format!("e{version}"),
                Outbound::Reset { version, .. } => format!("reset{version}"),
                Outbound::Frame(_) => "frame".into(),
            });
        }
        assert_eq!(got, ["e4", "e5", "reset7"]);
        assert!(hub.all_tickets().is_empty());
    }

    #[test]
    fn a_reset_reaches_every_subscriber_once() {
        let hub = Hub::default();
        let (a, mut rx_a) = conn(1, 4);
        let (b, mut rx_b) = conn(2, 4);
        hub.subscribe(3, &a);
        hub.subscribe(3, &b);
        hub.seed(3, 10);
        assert_eq!(hub.reset(3, 4).queued, 2);
        assert_eq!(hub.reset(3, 4).queued, 0);
        for rx in [&mut rx_a, &mut rx_b] {
            assert!(matches!(
                rx.try_recv(),
                Ok(Outbound::Reset {
                    ticket_id: 3,
                    version: 4
                })
            ));
        }
    }

    #[test]
    fn a_full_queue_trips_overflow_once_and_spares_neighbours() {
        let hub = Hub::default();
        let (slow, _slow_rx) = conn(1, 1);
        let (fast, mut fast_rx) = conn(2, 16);
        hub.subscribe(1, &slow);
        hub.subscribe(1, &fast);
        hub.seed(1, 0);
        let stats = hub.fan_out_events(
            (1..=3)
                .map(|version| EventFrame {
                    ticket_id: 1,
                    version,
                    frame: ByteString::from("x"),
                })
                .collect(),
        );
        assert_eq!(stats.overflowed, 1);
        assert!(slow.overflow.flag.load(Ordering::Acquire));
        assert_eq!(versions(&mut fast_rx), vec![1, 2, 3]);
    }

    #[test]
    fn seeding_behind_the_hub_reports_the_gap() {
        let hub = Hub::default();
        let (a, _rx) = conn(1, 4);
        let (b, _rx2) = conn(2, 4);
        hub.subscribe(9, &a);
        hub.seed(9, 10);
        hub.subscribe(9, &b);
        assert_eq!(hub.seed(9, 8), (Some(10), false));
    }

    #[test]
    fn notifications_before_the_seed_make_a_fetch_due() {
        let hub = Hub::default();
        let (a, _rx) = conn(1, 4);
        hub.subscribe(5, &a);
        assert_eq!(hub.interest(5), (true, false));
        assert_eq!(hub.seed(5, 2), (None, true));
        assert_eq!(hub.interest(6), (false, false));
    }
}
