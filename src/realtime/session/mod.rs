//! One WebSocket connection: a single task that selects over client frames,
//! its bounded outbound queue, the heartbeat, presence flushes and shutdown.
//! Subscriptions (snapshot, backlog, the seam with live events) are in
//! `subscription`.

mod subscription;

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::hub::{ConnHandle, Handoff, Outbound, Registration, Sent};
use super::protocol::{self, close, ClientFrame, PresenceState};
use super::{ConnectionSlot, Realtime};
use crate::domain::{Agent, DomainError, Rejection};

/// How long a close frame may take to write: short, so that a stuck peer
/// cannot hold up a shutdown (which must finish within 5 s).
const CLOSE_WRITE: Duration = Duration::from_secs(2);

/// The closes the session's watchers decide, the same whether the loop,
/// a write or a wait for a read slot notices them.
const REVOKED: Stop = Stop::Close(
    close::REVOKED,
    "the agent was disabled or its token replaced: log in again",
);
const TOO_SLOW: Stop = Stop::Close(
    close::TRY_AGAIN,
    "too slow: reconnect and resume with since",
);
const SHUTTING_DOWN: Stop =
    Stop::Close(close::GOING_AWAY, "server shutting down: resume with since");

/// Presence writes per (connection, ticket) are at most this frequent.
const PRESENCE_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// Where a client frame falls in the per-second budget: served, ignored with
/// an `error` frame, or (past twice the budget) a reason to close.
enum FrameBudget {
    Within,
    Over,
    Abuse,
}

/// What woke the session's loop.
enum Wake {
    Stop(Stop),
    Message(Option<Result<AggregatedMessage, ProtocolError>>),
    Item(Outbound),
    Tick,
    Flush,
}

enum Stop {
    /// The peer went away (or the socket failed): nothing to send.
    Gone,
    /// The peer closed: answer with its close frame, as the protocol asks.
    Echo(Option<CloseReason>),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

/// The state of one connection, owned by its task. Public so that the
/// HTTP route that accepts the upgrade (`http::routes::ws`) can start one:
/// the handshake is HTTP's, the connection's life is realtime's.
pub struct Session {
    slot: ConnectionSlot,
    agent: Agent,
    rt: Realtime,
    handle: ConnHandle,
    rx: mpsc::Receiver<Outbound>,
    /// Per subscribed ticket: the last version sent to the client (shared
    /// with the worker's hand-off, which writes events while we are parked).
    subs: Sent,
    /// Per subscribed ticket: presence wanted, and when it was last written.
    presence: HashMap<i64, PresenceSlot>,
    inbox: bool,
    last_heard: Instant,
    window: (Instant, u32),
    /// Subscribes cost a snapshot each: a subscribe/unsubscribe loop is
    /// answered `rate_limited` past this budget (contract §5a).
    subscribes: governor::DefaultDirectRateLimiter,
    /// Presence writes wait until then: the agent's presence budget is spent.
    presence_held: Option<Instant>,
}

/// Subscribes per second per connection, and the burst above it (a console
/// opening a view subscribes a handful of tickets at once).
const SUBSCRIBES_PER_SECOND: u32 = 5;
const SUBSCRIBE_BURST: u32 = 50;

struct PresenceSlot {
    wanted: PresenceState,
    written: Option<PresenceState>,
    at: Instant,
}

impl Session {
    /// A session for an accepted connection: its slot (counted against the
    /// caps), its agent, and the process's realtime side. Made on the actix
    /// worker that runs it (the hub reaches it through that worker's
    /// hand-off).
    pub fn new(slot: ConnectionSlot, agent: Agent, rt: Realtime) -> Self {
        let (tx, rx) = mpsc::channel(rt.settings.outbound_queue as usize);
        let handle = ConnHandle {
            id: slot.id,
            tx,
            overflow: Arc::default(),
            handoff: Some(Handoff::this_worker(&rt.metrics)),
        };
        Session {
            slot,
            agent,
            rt,
            handle,
            rx,
            subs: Sent::default(),
            presence: HashMap::new(),
            inbox: false,
            last_heard: Instant::now(),
            window: (Instant::now(), 0),
            presence_held: None,
            subscribes: governor::RateLimiter::direct(
                governor::Quota::per_second(
                    std::num::NonZeroU32::new(SUBSCRIBES_PER_SECOND)
                        .unwrap_or(std::num::NonZeroU32::MIN),
                )
                .allow_burst(
                    std::num::NonZeroU32::new(SUBSCRIBE_BURST).unwrap_or(std::num::NonZeroU32::MIN),
                ),
            ),
        }
    }

    /// Serve the connection until it closes: hello, frames in and out,
    /// heartbeat, presence; spawned on the actix runtime by the handshake.
    pub async fn run(
        mut self,
        mut ws: actix_ws::Session,
        mut stream: actix_ws::AggregatedMessageStream,
    ) {
        let heartbeat = self.rt.settings.heartbeat();
        let ttl = self.rt.settings.presence_ttl();
        // Ping often enough that a live client answers well within the TTL.
        let ping_every = heartbeat.min(ttl / 3);
        let mut tick = tokio::time::interval(ping_every);
        // After a long handler, one ping, not one per interval missed.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let hello = protocol::hello_frame(&self.agent, self.rt.settings.heartbeat_ms);
        let mut stop = self.send(&mut ws, hello).await;
        let registration = Registration::new(
            &self.handle,
            ws.clone(),
            self.subs.clone(),
            [self.rt.shutdown.clone(), self.slot.revoked.clone()],
        );
        // What the loop waits on lives across iterations, so that a frame
        // registers no timer and no waiter: the two deadlines are reset
        // only when they move, the three one-shot signals are awaited once.
        let overflow = self.handle.overflow.clone();
        let shutdown = self.rt.shutdown.clone();
        let revoked = self.slot.revoked.clone();
        let mut overflowed = pin!(overflow.wait());
        let mut shutting_down = pin!(shutdown.cancelled());
        let mut revocation = pin!(revoked.cancelled());
        let mut silence = pin!(tokio::time::sleep_until((self.last_heard + ttl).into()));
        // Armed only while a presence flush is due (`flush_at`).
        let mut flush = pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
        while stop.is_none() {
            let heard_by = (self.last_heard + ttl).into();
            if silence.deadline() != heard_by {
                silence.as_mut().reset(heard_by);
            }
            let flush_at = self.next_presence_flush().map(tokio::time::Instant::from);
            if let Some(at) = flush_at.filter(|at| *at != flush.deadline()) {
                flush.as_mut().reset(at);
            }
            // Parked: the worker's hand-off may write frames for us (`hub::direct`).
            registration.park(true);
            let wake = tokio::select! {
                biased;
                _ = &mut overflowed => Wake::Stop(TOO_SLOW),
                _ = &mut shutting_down => Wake::Stop(SHUTTING_DOWN),
                _ = &mut revocation => Wake::Stop(REVOKED),
                message = stream.next() => Wake::Message(message),
                Some(item) = self.rx.recv() => Wake::Item(item),
                _ = tick.tick() => Wake::Tick,
                _ = &mut silence => {
                    Wake::Stop(Stop::Close(close::HEARTBEAT_TIMEOUT, "nothing heard within the heartbeat timeout"))
                }
                _ = &mut flush, if flush_at.is_some() => Wake::Flush,
            };
            registration.park(false);
            let handling = Instant::now();
            stop = match wake {
                Wake::Stop(stop) => Some(stop),
                Wake::Message(message) => self.on_message(&mut ws, message).await,
                Wake::Item(item) => self.deliver(&mut ws, item).await,
                Wake::Tick => self.write(ws.ping(b"")).await,
                Wake::Flush => {
                    self.flush_presence();
                    None
                }
            };
            // A handler that kept the loop for longer than a ping interval
            // (a long replay to a slow reader, a wait for the database) sent
            // no ping and read no frame meanwhile: that silence is not the
            // client's (a review's slow reader was closed with 4002 at the
            // end of its replay). The ping goes out now, and the client has
            // two intervals to answer it; a client silent before and after
            // is still closed within the TTL plus the handler's length.
            if handling.elapsed() > ping_every {
                if let Some(heard) = (Instant::now() + 2 * ping_every).checked_sub(ttl) {
                    self.last_heard = self.last_heard.max(heard);
                }
            }
        }
        // No direct write after this point; the socket handle goes back
        // before the close (the response ends when every handle is gone).
        drop(registration);
        self.rt
            .hub
            .remove_connection(self.slot.id, self.subs.tickets());
        if !self.presence.is_empty() {
            self.rt.presence.remove(self.slot.id, None);
        }
        let reason = match stop {
            Some(Stop::Close(code, reason)) => Some(Some(CloseReason {
                code: CloseCode::from(code),
                description: Some(reason.into()),
            })),
            Some(Stop::Echo(reason)) => Some(reason.map(|r| CloseReason {
                code: r.code,
                description: None,
            })),
            _ => None,
        };
        if let Some(reason) = reason {
            let _ = tokio::time::timeout(CLOSE_WRITE, ws.close(reason)).await;
        }
    }

    async fn on_message(
        &mut self,
        ws: &mut actix_ws::Session,
        message: Option<Result<AggregatedMessage, ProtocolError>>,
    ) -> Option<Stop> {
        let message = match message {
            None => return Some(Stop::Gone),
            Some(Ok(m)) => m,
            Some(Err(ProtocolError::Overflow)) => {
                return Some(Stop::Close(close::TOO_BIG, "frame too large"))
            }
            // Aggregated continuations over the limit surface as an I/O error.
            Some(Err(ProtocolError::Io(e))) if e.to_string().contains("size") => {
                return Some(Stop::Close(close::TOO_BIG, "message too large"))
            }
            Some(Err(_)) => return Some(Stop::Close(1002, "protocol error")),
        };
        self.last_heard = Instant::now();
        // Every frame counts against the budget, binary and control frames
        // too (each costs an answer or a wake-up); a Close is always answered.
        let budget = match message {
            AggregatedMessage::Close(_) => FrameBudget::Within,
            _ => self.count_frame(),
        };
        match (budget, message) {
            (FrameBudget::Abuse, _) => Some(Stop::Close(close::POLICY, "too many frames")),
            (FrameBudget::Over, AggregatedMessage::Text(text)) => {
                // Named when it can be, so that a client retries that one.
                let ticket_id = protocol::parse(&text).ok().and_then(|f| f.ticket_id());
                let frame = protocol::error_frame(
                    "rate_limited",
                    "Too many frames; this one was ignored.",
                    ticket_id,
                );
                self.send(ws, frame).await
            }
            (FrameBudget::Over, AggregatedMessage::Binary(_)) => {
                let frame = protocol::error_frame(
                    "rate_limited",
                    "Too many frames; this one was ignored.",
                    None,
                );
                self.send(ws, frame).await
            }
            // Pings and pongs past the budget go unanswered.
            (FrameBudget::Over, _) => None,
            (FrameBudget::Within, AggregatedMessage::Text(text)) => self.on_frame(ws, &text).await,
            (FrameBudget::Within, AggregatedMessage::Binary(_)) => {
                self.send(
                    ws,
                    protocol::error_frame("unsupported_frame", "Frames must be JSON text.", None),
                )
                .await
            }
            (FrameBudget::Within, AggregatedMessage::Ping(bytes)) => {
                self.write(ws.pong(&bytes)).await
            }
            (FrameBudget::Within, AggregatedMessage::Pong(_)) => None,
            (FrameBudget::Within, AggregatedMessage::Close(reason)) => Some(Stop::Echo(reason)),
        }
    }

    /// Count a client frame against the per-second budget: error frames
    /// past the limit, a close past twice the limit.
    fn count_frame(&mut self) -> FrameBudget {
        let limit = self.rt.settings.max_frames_per_second;
        if self.window.0.elapsed() >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
        if self.window.1 > limit.saturating_mul(2) {
            FrameBudget::Abuse
        } else if self.window.1 > limit {
            FrameBudget::Over
        } else {
            FrameBudget::Within
        }
    }

    async fn on_frame(&mut self, ws: &mut actix_ws::Session, text: &str) -> Option<Stop> {
        let frame = match protocol::parse(text) {
            Ok(frame) => frame,
            Err((code, message)) => {
                return self
                    .send(ws, protocol::error_frame(code, &message, None))
                    .await
            }
        };
        match frame {
            ClientFrame::Ping {} => self.send(ws, r#"{"type":"pong"}"#.into()).await,
            ClientFrame::Subscribe { ticket_id, since } => {
                // The connection's budget, then the agent's over all its
                // connections (`budget`): a refused subscribe names its
                // ticket, so that the client retries that one.
                let refusal = if self.subscribes.check().is_err() {
                    Some("Too many subscribes: slow down and try again in a second.")
                } else if !self.rt.budgets.subscribe(self.agent.id) {
                    Some("Too many subscribes by this agent over all its connections: slow down and try again in a second.")
                } else {
                    None
                };
                if let Some(message) = refusal {
                    self.rt.metrics.rate_limited.inc();
                    return self
                        .send(
                            ws,
                            protocol::error_frame("rate_limited", message, Some(ticket_id)),
                        )
                        .await;
                }
                self.subscribe(ws, ticket_id, since).await
            }
            ClientFrame::Unsubscribe { ticket_id } => {
                // After a `reset` only the viewer is left: unsubscribing removes it.
                let viewer = self.drop_viewer(ticket_id);
                if self.subs.remove(ticket_id).is_none() && !viewer {
                    return self
                        .send(
                            ws,
                            protocol::error_frame(
                                "not_subscribed",
                                "You are not subscribed to this ticket.",
                                Some(ticket_id),
                            ),
                        )
                        .await;
                }
                self.rt.hub.unsubscribe(ticket_id, self.slot.id);
                None
            }
            ClientFrame::SubscribeInbox {} => {
                self.inbox = true;
                self.rt.hub.set_inbox(&self.handle, true);
                None
            }
            ClientFrame::UnsubscribeInbox {} => {
                self.inbox = false;
                self.rt.hub.set_inbox(&self.handle, false);
                None
            }
            ClientFrame::Presence { ticket_id, state } => {
                if self.agent.is_service() {
                    return self
                        .send(
                            ws,
                            protocol::error_frame(
                                "forbidden",
                                "Service tokens are not shown as viewers: presence is for agents.",
                                Some(ticket_id),
                            ),
                        )
                        .await;
                }
                match self.presence.get_mut(&ticket_id) {
                    Some(slot) => slot.wanted = state,
                    None => {
                        return self
                            .send(
                                ws,
                                protocol::error_frame(
                                    "not_subscribed",
                                    "Subscribe to the ticket before sending presence.",
                                    Some(ticket_id),
                                ),
                            )
                            .await
                    }
                }
                self.flush_presence();
                None
            }
        }
    }

    /// Send a queued item, skipping versions already sent (queued before a
    /// re-subscribe read them again). The hub queues a subscription's
    /// versions gaplessly; a gap here would be a bug, and the client is
    /// told to resume rather than shown it.
    async fn deliver(&mut self, ws: &mut actix_ws::Session, item: Outbound) -> Option<Stop> {
        match item {
            Outbound::Frame(frame) => self.send(ws, frame).await,
            Outbound::Reset { ticket_id, version } => {
                // Only a ticket still subscribed: an unsubscribe may have
                // crossed the reset in the queue.
                if self.subs.contains(ticket_id) {
                    self.reset(ws, ticket_id, version).await
                } else {
                    None
                }
            }
            Outbound::Event {
                ticket_id,
                version,
                frame,
            } => {
                let last = self.subs.get(ticket_id)?;
                if version <= last {
                    return None;
                }
                if version > last + 1 {
                    tracing::error!(
                        ticket_id,
                        last,
                        version,
                        "gap in live events (a bug): closing so that the client resumes"
                    );
                    return Some(Stop::Close(
                        close::SERVER_ERROR,
                        "missed events: resume with since",
                    ));
                }
                let stop = self.send(ws, frame).await;
                if stop.is_none() {
                    self.subs.insert(ticket_id, version);
                }
                stop
            }
        }
    }

    /// Send `reset` for a ticket and forget the subscription here and in
    /// the hub: the client subscribes again without `since`. The viewer
    /// stays (a reset is not the agent leaving, and the client is back at
    /// once); an unsubscribe, a refused subscribe or the close removes it.
    async fn reset(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        version: i64,
    ) -> Option<Stop> {
        self.subs.remove(ticket_id);
        self.rt.hub.unsubscribe(ticket_id, self.slot.id);
        self.rt.metrics.resets.inc();
        tracing::info!(ticket_id, version, "reset sent");
        self.send(ws, protocol::reset_frame(ticket_id, version))
            .await
    }

    /// Every write to the socket goes through here. A client that stops
    /// reading must not hold the task: the write gives up when the hub
    /// declares the connection too slow (1013), at shutdown (1001), or when
    /// nothing could be written for the TTL (the peer is gone: drop it).
    async fn send(&self, ws: &mut actix_ws::Session, frame: ByteString) -> Option<Stop> {
        self.write(ws.text(frame)).await
    }

    async fn write<F>(&self, write: F) -> Option<Stop>
    where
        F: std::future::Future<Output = Result<(), actix_ws::Closed>>,
    {
        // A revoked agent gets nothing more, also in the middle of a long
        // replay, where the loop that watches for revocation does not run
        // (found by a review: a disabled agent read on for minutes).
        if self.slot.revoked.is_cancelled() {
            return Some(REVOKED);
        }
        // Fast path: the socket's channel has room (the usual case), so no
        // timer or watcher is set up for this write.
        let mut write = std::pin::pin!(write);
        if let std::task::Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
            return result.err().map(|_| Stop::Gone);
        }
        let overflow = self.handle.overflow.clone();
        tokio::select! {
            result = write => result.err().map(|_| Stop::Gone),
            _ = overflow.wait() => Some(TOO_SLOW),
            _ = self.rt.shutdown.cancelled() => Some(SHUTTING_DOWN),
            _ = self.slot.revoked.cancelled() => Some(REVOKED),
            _ = tokio::time::sleep(self.rt.settings.presence_ttl()) => Some(Stop::Gone),
        }
    }

    /// Stop showing this connection as a viewer of the ticket; whether it was one.
    fn drop_viewer(&mut self, ticket_id: i64) -> bool {
        let viewer = self.presence.remove(&ticket_id).is_some();
        if viewer {
            self.rt.presence.remove(self.slot.id, Some(ticket_id));
        }
        viewer
    }

    /// Write presence states that changed, at most once per interval each
    /// and within the agent's presence budget: past it the changes wait (the
    /// latest state of each is written when the budget allows).
    fn flush_presence(&mut self) {
        let now = Instant::now();
        if self.presence_held.is_some_and(|until| until > now) {
            return;
        }
        self.presence_held = None;
        // The longest waiting first: within a spent budget, a ticket that
        // keeps changing must not take every write from the others (found
        // by a review: 13 of 20 states waited for the end of a flood).
        let mut due: Vec<(Instant, i64)> = self
            .presence
            .iter()
            .filter(|(_, s)| {
                s.written != Some(s.wanted) && now.duration_since(s.at) >= PRESENCE_MIN_INTERVAL
            })
            .map(|(ticket_id, s)| (s.at, *ticket_id))
            .collect();
        due.sort_unstable();
        for (_, ticket_id) in due {
            if let Err(until) = self.rt.budgets.presence(self.agent.id) {
                self.rt.metrics.presence_deferred.inc();
                self.presence_held = Some(until);
                return;
            }
            if let Some(slot) = self.presence.get_mut(&ticket_id) {
                self.rt
                    .presence
                    .set(self.slot.id, ticket_id, self.agent.id, slot.wanted);
                slot.written = Some(slot.wanted);
                slot.at = now;
            }
        }
    }

    fn next_presence_flush(&self) -> Option<Instant> {
        let due = self
            .presence
            .values()
            .filter(|s| s.written != Some(s.wanted))
            .map(|s| s.at + PRESENCE_MIN_INTERVAL)
            .min()?;
        Some(self.presence_held.map_or(due, |until| until.max(due)))
    }
}

/// A refused subscription as an `error` frame (the connection stays).
fn domain_error_frame(error: &DomainError, ticket_id: i64) -> ByteString {
    match error {
        DomainError::Rejected {
            kind: Rejection::NotFound,
            ..
        } => protocol::error_frame("not_found", "There is no such ticket.", Some(ticket_id)),
        DomainError::Rejected { kind, message, .. } => {
            protocol::error_frame(kind.code(), message, Some(ticket_id))
        }
        other => {
            tracing::warn!(error = %other, "subscription failed");
            protocol::error_frame(
                "unavailable",
                "The ticket could not be read now; retry.",
                Some(ticket_id),
            )
        }
    }
}
