//! Subscribing: register with the hub first, then read the snapshot or the
//! backlog (the client's own read, paced by its socket), then join the hub
//! at the version it reached. From there the hub queues every later version
//! exactly once and in order (the fetcher reads a gap between this join and
//! the other subscribers with everything else); the session never reads the
//! log for a subscription after joining.

use super::{
    domain_error_frame, PresenceSlot, Session, Stop, PRESENCE_MIN_INTERVAL, REVOKED, SHUTTING_DOWN,
    TOO_SLOW,
};
use crate::db::DbError;
use crate::domain::DomainError;
use crate::realtime::event_log;
use crate::realtime::hub::{Join, Outbound};
use crate::realtime::protocol::{self, close, PresenceState};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

/// What a subscribe reads before joining: a snapshot (in its read slot) or
/// the backlog after the client's version.
enum Read {
    Snapshot(OwnedSemaphorePermit),
    Backlog(i64),
}

impl Session {
    /// Handle a `subscribe` frame. However it ends, the hub knows this
    /// connection on the ticket exactly when the session does.
    pub(super) async fn subscribe(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        since: Option<i64>,
    ) -> Option<Stop> {
        let stop = self.try_subscribe(ws, ticket_id, since).await;
        if !self.subs.contains(ticket_id) {
            self.rt.hub.unsubscribe(ticket_id, self.slot.id);
        }
        stop
    }

    async fn try_subscribe(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        since: Option<i64>,
    ) -> Option<Stop> {
        if !self.subs.contains(ticket_id) && self.subs.len() >= self.rt.settings.max_subscriptions {
            let message = format!(
                "At most {} subscriptions per connection.",
                self.rt.settings.max_subscriptions
            );
            return self
                .send(
                    ws,
                    protocol::error_frame("too_many_subscriptions", &message, Some(ticket_id)),
                )
                .await;
        }
        if since.is_some_and(|s| s < 0) {
            return self
                .send(
                    ws,
                    protocol::error_frame(
                        "invalid_frame",
                        "since must be a version ≥ 0.",
                        Some(ticket_id),
                    ),
                )
                .await;
        }
        // A snapshot waits for one of the process's read slots, in turn
        // (`budget`); past the wait the subscribe is refused, nothing held.
        let read = match since {
            Some(since) => Read::Backlog(since),
            None => match self.wait_read_slot(ws, ticket_id).await {
                Err(stop) => return Some(stop),
                Ok(Some(slot)) => Read::Snapshot(slot),
                Ok(None) => {
                    self.rt.metrics.read_slots_busy.inc();
                    self.subs.remove(ticket_id);
                    self.drop_viewer(ticket_id);
                    let frame = protocol::error_frame(
                        "unavailable",
                        "The server is busy building other snapshots; retry in a moment.",
                        Some(ticket_id),
                    );
                    return self.send(ws, frame).await;
                }
            },
        };
        // Register first: every event committed after our read below reaches us live.
        self.subs.remove(ticket_id);
        self.rt.hub.subscribe(ticket_id, &self.handle);
        let result = match read {
            Read::Snapshot(slot) => self.send_snapshot(ws, ticket_id, slot).await,
            Read::Backlog(since) => self.send_backlog(ws, ticket_id, since).await,
        };
        let version = match result {
            Ok(Ok(Some(version))) => version,
            // The log has a gap after `since`: `reset` was sent instead.
            Ok(Ok(None)) => return None,
            Ok(Err(stop)) => return Some(stop),
            Err(e) => {
                // Refused: the ticket is not watched by this connection any more
                // (even if it was before this frame), presence included.
                self.drop_viewer(ticket_id);
                return self.send(ws, domain_error_frame(&e, ticket_id)).await;
            }
        };
        self.subs.insert(ticket_id, version);
        // `Gone`: a reset took the ticket while we read; it is in our queue.
        if self.rt.hub.join(ticket_id, self.slot.id, version) == Join::Read {
            self.rt.work.read([ticket_id]);
        }
        // Services (a chat widget, the mail gateway) follow tickets unseen:
        // colleagues' avatars are agents.
        if self.agent.is_service() {
            return None;
        }
        self.presence.entry(ticket_id).or_insert(PresenceSlot {
            wanted: PresenceState::Viewing,
            written: None,
            at: Instant::now() - PRESENCE_MIN_INTERVAL,
        });
        self.flush_presence();
        None
    }

    /// Wait for a read slot (`budget`) for a read of `ticket_id`, serving
    /// the connection's other tickets meanwhile: their events are delivered
    /// as they come, so that a wait of seconds never fills the outbound
    /// queue and closes the connection (1013). Queued events of `ticket_id`
    /// itself are dropped: the read that follows sends them again. A queued
    /// `reset` is delivered, whichever ticket it is for: the hub forgot the
    /// ticket, and the read could not tell (a review found a replay that
    /// then ended in a subscription nobody served). The wait leaves the
    /// slots' queue while it delivers: a slot must not be held by a session
    /// waiting on a slow socket, and comes back in turn, by the same deadline.
    async fn wait_read_slot(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
    ) -> Result<Option<OwnedSemaphorePermit>, Stop> {
        let deadline = self.rt.budgets.read_deadline();
        let overflow = self.handle.overflow.clone();
        loop {
            let item = tokio::select! {
                biased;
                slot = self.rt.budgets.read_slot_by(deadline) => return Ok(slot),
                _ = overflow.wait() => return Err(TOO_SLOW),
                _ = self.rt.shutdown.cancelled() => return Err(SHUTTING_DOWN),
                _ = self.slot.revoked.cancelled() => return Err(REVOKED),
                Some(item) = self.rx.recv() => item,
            };
            if matches!(item, Outbound::Event { ticket_id: t, .. } if t == ticket_id) {
                continue;
            }
            if let Some(stop) = self.deliver(ws, item).await {
                return Err(stop);
            }
        }
    }

    /// `subscribed` then `snapshot`; the version the client now has.
    async fn send_snapshot(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        slot: OwnedSemaphorePermit,
    ) -> Result<Result<Option<i64>, Stop>, DomainError> {
        // Read, then give the connection and the read slot back before
        // writing to the socket: a slow client must hold neither.
        let read = async |client: &deadpool_postgres::Object| {
            let statement = client
                .prepare_cached("SELECT version, frame FROM ld_ws_snapshot($1)")
                .await?;
            let row = client.query_one(&statement, &[&ticket_id]).await?;
            Ok::<_, DbError>((row.get(0), row.get(1)))
        };
        let (version, frame): (i64, String) = self.rt.db.read_within(read).await?;
        drop(slot);
        if let Some(stop) = self
            .send(ws, protocol::subscribed_frame(ticket_id, version))
            .await
        {
            return Ok(Err(stop));
        }
        Ok(match self.send(ws, frame.into()).await {
            Some(stop) => Err(stop),
            None => Ok(Some(version)),
        })
    }

    /// `subscribed` then every event after `since`; the version the client
    /// now has (`None`: the log has a gap, `reset` was sent instead).
    async fn send_backlog(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        since: i64,
    ) -> Result<Result<Option<i64>, Stop>, DomainError> {
        let read = async {
            let client = self.rt.db.client().await?;
            let statement = client
                .prepare_cached("SELECT ld_ticket_version($1)")
                .await?;
            Ok::<i64, DbError>(client.query_one(&statement, &[&ticket_id]).await?.get(0))
        };
        let current: i64 = self.rt.db.within(read).await?;
        if since > current {
            return Err(DomainError::invalid(
                "since",
                format!("since ({since}) is ahead of the ticket's version ({current})."),
            ));
        }
        if let Some(stop) = self
            .send(ws, protocol::subscribed_frame(ticket_id, since))
            .await
        {
            return Ok(Err(stop));
        }
        self.subs.insert(ticket_id, since);
        let stop = self.replay(ws, ticket_id).await;
        let version = self.subs.remove(ticket_id);
        Ok(match stop {
            Some(stop) => Err(stop),
            None => Ok(version),
        })
    }

    /// Send events from the log after the client's cursor, to the end (the
    /// client's backlog, before it joins the hub). A version missing from
    /// the log (the owner bypassed the triggers, or the database went back
    /// in time) cannot be filled: the client gets `reset` once, and the
    /// subscription ends here, rather than a gap it would chase with `since`
    /// forever.
    async fn replay(&mut self, ws: &mut actix_ws::Session, ticket_id: i64) -> Option<Stop> {
        loop {
            let after = self.subs.get(ticket_id)?;
            // Each page in a read slot, given back before its frames are
            // written: 20 connections replaying long histories must not
            // hold the whole pool (`budget`).
            let slot = match self.wait_read_slot(ws, ticket_id).await {
                Ok(Some(slot)) => slot,
                Ok(None) => {
                    self.rt.metrics.read_slots_busy.inc();
                    return Some(Stop::Close(
                        close::SERVER_ERROR,
                        "the server is busy: resume with since in a moment",
                    ));
                }
                Err(stop) => return Some(stop),
            };
            // A `reset` delivered during the wait ended the subscription.
            if !self.subs.contains(ticket_id) {
                return None;
            }
            let read = event_log::read(&self.rt.db, &[ticket_id], &[after]).await;
            drop(slot);
            let (frames, more) = match read {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %e, ticket_id, "replay failed");
                    return Some(Stop::Close(
                        close::SERVER_ERROR,
                        "could not read events: resume with since",
                    ));
                }
            };
            let done = !more;
            for event in frames {
                let expected = self.subs.get(ticket_id).unwrap_or(after) + 1;
                if event.version != expected {
                    tracing::warn!(
                        ticket_id,
                        expected,
                        found = event.version,
                        "a version is missing from the event log; resetting the subscriber"
                    );
                    return self.reset(ws, ticket_id, event.version).await;
                }
                if let Some(stop) = self.send(ws, event.frame).await {
                    return Some(stop);
                }
                self.subs.insert(ticket_id, event.version);
            }
            if done {
                return None;
            }
        }
    }
}
