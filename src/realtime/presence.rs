//! Presence: who is viewing, typing or idle on a ticket, shared by every
//! livedesk process through an UNLOGGED table and `NOTIFY livedesk_presence`.
//!
//! Sessions change this process's published state at once (in memory) and
//! mark the (connection, ticket) dirty; one writer task makes the table
//! match, key by key. Nothing is queued but the set of dirty keys (at most
//! one per viewer), so a burst of changes coalesces, a failed write is simply
//! retried, and presence never delays ticket events. A process vouches for
//! its viewers with one heartbeat row (`presence_processes`), beaten by the
//! upkeep: the upkeep's cost does not grow with the number of viewers (at
//! 10,000 viewers, refreshing every row used to hold a core for ~100 ms
//! every 5 s). The viewers of a process that died expire after the TTL; a
//! restarted process clears the rows it left behind under the same process
//! key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::ConnId;
use super::protocol::PresenceState;
use crate::config::Settings;
use crate::db::{Database, DbError};
use crate::metrics::Metrics;

/// A viewer slot: a connection on a ticket.
type Key = (ConnId, i64);

/// What this process publishes (the truth the table is made to match) and
/// which keys the table may not match yet.
#[derive(Debug, Default)]
struct State {
    published: HashMap<Key, (i64, PresenceState)>,
    dirty: HashSet<Key>,
}

/// How long the writer waits before retrying writes that failed.
const RETRY: Duration = Duration::from_secs(1);

/// How long removing this process's viewers may take at shutdown.
const REMOVE_GRACE: Duration = Duration::from_secs(2);

/// This process's presence.
pub struct Presence {
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
    /// Stops the writer (which then removes this process's rows) and the upkeep.
    stop: CancellationToken,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Presence {
    /// Clear this process key's leftovers and start the writer and the upkeep.
    pub async fn start(db: Database, settings: Arc<Settings>, metrics: Arc<Metrics>) -> Presence {
        let process_id = Uuid::new_v4();
        let process_key = format!("{}@{}", settings.bind, hostname());
        let presence = Presence {
            state: Arc::default(),
            wake: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        };
        if let Err(e) = clear_leftovers(&db, &process_key, process_id).await {
            tracing::warn!(error = %e, "could not clear presence left by an earlier run");
        }
        let writer = Writer {
            db: db.clone(),
            process_id,
            process_key,
            metrics,
            state: presence.state.clone(),
        };
        let tasks = vec![
            tokio::spawn(writer.run(presence.wake.clone(), presence.stop.clone())),
            tokio::spawn(upkeep(
                db,
                process_id,
                settings.presence_ttl(),
                presence.stop.clone(),
            )),
        ];
        *presence.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        presence
    }

    /// Stop the upkeep and the writer; the writer removes this process's
    /// rows first, so other processes drop its viewers at once (not after
    /// the TTL). Called once the sessions have ended.
    pub async fn stop(&self) {
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Publish a viewer's state on a ticket.
    pub fn set(&self, conn: ConnId, ticket: i64, agent: i64, state: PresenceState) {
        let mut guard = lock(&self.state);
        guard.published.insert((conn, ticket), (agent, state));
        guard.dirty.insert((conn, ticket));
        drop(guard);
        self.wake.notify_one();
    }

    /// Remove a viewer from one ticket, or from all its tickets with `None`.
    pub fn remove(&self, conn: ConnId, ticket: Option<i64>) {
        let mut guard = lock(&self.state);
        let gone: Vec<Key> = guard
            .published
            .keys()
            .filter(|(c, t)| *c == conn && ticket.is_none_or(|x| x == *t))
            .copied()
            .collect();
        for key in gone {
            guard.published.remove(&key);
            guard.dirty.insert(key);
        }
        drop(guard);
        self.wake.notify_one();
    }

    /// Write everything this process shows again (after the listener
    /// reconnects: a database crash empties the UNLOGGED table).
    pub fn republish(&self) {
        let mut guard = lock(&self.state);
        let keys: Vec<Key> = guard.published.keys().copied().collect();
        guard.dirty.extend(keys);
        drop(guard);
        self.wake.notify_one();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

struct Writer {
    db: Database,
    process_id: Uuid,
    process_key: String,
    metrics: Arc<Metrics>,
    state: Arc<Mutex<State>>,
}

impl Writer {
    async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut retry = false;
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(RETRY), if retry => {}
                _ = shutdown.cancelled() => {
                    // Leave no viewers behind for other processes.
                    match tokio::time::timeout(REMOVE_GRACE, self.remove_process()).await {
                        Ok(Ok(())) => tracing::debug!("removed this process's viewers"),
                        Ok(Err(e)) => tracing::warn!(error = %e, "could not remove this process's viewers; they expire after the TTL"),
                        Err(_) => tracing::warn!("removing this process's viewers timed out; they expire after the TTL"),
                    }
                    return;
                }
            }
            let dirty = std::mem::take(&mut lock(&self.state).dirty);
            retry = false;
            for key in dirty {
                if let Err(e) = self.db.within(self.sync(key)).await {
                    tracing::warn!(error = %e, "presence write failed; retrying");
                    lock(&self.state).dirty.insert(key);
                    retry = true;
                }
            }
        }
    }

    /// Make the table's row for `key` match what this process publishes.
    async fn sync(&self, (conn, ticket): Key) -> Result<(), DbError> {
        let wanted = lock(&self.state).published.get(&(conn, ticket)).copied();
        let client = self.db.client().await?;
        match wanted {
            Some((agent, state)) => {
                let statement = client
                    .prepare_cached("SELECT ld_presence_set($1, $2, $3, $4, $5, $6)")
                    .await?;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
                    &self.process_id,
                    &self.process_key,
                    &(conn as i64),
                    &ticket,
                    &agent,
                    &state.as_str(),
                ];
                client.execute(&statement, &params).await?;
            }
            None => {
                let statement = client
                    .prepare_cached("SELECT ld_presence_remove($1, $2, $3)")
                    .await?;
                client
                    .execute(&statement, &[&self.process_id, &(conn as i64), &ticket])
                    .await?;
            }
        }
        self.metrics.presence_writes.inc();
        Ok(())
    }

    async fn remove_process(&self) -> Result<(), DbError> {
        let client = self.db.client().await?;
        let no_conn: Option<i64> = None;
        let no_ticket: Option<i64> = None;
        client
            .execute(
                "SELECT ld_presence_remove($1, $2, $3)",
                &[&self.process_id, &no_conn, &no_ticket],
            )
            .await?;
        Ok(())
    }
}

/// Beat this process's heartbeat (one row, however many viewers it has) and
/// expire the viewers of processes that stopped beating, every TTL/6: a dead
/// process's viewers are gone at most TTL + TTL/6 after its last beat.
async fn upkeep(db: Database, process_id: Uuid, ttl: Duration, shutdown: CancellationToken) {
    let ttl_ms = ttl.as_millis().min(i32::MAX as u128) as i32;
    let mut tick = tokio::time::interval(ttl / 6);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let result: Result<(), DbError> = db
            .within(async {
                let client = db.client().await?;
                client
                    .execute("SELECT ld_presence_touch($1)", &[&process_id])
                    .await?;
                client
                    .execute("SELECT ld_presence_expire($1)", &[&ttl_ms])
                    .await?;
                Ok::<(), DbError>(())
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "presence upkeep skipped");
        }
    }
}

async fn clear_leftovers(db: &Database, key: &str, process_id: Uuid) -> Result<(), DbError> {
    let client = db.client().await?;
    client
        .execute("SELECT ld_presence_clear_key($1, $2)", &[&key, &process_id])
        .await?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
