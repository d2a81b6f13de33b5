//! One WebSocket connection: the upgrade (Origin allow-list, token), then a
//! single task that selects over client frames, its bounded outbound queue,
//! the heartbeat, presence flushes and shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::hub::{ConnHandle, Outbound};
use super::protocol::{self, close, ClientFrame, PresenceState};
use super::{ConnectionSlot, Realtime};
use crate::domain::{Agent, DomainError, Rejection};
use crate::http::auth::{authenticate, bearer_token};
use crate::http::{ApiError, AppState};

/// Events read per query while replaying a backlog.
const REPLAY_BATCH: i32 = 1000;
/// Presence writes per (connection, ticket) are at most this frequent.
const PRESENCE_MIN_INTERVAL: Duration = Duration::from_millis(200);

/// `GET /ws`: check the Origin and the token, then hand the socket to a session task.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let query_token = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("access_token").cloned());
    let token = bearer_token(&req).map(str::to_owned).or(query_token);
    let agent = authenticate(&state, token.as_deref()).await?;
    let slot = state.realtime.open_connection().ok_or_else(|| {
        ApiError::Unavailable("Too many WebSocket connections; retry later.".into())
    })?;
    let (response, ws, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("invalid_upgrade", e.to_string()))?;
    let max = state.settings.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let session = Session::new(slot, agent, state.realtime.clone());
    actix_web::rt::spawn(session.run(ws, stream));
    Ok(response)
}

/// Browsers always send `Origin` on WebSockets: it must be allowed. Clients
/// that send none (services, tools) are not browsers and cannot be hijacked.
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get("origin") else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    if allowed_origins(state).iter().any(|o| o == origin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "This Origin may not open WebSockets here (LIVEDESK_ALLOWED_ORIGINS).",
        ))
    }
}

/// The configured allow-list, or the server's own origins by default.
pub fn allowed_origins(state: &AppState) -> Vec<String> {
    let settings = &state.settings;
    if !settings.allowed_origins.is_empty() {
        return settings
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .collect();
    }
    let bind = settings.bind;
    let port = bind.port();
    let mut own = vec![format!("http://{bind}")];
    if bind.ip().is_loopback() || bind.ip().is_unspecified() {
        own.push(format!("http://localhost:{port}"));
        own.push(format!("http://127.0.0.1:{port}"));
        own.push(format!("http://[::1]:{port}"));
    }
    own
}

enum Stop {
    /// The peer went away (or the socket failed): nothing to send.
    Gone,
    /// The peer closed: answer with its close frame, as the protocol asks.
    Echo(Option<CloseReason>),
    /// Close with this code and reason.
    Close(u16, &'static str),
}

struct Session {
    slot: ConnectionSlot,
    agent: Agent,
    rt: Realtime,
    handle: ConnHandle,
    rx: mpsc::Receiver<Outbound>,
    /// Per subscribed ticket: the last version sent to the client.
    subs: HashMap<i64, i64>,
    /// Per subscribed ticket: presence wanted, and when it was last written.
    presence: HashMap<i64, PresenceSlot>,
    inbox: bool,
    last_heard: Instant,
    window: (Instant, u32),
}

struct PresenceSlot {
    wanted: PresenceState,
    written: Option<PresenceState>,
    at: Instant,
}

impl Session {
    fn new(slot: ConnectionSlot, agent: Agent, rt: Realtime) -> Self {
        let (tx, rx) = mpsc::channel(rt.settings.outbound_queue as usize);
        let handle = ConnHandle {
            id: slot.id,
            tx,
            overflow: Arc::default(),
        };
        Session {
            slot,
            agent,
            rt,
            handle,
            rx,
            subs: HashMap::new(),
            presence: HashMap::new(),
            inbox: false,
            last_heard: Instant::now(),
            window: (Instant::now(), 0),
        }
    }

    async fn run(
        mut self,
        mut ws: actix_ws::Session,
        mut stream: actix_ws::AggregatedMessageStream,
    ) {
        let heartbeat = self.rt.settings.heartbeat();
        let ttl = self.rt.settings.presence_ttl();
        // Ping often enough that a live client answers well within the TTL.
        let mut tick = tokio::time::interval(heartbeat.min(ttl / 3));
        tick.tick().await;
        let hello = protocol::hello_frame(&self.agent, self.rt.settings.heartbeat_ms);
        let mut stop = match ws.text(hello).await {
            Ok(()) => None,
            Err(_) => Some(Stop::Gone),
        };
        let overflow = self.handle.overflow.clone();
        let shutdown = self.rt.shutdown.clone();
        while stop.is_none() {
            let flush_at = self.next_presence_flush();
            stop = tokio::select! {
                biased;
                _ = overflow.wait() => Some(Stop::Close(close::TRY_AGAIN, "too slow: reconnect and resume with since")),
                _ = shutdown.cancelled() => Some(Stop::Close(close::GOING_AWAY, "server shutting down: resume with since")),
                message = stream.next() => self.on_message(&mut ws, message).await,
                Some(item) = self.rx.recv() => self.deliver(&mut ws, item).await,
                _ = tick.tick() => ws.ping(b"").await.err().map(|_| Stop::Gone),
                _ = tokio::time::sleep_until((self.last_heard + ttl).into()) => {
                    Some(Stop::Close(close::HEARTBEAT_TIMEOUT, "nothing heard within the heartbeat timeout"))
                }
                _ = super::sleep_until(flush_at) => { self.flush_presence(); None }
            };
        }
        self.rt
            .hub
            .remove_connection(self.slot.id, self.subs.keys().copied());
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
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(reason)).await;
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
        match message {
            AggregatedMessage::Text(text) => {
                if let Some(stop) = self.rate_limit(ws).await {
                    return Some(stop);
                }
                self.on_frame(ws, &text).await
            }
            AggregatedMessage::Binary(_) => {
                send(
                    ws,
                    protocol::error_frame("unsupported_frame", "Frames must be JSON text.", None),
                )
                .await
            }
            AggregatedMessage::Ping(bytes) => ws.pong(&bytes).await.err().map(|_| Stop::Gone),
            AggregatedMessage::Pong(_) => None,
            AggregatedMessage::Close(reason) => Some(Stop::Echo(reason)),
        }
    }

    /// Error frames past the per-second limit, a close past twice the limit.
    async fn rate_limit(&mut self, ws: &mut actix_ws::Session) -> Option<Stop> {
        let limit = self.rt.settings.max_frames_per_second;
        if self.window.0.elapsed() >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
        if self.window.1 > limit.saturating_mul(2) {
            return Some(Stop::Close(close::POLICY, "too many frames"));
        }
        if self.window.1 > limit {
            let frame = protocol::error_frame(
                "rate_limited",
                "Too many frames; this one was ignored.",
                None,
            );
            return send(ws, frame).await;
        }
        None
    }

    async fn on_frame(&mut self, ws: &mut actix_ws::Session, text: &str) -> Option<Stop> {
        if self.window.1 > self.rt.settings.max_frames_per_second {
            return None;
        }
        let frame = match protocol::parse(text) {
            Ok(frame) => frame,
            Err((code, message)) => {
                return send(ws, protocol::error_frame(code, &message, None)).await
            }
        };
        match frame {
            ClientFrame::Ping {} => send(ws, r#"{"type":"pong"}"#.into()).await,
            ClientFrame::Subscribe { ticket_id, since } => {
                self.subscribe(ws, ticket_id, since).await
            }
            ClientFrame::Unsubscribe { ticket_id } => {
                if self.subs.remove(&ticket_id).is_none() {
                    return send(
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
                if self.presence.remove(&ticket_id).is_some() {
                    self.rt.presence.remove(self.slot.id, Some(ticket_id));
                }
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
                match self.presence.get_mut(&ticket_id) {
                    Some(slot) => slot.wanted = state,
                    None => {
                        return send(
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

    async fn subscribe(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        since: Option<i64>,
    ) -> Option<Stop> {
        if !self.subs.contains_key(&ticket_id)
            && self.subs.len() >= self.rt.settings.max_subscriptions
        {
            let message = format!(
                "At most {} subscriptions per connection.",
                self.rt.settings.max_subscriptions
            );
            return send(
                ws,
                protocol::error_frame("too_many_subscriptions", &message, Some(ticket_id)),
            )
            .await;
        }
        if since.is_some_and(|s| s < 0) {
            return send(
                ws,
                protocol::error_frame(
                    "invalid_frame",
                    "since must be a version ≥ 0.",
                    Some(ticket_id),
                ),
            )
            .await;
        }
        // Register first: every event committed after our read below reaches us live.
        self.subs.remove(&ticket_id);
        self.rt.hub.subscribe(ticket_id, &self.handle);
        let result = match since {
            None => self.send_snapshot(ws, ticket_id).await,
            Some(since) => self.send_backlog(ws, ticket_id, since).await,
        };
        let version = match result {
            Ok(Ok(version)) => version,
            Ok(Err(stop)) => return Some(stop),
            Err(e) => {
                // Refused: the ticket is not watched by this connection any more
                // (even if it was before this frame), presence included.
                self.rt.hub.unsubscribe(ticket_id, self.slot.id);
                if self.presence.remove(&ticket_id).is_some() {
                    self.rt.presence.remove(self.slot.id, Some(ticket_id));
                }
                return send(ws, domain_error_frame(&e, ticket_id)).await;
            }
        };
        self.subs.insert(ticket_id, version);
        let (ahead, due) = self.rt.hub.seed(ticket_id, version);
        if due {
            self.rt.request_catch_up([ticket_id], false);
        }
        if let Some(target) = ahead {
            if let Some(stop) = self.replay(ws, ticket_id, Some(target)).await {
                return Some(stop);
            }
        }
        self.presence.entry(ticket_id).or_insert(PresenceSlot {
            wanted: PresenceState::Viewing,
            written: None,
            at: Instant::now() - PRESENCE_MIN_INTERVAL,
        });
        self.flush_presence();
        None
    }

    /// `subscribed` then `snapshot`; the version the client now has.
    async fn send_snapshot(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
    ) -> Result<Result<i64, Stop>, DomainError> {
        // Read, then give the connection back before writing to the socket:
        // a slow client must not hold a pooled connection.
        let (version, frame): (i64, String) = {
            let client = self.rt.db.client().await?;
            let statement = client
                .prepare_cached("SELECT version, frame FROM ld_ws_snapshot($1)")
                .await?;
            let row = client.query_one(&statement, &[&ticket_id]).await?;
            (row.get(0), row.get(1))
        };
        if let Some(stop) = send(ws, protocol::subscribed_frame(ticket_id, version)).await {
            return Ok(Err(stop));
        }
        Ok(match send(ws, frame.into()).await {
            Some(stop) => Err(stop),
            None => Ok(version),
        })
    }

    /// `subscribed` then every event after `since`; the version the client now has.
    async fn send_backlog(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        since: i64,
    ) -> Result<Result<i64, Stop>, DomainError> {
        let current: i64 = {
            let client = self.rt.db.client().await?;
            let statement = client
                .prepare_cached("SELECT ld_ticket_version($1)")
                .await?;
            client.query_one(&statement, &[&ticket_id]).await?.get(0)
        };
        if since > current {
            return Err(DomainError::invalid(
                "since",
                format!("since ({since}) is ahead of the ticket's version ({current})."),
            ));
        }
        if let Some(stop) = send(ws, protocol::subscribed_frame(ticket_id, since)).await {
            return Ok(Err(stop));
        }
        self.subs.insert(ticket_id, since);
        let stop = self.replay(ws, ticket_id, None).await;
        let version = self.subs.remove(&ticket_id).unwrap_or(since);
        Ok(match stop {
            Some(stop) => Err(stop),
            None => Ok(version),
        })
    }

    /// Send events from the log after the client's cursor, up to `until` (or the end).
    async fn replay(
        &mut self,
        ws: &mut actix_ws::Session,
        ticket_id: i64,
        until: Option<i64>,
    ) -> Option<Stop> {
        loop {
            let &after = self.subs.get(&ticket_id)?;
            if until.is_some_and(|u| after >= u) {
                return None;
            }
            let rows = match self.read_events(ticket_id, after).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, ticket_id, "replay failed");
                    return Some(Stop::Close(
                        close::SERVER_ERROR,
                        "could not read events: resume with since",
                    ));
                }
            };
            let done = rows.len() < REPLAY_BATCH as usize;
            for (version, frame) in rows {
                if let Some(stop) = send(ws, frame.into()).await {
                    return Some(stop);
                }
                self.subs.insert(ticket_id, version);
            }
            if done {
                return None;
            }
        }
    }

    async fn read_events(
        &self,
        ticket_id: i64,
        after: i64,
    ) -> Result<Vec<(i64, String)>, DomainError> {
        let client = self.rt.db.client().await?;
        let statement = client
            .prepare_cached("SELECT version, frame FROM ld_event_frames(ARRAY[$1::bigint], ARRAY[$2::bigint], $3)")
            .await?;
        let rows = client
            .query(&statement, &[&ticket_id, &after, &REPLAY_BATCH])
            .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Send a queued item, skipping versions already sent and filling any gap from the log.
    async fn deliver(&mut self, ws: &mut actix_ws::Session, item: Outbound) -> Option<Stop> {
        match item {
            Outbound::Frame(frame) => self.send_or_overflow(ws, frame).await,
            Outbound::Event {
                ticket_id,
                version,
                frame,
            } => {
                let last = *self.subs.get(&ticket_id)?;
                if version <= last {
                    return None;
                }
                if version > last + 1 {
                    tracing::warn!(
                        ticket_id,
                        last,
                        version,
                        "gap in live events; filling from the log"
                    );
                    if let Some(stop) = self.replay(ws, ticket_id, Some(version - 1)).await {
                        return Some(stop);
                    }
                }
                let stop = self.send_or_overflow(ws, frame).await;
                if stop.is_none() {
                    self.subs.insert(ticket_id, version);
                }
                stop
            }
        }
    }

    /// A write that gives up when the hub declares this connection too slow.
    async fn send_or_overflow(
        &self,
        ws: &mut actix_ws::Session,
        frame: ByteString,
    ) -> Option<Stop> {
        let overflow = self.handle.overflow.clone();
        tokio::select! {
            result = ws.text(frame) => result.err().map(|_| Stop::Gone),
            _ = overflow.wait() => Some(Stop::Close(close::TRY_AGAIN, "too slow: reconnect and resume with since")),
        }
    }

    /// Write presence states that changed, at most once per interval each.
    fn flush_presence(&mut self) {
        let now = Instant::now();
        for (ticket_id, slot) in &mut self.presence {
            if slot.written != Some(slot.wanted)
                && now.duration_since(slot.at) >= PRESENCE_MIN_INTERVAL
            {
                self.rt
                    .presence
                    .set(self.slot.id, *ticket_id, self.agent.id, slot.wanted);
                slot.written = Some(slot.wanted);
                slot.at = now;
            }
        }
    }

    fn next_presence_flush(&self) -> Option<Instant> {
        self.presence
            .values()
            .filter(|s| s.written != Some(s.wanted))
            .map(|s| s.at + PRESENCE_MIN_INTERVAL)
            .min()
    }
}

async fn send(ws: &mut actix_ws::Session, frame: ByteString) -> Option<Stop> {
    ws.text(frame).await.err().map(|_| Stop::Gone)
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
