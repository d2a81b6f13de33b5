//! The live side: one LISTEN connection per process (and, on the logical
//! bus, one replication stream), a fetcher that reads the event log in
//! batches, the hub that fans events out, presence, and the WebSocket
//! sessions.
//!
//! NOTIFY (or the logical bus's message) is only a wake-up. The truth is
//! `ticket_events`: every delivery is read from it by version, so a lost
//! wake-up (listener or stream down, database restart) costs a catch-up
//! read, never an event.

pub mod budget;
pub mod bus;
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
pub mod stream;
pub mod work;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Bus, Settings};
use crate::db::Database;
use crate::metrics::Metrics;
use hub::Hub;

pub use work::Verify;

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
    /// The history the bus last saw (`rewind`).
    history: rewind::History,
    listener_up: AtomicBool,
    /// The logical bus's stream is up (only needed while the database's
    /// bus is `logical`).
    stream_up: AtomicBool,
    /// The database's bus now (set at start, followed on `livedesk_bus`).
    bus: tokio::sync::watch::Sender<Bus>,
    /// The fetcher's in-tray: every wake-up of the read side enters here.
    pub work: work::Work,
    next_connection: AtomicU64,
    connections: AtomicUsize,
    /// Open connections by agent: the per-agent cap, and 4001 closes when a
    /// token stops working (`revocation`).
    pub revocation: revocation::Registry,
    /// What one agent may cost this process, and the read slots.
    pub budgets: budget::Budgets,
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
    /// Check and set the database's bus (`bus::prepare`: a configuration
    /// that cannot run is a start-up error), then start the listener, the
    /// stream, the fetcher and presence upkeep on the current runtime.
    pub async fn start(
        db: Database,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Realtime, bus::BusError> {
        bus::prepare(&db, &settings).await?;
        let (bus, _) = tokio::sync::watch::channel(settings.bus);
        let budgets = budget::Budgets::new(&settings);
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
                history: rewind::History::default(),
                listener_up: AtomicBool::new(false),
                stream_up: AtomicBool::new(false),
                bus,
                work: work::Work::default(),
                next_connection: AtomicU64::new(1),
                connections: AtomicUsize::new(0),
                revocation: revocation::Registry::default(),
                budgets,
            }),
        };
        let tasks = vec![
            tokio::spawn(listener::run(realtime.clone())),
            tokio::spawn(stream::run(realtime.clone())),
            tokio::spawn(fetcher::run(realtime.clone())),
            tokio::spawn(revocation::sweep(realtime.clone())),
        ];
        *realtime.bus_tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        Ok(realtime)
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

    /// Whether the bus is up (for `/healthz`, and before the fetcher reads
    /// events): the LISTEN connection, and while the database's bus is
    /// `logical` the stream too. While it is down nothing is read: the
    /// database may be restarting or restored, and the cursors are checked
    /// when it is back.
    pub fn listener_up(&self) -> bool {
        self.listener_up.load(Ordering::Acquire)
            && (*self.bus.borrow() == Bus::Notify || self.stream_up.load(Ordering::Acquire))
    }

    fn set_listener_up(&self, up: bool) {
        self.listener_up.store(up, Ordering::Release);
        self.metrics.listener_up.set(up as i64);
    }

    fn set_stream_up(&self, up: bool) {
        self.stream_up.store(up, Ordering::Release);
    }

    /// The database's bus as this process follows it.
    pub fn bus_mode(&self) -> Bus {
        *self.bus.borrow()
    }

    fn bus_watch(&self) -> tokio::sync::watch::Receiver<Bus> {
        self.bus.subscribe()
    }

    /// Follow the database's bus, as read from `bus_settings` at a LISTEN
    /// (re)connect and whenever `livedesk_bus` announces a switch (by a
    /// process that started with another bus). Never from the announcement
    /// itself: anyone may NOTIFY on any channel.
    pub fn follow_bus(&self, mode: Bus) {
        let changed = self.bus.send_if_modified(|now| {
            let changed = *now != mode;
            *now = mode;
            changed
        });
        if changed {
            if mode != self.settings.bus {
                tracing::warn!(
                    configured = self.settings.bus.as_str(),
                    database = mode.as_str(),
                    "another livedesk process set the database's event bus; following it"
                );
            } else {
                tracing::info!(bus = mode.as_str(), "following the database's event bus");
            }
            // Anything announced on the other bus meanwhile is in the log.
            self.work.catch_up_everything(false);
        }
    }

    /// A `livedesk_events` message arrived on the logical stream: the same
    /// wake-up as a notification, with the version it announced (the
    /// fetcher reads again shortly if a read does not reach it yet).
    pub fn on_stream_event(&self, payload: &str) {
        let Some((ticket_id, version)) = listener::event_of(payload) else {
            tracing::warn!(payload, "ignoring a malformed livedesk_events message");
            return;
        };
        self.wake_for(ticket_id, Some(version));
    }

    /// Hand a ticket's new event to the fetcher when anyone here cares.
    fn wake_for(&self, ticket_id: i64, version: Option<i64>) {
        let (watched, inbox) = self.hub.interest(ticket_id);
        self.work.changed(ticket_id, version, watched, inbox);
    }

    /// A notification arrived on one of our channels.
    pub fn on_notification(&self, channel: &str, payload: &str) {
        match channel {
            "livedesk_events" => match listener::ticket_of(payload) {
                Some(ticket_id) => self.wake_for(ticket_id, None),
                None => tracing::warn!(payload, "ignoring a malformed livedesk_events payload"),
            },
            "livedesk_presence" => {
                if let Ok(ticket_id) = payload.trim().parse::<i64>() {
                    self.work.presence(ticket_id);
                }
            }
            "livedesk_fields" => self.work.fields(),
            _ => {}
        }
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
