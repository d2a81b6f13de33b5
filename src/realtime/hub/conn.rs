//! A connection as the hub sees it: its bounded queue, what goes into it,
//! and the overflow flag that tells its session to close with 1013.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use tokio::sync::{mpsc, Notify};

use super::handoff::{Handoff, Item};
use super::FanoutStats;

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

    /// Whether the connection overflowed already.
    pub fn is_tripped(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    pub(super) fn trip(&self) -> bool {
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
    /// The hand-off of the worker the connection lives on; `None` queues
    /// straight into `tx` (the hub's unit tests).
    pub handoff: Option<Arc<Handoff>>,
}

/// Put `item` in a connection's queue; on a full queue trip its overflow
/// (once: later items are dropped, the session is closing).
pub(super) fn try_queue(
    tx: &mpsc::Sender<Outbound>,
    overflow: &Overflow,
    item: Outbound,
) -> Delivery {
    match tx.try_send(item) {
        Ok(()) => Delivery::Queued,
        Err(mpsc::error::TrySendError::Full(_)) => {
            if overflow.trip() {
                Delivery::Overflowed
            } else {
                Delivery::Dropped
            }
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Delivery::Dropped,
    }
}

pub(super) enum Delivery {
    Queued,
    Overflowed,
    Dropped,
}

/// Count one offer's outcome.
pub(super) fn count(stats: &mut FanoutStats, delivery: Delivery) {
    match delivery {
        Delivery::Queued => stats.queued += 1,
        Delivery::Overflowed => stats.overflowed += 1,
        Delivery::Dropped => {}
    }
}

/// Items handed to a worker at once during a pass: the worker starts on
/// them while the hub is still at work on the rest.
const CHUNK: usize = 128;

/// The items of one pass of the hub (one fan-out), grouped by the worker
/// hand-off of each connection: a hand-off is locked and woken once per
/// chunk of its items, not once per connection, so its task takes them by
/// the hundred instead of racing the hub for the lock item by item, and
/// starts while the hub still works on the rest. Flushed (`finish`) while
/// the hub's lock is held, so every connection still gets its items in the
/// order the hub made them.
#[derive(Default)]
pub(super) struct Offers {
    stats: FanoutStats,
    per_worker: Vec<(Arc<Handoff>, Vec<Item>)>,
}

impl Offers {
    /// Add `item` for `conn` (straight into its queue when it has no
    /// hand-off: the hub's unit tests).
    pub(super) fn offer(&mut self, conn: &ConnHandle, item: Outbound) {
        let Some(handoff) = &conn.handoff else {
            count(&mut self.stats, try_queue(&conn.tx, &conn.overflow, item));
            return;
        };
        if conn.overflow.is_tripped() {
            return;
        }
        // The connection's id and overflow flag only: the worker's registry
        // holds its queue (`direct`), which the hub need not touch.
        let item = Item {
            conn: conn.id,
            overflow: conn.overflow.clone(),
            item,
        };
        let at = match self
            .per_worker
            .iter()
            .position(|(worker, _)| Arc::ptr_eq(worker, handoff))
        {
            Some(at) => at,
            None => {
                self.per_worker
                    .push((handoff.clone(), Vec::with_capacity(CHUNK)));
                self.per_worker.len() - 1
            }
        };
        let (worker, items) = &mut self.per_worker[at];
        items.push(item);
        if items.len() >= CHUNK {
            let chunk = std::mem::replace(items, Vec::with_capacity(CHUNK));
            worker.push_all(chunk, &mut self.stats);
        }
    }

    /// Hand every worker the rest of its items; what was queued and what
    /// overflowed.
    pub(super) fn finish(mut self) -> FanoutStats {
        for (handoff, items) in self.per_worker {
            if !items.is_empty() {
                handoff.push_all(items, &mut self.stats);
            }
        }
        self.stats
    }
}
