//! The live side: one LISTEN connection per process, a fetcher that reads the
//! event log in batches, the hub that fans events out, presence, and the
//! WebSocket sessions.
//!
//! NOTIFY is only a wake-up. The truth is `ticket_events`: every delivery is
//! read from it by version, so a lost notification (listener down, database
//! restart) costs a catch-up read, never an event.

pub mod event_log;
pub mod fetcher;
pub mod fields;
pub mod hub;
pub mod listener;
pub mod presence;
pub mod protocol;
pub mod revocation;
pub mod rewind;
pub mod session;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::db::Database;
use crate::metrics::Metrics;
use hub::Hub;

/// Tickets whose events, inbox summaries or presence lists need a read.
#[derive(Debug, Default)]
pub struct Pending {
    pub events: HashSet<i64>,
    pub inbox: HashSet<i64>,
    pub presence: HashSet<i64>,
    /// Check the hub's cursors against the database before reading on.
    pub verify: Option<Verify>,
}

/// What the fetcher checks after the LISTEN connection came back.
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

impl Pending {
    fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.inbox.is_empty()
            && self.presence.is_empty()
            && self.verify.is_none()
    }
}

/// Shared state of the realtime side of one process.
pub struct Inner {
    pub db: Database,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub presence: presence::Presence,
    /// Cancelled when the process stops: sessions close with 1001.
    pub shutdown: CancellationToken,
    /// Every WebSocket session task, awaited at shutdown before presence is
    /// removed (a session still running could publish a viewer again).
    pub sessions: TaskTracker,
    /// Stops the listener and the fetcher, after the sessions and presence.
    bus_stop: CancellationToken,
    bus_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The history the LISTEN connection last saw (`rewind::identity`).
    identity: Mutex<Option<String>>,
    listener_up: AtomicBool,
    pending: Mutex<Pending>,
    wake: Notify,
    next_connection: AtomicU64,
    connections: AtomicUsize,
    /// Open connections by agent: the per-agent cap, and 4001 closes when a
    /// token stops working (`revocation`).
    pub revocation: revocation::Registry,
    /// Field definitions changed: `fields::run` sends them to inbox subscribers.
    pub fields_changed: Notify,
}

/// How long sessions get to send their close frames at shutdown.
const SESSIONS_GRACE: Duration = Duration::from_secs(3);

/// A cheap handle on the realtime side.
#[derive(Clone)]
pub struct Realtime {
    inner: Arc<Inner>,
}

impl std::ops::Deref for Realtime {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Realtime {
    /// Start the listener, the fetcher and presence upkeep on the current runtime.
    pub async fn start(
        db: Database,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Realtime {
        let presence =
            presence::Presence::start(db.clone(), settings.clone(), metrics.clone()).await;
        let realtime = Realtime {
            inner: Arc::new(Inner {
                db,
                hub: Hub::default(),
                metrics,
                settings,
                presence,
                shutdown,
                sessions: TaskTracker::new(),
                bus_stop: CancellationToken::new(),
                bus_tasks: Mutex::new(Vec::new()),
                identity: Mutex::new(None),
                listener_up: AtomicBool::new(false),
                pending: Mutex::new(Pending::default()),
                wake: Notify::new(),
                next_connection: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                revocation: revocation::Registry::default(),
                fields_changed: Notify::new(),
            }),
        };
        let tasks = vec![
            tokio::spawn(listener::run(realtime.clone())),
            tokio::spawn(fetcher::run(realtime.clone())),
            tokio::spawn(revocation::sweep(realtime.clone())),
            tokio::spawn(fields::run(realtime.clone())),
        ];
        *realtime.bus_tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        realtime
    }

    /// Stop in order, each step awaited: close every WebSocket with 1001
    /// and wait for its task, remove this process's viewers, then close the
    /// LISTEN connection and stop the fetcher. The caller closes the pool
    /// (and stops an embedded PostgreSQL) after this returns.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.sessions.close();
        if tokio::time::timeout(SESSIONS_GRACE, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.sessions.len(),
                "WebSocket sessions did not end in time; stopping without them"
            );
        }
        self.presence.stop().await;
        self.bus_stop.cancel();
        let tasks = std::mem::take(&mut *self.bus_tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
        tracing::debug!("realtime stopped");
    }

    /// Whether the LISTEN connection is up (for `/healthz`).
    pub fn listener_up(&self) -> bool {
        self.listener_up.load(Ordering::Acquire)
    }

    fn set_listener_up(&self, up: bool) {
        self.listener_up.store(up, Ordering::Release);
        self.metrics.listener_up.set(up as i64);
    }

    /// The current viewers of a ticket (empty if they cannot be read now).
    pub async fn viewers(&self, ticket_id: i64) -> serde_json::Value {
        self.presence
            .viewers(ticket_id)
            .await
            .unwrap_or_else(|_| serde_json::json!([]))
    }

    /// A notification arrived on one of our channels.
    pub fn on_notification(&self, channel: &str, payload: &str) {
        let mut pending = self.lock_pending();
        match channel {
            "livedesk_events" => {
                let Some(ticket_id) = listener::ticket_of(payload) else {
                    tracing::warn!(payload, "ignoring a malformed livedesk_events payload");
                    return;
                };
                let (watched, inbox) = self.hub.interest(ticket_id);
                if watched {
                    pending.events.insert(ticket_id);
                }
                if inbox {
                    pending.inbox.insert(ticket_id);
                }
            }
            "livedesk_presence" => {
                if let Ok(ticket_id) = payload.trim().parse::<i64>() {
                    pending.presence.insert(ticket_id);
                }
            }
            "livedesk_fields" => {
                self.fields_changed.notify_one();
                return;
            }
            _ => return,
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Ask the fetcher to check every cursor against the database (before
    /// the catch-up read that follows a reconnect).
    pub fn request_verify(&self, verify: Verify) {
        let mut pending = self.lock_pending();
        pending.verify = Verify::merge(pending.verify, Some(verify));
    }

    /// Ask the fetcher to read these tickets' events (and presence) now.
    pub fn request_catch_up(&self, tickets: impl IntoIterator<Item = i64>, presence: bool) {
        let mut pending = self.lock_pending();
        for ticket in tickets {
            pending.events.insert(ticket);
            if presence {
                pending.presence.insert(ticket);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.lock_pending())
    }

    /// Reserve a connection slot for `agent`, authenticated by the token
    /// with this digest; refused when the process or the agent is at its cap.
    pub fn open_connection(
        &self,
        agent: i64,
        token: [u8; 32],
    ) -> Result<ConnectionSlot, SlotRefused> {
        let count = self.connections.fetch_add(1, Ordering::AcqRel);
        if count >= self.settings.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotRefused::Process);
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let Some(revoked) =
            self.revocation
                .open(agent, id, token, self.settings.max_connections_per_agent)
        else {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(SlotRefused::Agent);
        };
        self.metrics.ws_connections.inc();
        Ok(ConnectionSlot {
            id,
            agent,
            revoked,
            realtime: self.clone(),
        })
    }
}

/// Why no connection slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRefused {
    /// The process holds `max_connections`.
    Process,
    /// The agent holds `max_connections_per_agent` on this process.
    Agent,
}

/// A reserved connection; frees its slot when dropped.
pub struct ConnectionSlot {
    pub id: hub::ConnId,
    agent: i64,
    /// Cancelled when the connection's token stops working: close with 4001.
    pub revoked: tokio_util::sync::CancellationToken,
    realtime: Realtime,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.realtime.revocation.close(self.agent, self.id);
        self.realtime.connections.fetch_sub(1, Ordering::AcqRel);
        self.realtime.metrics.ws_connections.dec();
    }
}

/// Sleep until `at`, or forever when there is nothing to wait for (a
/// `select!` branch that is armed only sometimes).
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
