//! Writing a connection's frames from its worker's hand-off task.
//!
//! One change to 1,000 watchers woke 1,000 session tasks, each of which
//! passed its frame on to actix-ws's channel, whose dispatcher task then
//! wrote it to the socket: two task runs per frame, and on each worker no
//! frame reached a socket before every session there had run
//! (docs/benchmarks.md, "Direct writes"). When a session is parked in its
//! loop with nothing queued, which is the usual case, the hand-off task now
//! puts the frame into the socket's channel itself: one task run per frame.
//!
//! Everything else goes through the session as before, so the order of a
//! connection's frames and the session's rules stay as they were: a session
//! busy with a client frame, a read or a write; items already in its queue;
//! a socket channel that is full; a `reset`; an event that is not exactly
//! the next version the client has; a session about to close (shutdown, the
//! agent revoked), which its biased loop would have seen before its queue.
//! Sessions and their hand-off share a worker thread, so "parked" cannot
//! change while the hand-off writes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::conn::{try_queue, ConnHandle, ConnId, Delivery, Outbound, Overflow};

/// The last version sent to the client, per subscribed ticket: shared by
/// the session and its worker's hand-off (one thread, never borrowed across
/// an await).
#[derive(Debug, Clone, Default)]
pub struct Sent(Rc<RefCell<HashMap<i64, i64>>>);

impl Sent {
    pub fn get(&self, ticket_id: i64) -> Option<i64> {
        self.0.borrow().get(&ticket_id).copied()
    }

    pub fn insert(&self, ticket_id: i64, version: i64) {
        self.0.borrow_mut().insert(ticket_id, version);
    }

    pub fn remove(&self, ticket_id: i64) -> Option<i64> {
        self.0.borrow_mut().remove(&ticket_id)
    }

    pub fn contains(&self, ticket_id: i64) -> bool {
        self.0.borrow().contains_key(&ticket_id)
    }

    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    pub fn tickets(&self) -> Vec<i64> {
        self.0.borrow().keys().copied().collect()
    }
}

/// What the hand-off may use of a connection.
struct Direct {
    /// The session's own queue, for what is not written directly.
    tx: mpsc::Sender<Outbound>,
    ws: RefCell<actix_ws::Session>,
    sent: Sent,
    parked: Cell<bool>,
    /// Signals that make the session close (shutdown, the agent revoked):
    /// once one fires, nothing more is written past the session, which
    /// would have seen it before its queue (its `select!` is biased).
    closing: [CancellationToken; 2],
}

thread_local! {
    /// The connections of this worker whose sessions accept direct writes.
    static DIRECT: RefCell<HashMap<ConnId, Rc<Direct>>> = RefCell::new(HashMap::new());
}

/// A session's registration on its worker: direct writes reach its socket
/// only while it is parked. Dropping it (when the session stops, before it
/// closes the socket) ends them and gives back the socket handle.
pub struct Registration {
    id: ConnId,
    direct: Rc<Direct>,
}

impl Registration {
    /// Register on the worker this is called on (the session's own), with
    /// the signals that close the session.
    pub fn new(
        conn: &ConnHandle,
        ws: actix_ws::Session,
        sent: Sent,
        closing: [CancellationToken; 2],
    ) -> Self {
        let id = conn.id;
        let direct = Rc::new(Direct {
            tx: conn.tx.clone(),
            ws: RefCell::new(ws),
            sent,
            parked: Cell::new(false),
            closing,
        });
        let before = DIRECT.with(|map| map.borrow_mut().insert(id, direct.clone()));
        // Connection ids are unique per process (and one process serves
        // each worker thread).
        debug_assert!(before.is_none(), "connection {id} registered twice");
        Registration { id, direct }
    }

    /// The session waits in its loop with its state consistent (`true`),
    /// or works on something (`false`): a read, a client frame, a write.
    pub fn park(&self, parked: bool) {
        self.direct.parked.set(parked);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // `try_with`: a session dropped while the thread's locals are torn
        // down has nothing left to unregister from.
        let _ = DIRECT.try_with(|map| {
            let mut map = map.borrow_mut();
            if map
                .get(&self.id)
                .is_some_and(|direct| Rc::ptr_eq(direct, &self.direct))
            {
                map.remove(&self.id);
            }
        });
    }
}

/// How the hand-off passed an item on.
pub(super) enum Delivered {
    /// Into the socket's channel.
    Written,
    /// Into the session's queue (or dropped: a session that has stopped,
    /// or one already told to close).
    Queued(Delivery),
}

/// Pass `item` on to connection `id`, on its worker: to its socket at once
/// (`try_write`) or through its session's queue. A connection that is not
/// registered here has a session that stopped: the item is dropped.
pub(super) fn deliver(id: ConnId, overflow: &Overflow, item: Outbound) -> Delivered {
    let direct = DIRECT.with(|map| map.borrow().get(&id).cloned());
    let Some(direct) = direct else {
        return Delivered::Queued(Delivery::Dropped);
    };
    match try_write(&direct, overflow, item) {
        Ok(()) => Delivered::Written,
        Err(item) => Delivered::Queued(try_queue(&direct.tx, overflow, item)),
    }
}

/// Write `item` to the socket now if the session is parked with nothing
/// queued and the item needs none of its rules; otherwise give it back for
/// the session's queue.
fn try_write(direct: &Direct, overflow: &Overflow, item: Outbound) -> Result<(), Outbound> {
    let tx = &direct.tx;
    if !direct.parked.get()
        || tx.capacity() != tx.max_capacity()
        || overflow.is_tripped()
        || direct.closing.iter().any(CancellationToken::is_cancelled)
    {
        return Err(item);
    }
    match &item {
        Outbound::Frame(frame) if write(direct, frame) => Ok(()),
        Outbound::Event {
            ticket_id,
            version,
            frame,
        } if direct.sent.get(*ticket_id) == Some(version - 1) && write(direct, frame) => {
            direct.sent.insert(*ticket_id, *version);
            Ok(())
        }
        _ => Err(item),
    }
}

/// Put a frame into the socket's channel if it has room now. Unconstrained:
/// the hand-off writes a whole pass in one run of its task, past Tokio's
/// per-run budget, which would otherwise make a channel with room look full.
fn write(direct: &Direct, frame: &bytestring::ByteString) -> bool {
    let mut ws = direct.ws.borrow_mut();
    matches!(
        tokio::task::unconstrained(ws.text(frame.clone())).now_or_never(),
        Some(Ok(()))
    )
}
