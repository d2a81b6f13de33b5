//! The fetcher's in-tray: what has to be read from the database before it
//! can be fanned out. Every wake-up enters here (a NOTIFY, a logical-bus
//! message, a reconnect's catch-up, a cursor check, a subscriber joining,
//! changed field definitions);
//! producers only add, and the fetcher alone takes. The fetcher keeps its
//! own re-reads (a full batch, a failed read, presence held for its slot)
//! in its task, never here, so work never flows back up the read side.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// What the fetcher checks before reading on, after the bus came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The same database: reset only tickets now below their cursor.
    Cursors,
    /// A different history (system identifier or timeline changed): reset
    /// every watched ticket.
    All,
}

impl Verify {
    /// Two requests in one: the wider one wins.
    pub fn merge(a: Option<Verify>, b: Option<Verify>) -> Option<Verify> {
        if a == Some(Verify::All) || b == Some(Verify::All) {
            Some(Verify::All)
        } else {
            a.or(b)
        }
    }
}

/// One batch of work, as the fetcher takes it. Every set holds ticket ids,
/// so repeated wake-ups for a ticket merge (the in-tray holds at most one
/// entry per ticket and kind).
#[derive(Debug, Default)]
pub struct Batch {
    /// Read these tickets' events after their cursors.
    pub events: HashSet<i64>,
    /// Send these tickets' inbox summaries (if anyone watches the inbox).
    pub inbox: HashSet<i64>,
    /// Send these tickets' viewer lists.
    pub presence: HashSet<i64>,
    /// Read every watched ticket (`Some(true)`: their viewer lists too):
    /// the bus came back, or it changed. The fetcher resolves "every"
    /// when it takes the batch, so no producer needs to ask the hub.
    pub everything: Option<bool>,
    /// Check the cursors against the database before reading.
    pub verify: Option<Verify>,
    /// Field definitions changed: send them to every inbox subscriber.
    pub fields: bool,
    /// Versions the logical bus announced (ticket → highest version): the
    /// fetcher reads such a ticket again shortly if a read does not reach
    /// it yet (a commit is decoded a moment before a snapshot sees it).
    pub announced: HashMap<i64, i64>,
}

impl Batch {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.inbox.is_empty()
            && self.presence.is_empty()
            && self.everything.is_none()
            && self.verify.is_none()
            && !self.fields
            && self.announced.is_empty()
    }

    /// Add another batch's work to this one.
    pub fn merge(&mut self, other: Batch) {
        self.events.extend(other.events);
        self.inbox.extend(other.inbox);
        self.presence.extend(other.presence);
        self.everything = match (self.everything, other.everything) {
            (Some(a), Some(b)) => Some(a || b),
            (a, b) => a.or(b),
        };
        self.verify = Verify::merge(self.verify, other.verify);
        self.fields |= other.fields;
        for (ticket, version) in other.announced {
            let entry = self.announced.entry(ticket).or_insert(version);
            *entry = (*entry).max(version);
        }
    }
}

/// The in-tray itself: a batch being filled and the fetcher's wake-up.
#[derive(Debug, Default)]
pub struct Work {
    tray: Mutex<Batch>,
    wake: Notify,
}

impl Work {
    fn add(&self, fill: impl FnOnce(&mut Batch)) {
        fill(&mut self.lock());
        self.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, Batch> {
        // A batch is plain data: a panic elsewhere cannot leave it worse
        // than a wake-up lost, which the next catch-up covers.
        self.tray.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket changed (an event was announced): read its events when it is
    /// `watched` (`version`: what the logical bus announced), its inbox
    /// summary when `inbox`.
    pub fn changed(&self, ticket: i64, version: Option<i64>, watched: bool, inbox: bool) {
        if !watched && !inbox {
            return;
        }
        self.add(|batch| {
            if watched {
                batch.events.insert(ticket);
                if let Some(version) = version {
                    let entry = batch.announced.entry(ticket).or_insert(version);
                    *entry = (*entry).max(version);
                }
            }
            if inbox {
                batch.inbox.insert(ticket);
            }
        });
    }

    /// A subscriber joined these tickets: read them once after its position.
    pub fn read(&self, tickets: impl IntoIterator<Item = i64>) {
        self.add(|batch| batch.events.extend(tickets));
    }

    /// A ticket's viewers changed.
    pub fn presence(&self, ticket: i64) {
        self.add(|batch| {
            batch.presence.insert(ticket);
        });
    }

    /// Read every watched ticket from its cursor (and its viewers when
    /// `presence`): whatever was announced while the bus was away is in the
    /// log.
    pub fn catch_up_everything(&self, presence: bool) {
        self.add(|batch| {
            batch.everything = Some(batch.everything.unwrap_or(false) || presence);
        });
    }

    /// Field definitions changed (however many notices, one read follows).
    pub fn fields(&self) {
        self.add(|batch| batch.fields = true);
    }

    /// Check every cursor against the database before the next read. No
    /// wake-up of its own: the catch-up that follows a reconnect brings it.
    pub fn verify(&self, verify: Verify) {
        let mut batch = self.lock();
        batch.verify = Verify::merge(batch.verify, Some(verify));
    }

    /// Take everything added so far (the fetcher only).
    pub(super) fn take(&self) -> Batch {
        std::mem::take(&mut *self.lock())
    }

    /// Resolves when work was added since the last wake-up.
    pub(super) fn notified(&self) -> Notified<'_> {
        self.wake.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wake_ups_merge_per_ticket_and_keep_the_highest_version() {
        let work = Work::default();
        work.changed(1, Some(4), true, false);
        work.changed(1, Some(3), true, true);
        work.changed(2, None, true, false);
        work.changed(3, Some(1), false, true);
        work.changed(4, Some(1), false, false);
        work.verify(Verify::Cursors);
        work.verify(Verify::All);
        work.catch_up_everything(false);
        work.catch_up_everything(true);
        work.fields();
        work.fields();
        let batch = work.take();
        assert!(batch.fields);
        assert_eq!(batch.events, HashSet::from([1, 2]));
        assert_eq!(batch.inbox, HashSet::from([1, 3]));
        assert_eq!(batch.announced, HashMap::from([(1, 4)]));
        assert_eq!(batch.verify, Some(Verify::All));
        assert_eq!(batch.everything, Some(true));
        assert!(work.take().is_empty());
    }

    #[test]
    fn merging_batches_keeps_the_wider_request() {
        let mut a = Batch {
            everything: Some(false),
            verify: Some(Verify::Cursors),
            ..Batch::default()
        };
        a.merge(Batch {
            everything: Some(true),
            announced: HashMap::from([(5, 9)]),
            ..Batch::default()
        });
        assert_eq!(a.everything, Some(true));
        assert_eq!(a.verify, Some(Verify::Cursors));
        assert_eq!(a.announced, HashMap::from([(5, 9)]));
    }
}
