//! The hand-off from the hub to one HTTP worker's connections.
//!
//! A session task lives on the actix worker thread that accepted its
//! connection. Queueing a frame to it from the fetcher's thread wakes it
//! across threads: a lock on that worker's run queue and, often, a system
//! call to wake the worker. One change to 1,000 watchers paid that 1,000
//! times before the first frame left (1–10 ms, docs/benchmarks.md). The hub
//! now appends each pass's frames to the worker's hand-off queue instead
//! (one lock and one wake-up per chunk of a pass, `conn::Offers`), and one
//! task on that worker writes them to the sockets of parked sessions
//! (`direct`) or moves them into the sessions' own bounded queues with
//! local wake-ups.
//!
//! Every item for a connection goes through its worker's hand-off, so the
//! order the hub queued them in is the order the session sees. The
//! hand-off is bounded ([`HANDOFF_LIMIT`]): an item that does not fit is
//! treated like one that does not fit the connection's own queue — the
//! connection is told to close with 1013 and resume with `since`.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::conn::{ConnId, Delivery, Outbound, Overflow};
use super::FanoutStats;
use crate::metrics::Metrics;

/// Items waiting for one worker's hand-off task at most (64 bytes each:
/// 4 MiB). Only a worker starved of CPU for a long time fills it, and its
/// connections are then as good as too slow.
pub const HANDOFF_LIMIT: usize = 64 * 1024;

/// One item on its way to a connection (its socket or its session's
/// queue, which the worker's registry holds: `direct`).
pub(super) struct Item {
    pub(super) conn: ConnId,
    pub(super) overflow: Arc<Overflow>,
    pub(super) item: Outbound,
}

/// The hand-off queue of one actix worker thread.
pub struct Handoff {
    items: Mutex<Vec<Item>>,
    wake: Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff").finish_non_exhaustive()
    }
}

thread_local! {
    static THIS_WORKER: RefCell<Option<Arc<Handoff>>> = const { RefCell::new(None) };
}

impl Handoff {
    /// The hand-off of the worker this is called on, started on first use.
    /// Call it on an actix worker (the WebSocket route does): its task is
    /// spawned on the worker's local task set.
    pub fn this_worker(metrics: &Arc<Metrics>) -> Arc<Handoff> {
        THIS_WORKER.with(|slot| {
            slot.borrow_mut()
                .get_or_insert_with(|| {
                    let handoff = Handoff::new(metrics.clone());
                    actix_web::rt::spawn(handoff.clone().run());
                    handoff
                })
                .clone()
        })
    }

    /// A hand-off whose task (`run`) the caller spawns.
    pub(super) fn new(metrics: Arc<Metrics>) -> Arc<Handoff> {
        Arc::new(Handoff {
            items: Mutex::new(Vec::new()),
            wake: Notify::new(),
            metrics,
        })
    }

    /// Queue a pass's items for this worker's connections under one lock
    /// and one wake-up (`Offers`); each item counts like `push`'s.
    pub(super) fn push_all(&self, items: Vec<Item>, stats: &mut FanoutStats) {
        let mut queued = false;
        let mut waiting = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for item in items {
            if item.overflow.is_tripped() {
                continue;
            }
            if waiting.len() < HANDOFF_LIMIT {
                waiting.push(item);
                stats.queued += 1;
                queued = true;
            } else if item.overflow.trip() {
                stats.overflowed += 1;
            }
        }
        drop(waiting);
        if queued {
            self.wake.notify_one();
        }
    }

    /// Write or queue the waiting items for their connections, on this worker.
    pub(super) async fn run(self: Arc<Self>) {
        let mut batch = Vec::new();
        loop {
            self.wake.notified().await;
            std::mem::swap(
                &mut *self.items.lock().unwrap_or_else(|e| e.into_inner()),
                &mut batch,
            );
            let mut direct = 0;
            for Item {
                conn,
                overflow,
                item,
            } in batch.drain(..)
            {
                match super::direct::deliver(conn, &overflow, item) {
                    super::direct::Delivered::Written => direct += 1,
                    super::direct::Delivered::Queued(Delivery::Overflowed) => {
                        self.metrics.ws_closed_slow.inc()
                    }
                    super::direct::Delivered::Queued(_) => {}
                }
            }
            self.metrics.ws_direct_writes.inc_by(direct);
        }
    }
}
