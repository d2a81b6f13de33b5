//! Presence: who is viewing, typing or idle on a ticket, shared by every
//! livedesk process through an UNLOGGED table and `NOTIFY livedesk_presence`.
//!
//! Writes go through one writer task per process with a bounded queue, so a
//! burst of presence changes never delays ticket events; rows of a process
//! that died expire after the TTL, and a restarted process clears the rows it
//! left behind under the same process key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::hub::ConnId;
use super::protocol::PresenceState;
use crate::config::Settings;
use crate::db::{Database, DbError};
use crate::http::Metrics;

/// Presence operations queued before the writer drops them (the TTL repairs a
/// dropped one: a missed removal expires, a missed state shows on the next change).
const QUEUE: usize = 8192;

/// What this process has published: (connection, ticket) → (agent, state).
type Published = HashMap<(ConnId, i64), (i64, PresenceState)>;

#[derive(Debug, Clone)]
enum Op {
    Set {
        conn: ConnId,
        ticket: i64,
        agent: i64,
        state: PresenceState,
    },
    Remove {
        conn: ConnId,
        ticket: Option<i64>,
    },
    Republish,
}

/// This process's presence writer.
pub struct Presence {
    db: Database,
    process_id: Uuid,
    tx: mpsc::Sender<Op>,
    /// What this process has published, to republish after a database restart
    /// (the UNLOGGED table is emptied by crash recovery).
    live: Arc<Mutex<Published>>,
}

impl Presence {
    /// Clear this process key's leftovers and start the writer and the upkeep.
    pub async fn start(
        db: Database,
        settings: Arc<Settings>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Presence {
        let process_id = Uuid::new_v4();
        let process_key = format!("{}@{}", settings.bind, hostname());
        let (tx, rx) = mpsc::channel(QUEUE);
        let presence = Presence {
            db: db.clone(),
            process_id,
            tx,
            live: Arc::default(),
        };
        if let Err(e) = clear_leftovers(&db, &process_key, process_id).await {
            tracing::warn!(error = %e, "could not clear presence left by an earlier run");
        }
        let writer = Writer {
            db: db.clone(),
            process_id,
            process_key,
            metrics,
            live: presence.live.clone(),
        };
        tokio::spawn(writer.run(rx, shutdown.clone()));
        tokio::spawn(upkeep(db, process_id, settings.presence_ttl(), shutdown));
        presence
    }

    /// Publish a viewer's state on a ticket.
    pub fn set(&self, conn: ConnId, ticket: i64, agent: i64, state: PresenceState) {
        self.send(Op::Set {
            conn,
            ticket,
            agent,
            state,
        });
    }

    /// Remove a viewer from one ticket, or from all with `None`.
    pub fn remove(&self, conn: ConnId, ticket: Option<i64>) {
        self.send(Op::Remove { conn, ticket });
    }

    /// Write everything this process shows again (after the listener reconnects).
    pub fn republish(&self) {
        self.send(Op::Republish);
    }

    fn send(&self, op: Op) {
        if let Err(e) = self.tx.try_send(op) {
            tracing::warn!(error = %e, "presence queue full; dropping an update (TTL repairs it)");
        }
    }

    /// The viewer list of a ticket.
    pub async fn viewers(&self, ticket: i64) -> Result<serde_json::Value, DbError> {
        let client = self.db.client().await?;
        let statement = client
            .prepare_cached("SELECT ld_presence_viewers($1)")
            .await?;
        Ok(client.query_one(&statement, &[&ticket]).await?.get(0))
    }

    /// This process's id in the presence table.
    pub fn process_id(&self) -> Uuid {
        self.process_id
    }
}

struct Writer {
    db: Database,
    process_id: Uuid,
    process_key: String,
    metrics: Arc<Metrics>,
    live: Arc<Mutex<Published>>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Op>, shutdown: CancellationToken) {
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => if n == 0 { return },
                _ = shutdown.cancelled() => {
                    // Leave no viewers behind for other processes.
                    let _ = self.remove(None, None).await;
                    return;
                }
            }
            for op in coalesce(std::mem::take(&mut batch)) {
                if let Err(e) = self.write(op).await {
                    tracing::warn!(error = %e, "presence write failed");
                }
            }
        }
    }

    async fn write(&self, op: Op) -> Result<(), DbError> {
        match op {
            Op::Set {
                conn,
                ticket,
                agent,
                state,
            } => self.set(conn, ticket, agent, state).await,
            Op::Remove { conn, ticket } => self.remove(Some(conn), ticket).await,
            Op::Republish => {
                let entries: Vec<_> = self.lock_live().clone().into_iter().collect();
                for ((conn, ticket), (agent, state)) in entries {
                    self.set(conn, ticket, agent, state).await?;
                }
                Ok(())
            }
        }
    }

    async fn set(
        &self,
        conn: ConnId,
        ticket: i64,
        agent: i64,
        state: PresenceState,
    ) -> Result<(), DbError> {
        self.lock_live().insert((conn, ticket), (agent, state));
        let client = self.db.client().await?;
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
        self.metrics.presence_writes.inc();
        Ok(())
    }

    /// Remove one connection's presence (on one ticket or all), or with
    /// `conn = None` everything this process shows.
    async fn remove(&self, conn: Option<ConnId>, ticket: Option<i64>) -> Result<(), DbError> {
        self.lock_live().retain(|(c, t), _| {
            let gone = conn.is_none_or(|conn| conn == *c) && ticket.is_none_or(|x| x == *t);
            !gone
        });
        let client = self.db.client().await?;
        let statement = client
            .prepare_cached("SELECT ld_presence_remove($1, $2, $3)")
            .await?;
        let conn = conn.map(|c| c as i64);
        client
            .execute(&statement, &[&self.process_id, &conn, &ticket])
            .await?;
        self.metrics.presence_writes.inc();
        Ok(())
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, Published> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keep only the last `Set` per (connection, ticket) within a batch, in order.
fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    let mut last_set: HashMap<(ConnId, i64), usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let Op::Set { conn, ticket, .. } = op {
            last_set.insert((*conn, *ticket), i);
        }
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| match op {
            Op::Set { conn, ticket, .. } => last_set.get(&(*conn, *ticket)) == Some(i),
            _ => true,
        })
        .map(|(_, op)| op)
        .collect()
}

/// Refresh this process's rows and expire everybody's stale ones, every TTL/6:
/// a dead process's viewers are gone at most TTL + TTL/6 after its last refresh.
async fn upkeep(db: Database, process_id: Uuid, ttl: Duration, shutdown: CancellationToken) {
    let ttl_ms = ttl.as_millis().min(i32::MAX as u128) as i32;
    let mut tick = tokio::time::interval(ttl / 6);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let result: Result<(), DbError> = async {
            let client = db.client().await?;
            client
                .execute("SELECT ld_presence_touch($1)", &[&process_id])
                .await?;
            client
                .execute("SELECT ld_presence_expire($1)", &[&ttl_ms])
                .await?;
            Ok(())
        }
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
