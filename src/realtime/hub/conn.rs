//! A connection as the hub sees it: its bounded queue, what goes into it,
//! and the overflow flag that tells its session to close with 1013.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytestring::ByteString;
use tokio::sync::{mpsc, Notify};

use super::handoff::Handoff;
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

impl ConnHandle {
    /// Queue without waiting (through the worker's hand-off when there is
    /// one); on a full queue trip the overflow (once).
    pub(super) fn offer(&self, item: Outbound) -> Delivery {
        match &self.handoff {
            Some(handoff) => handoff.push(&self.tx, &self.overflow, item),
            None => try_queue(&self.tx, &self.overflow, item),
        }
    }
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
