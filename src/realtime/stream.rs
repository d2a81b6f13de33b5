//! The logical bus's stream (`LIVEDESK_BUS=logical`): one replication
//! connection per process, with a **temporary** slot that PostgreSQL drops
//! when the connection ends (a crashed or killed livedesk leaves no slot
//! that retains WAL). The triggers emit one transactional logical message
//! per change (`ld_wake`, prefix `livedesk_events`, payload ticket_id +
//! version); pgoutput sends it at commit, and it wakes the fetcher exactly
//! as a NOTIFY does.
//!
//! On every (re)connect, as the LISTEN connection after a loss: the slot is
//! made and streaming started first, then the history is checked
//! (`rewind`: the system identifier and timeline, from IDENTIFY_SYSTEM) and
//! every watched ticket is read from its cursor. A commit that lands
//! between the two is both read and streamed: the hub drops the duplicate.
//!
//! Liveness: a stream that went silent (a stuck proxy, a dead peer) is
//! noticed by a probe through itself: every half probe interval a
//! non-transactional message is emitted through the pool, and it must come
//! back on the stream within the other half. Standby status feedback
//! (every second) confirms everything received, so the slot retains no WAL
//! behind the process.
//!
//! The replication client is `pgwire-replication` (pure Rust, tokio, unix
//! sockets and TCP with rustls, decodes pgoutput's message, begin and commit
//! frames): see docs/scaling.md for why not `pg_walstream`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgwire_replication::{
    ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio_postgres::config::Host;

use super::bus::{EVENTS_PREFIX, PROBE_PREFIX, PUBLICATION};
use super::Realtime;
use crate::config::Bus;
use crate::db::tls::CertCheck;
use crate::db::Database;

/// `application_name` of the replication connection (`pg_stat_replication`).
pub const STREAM_NAME: &str = "livedesk-stream";

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Making a slot waits until every transaction running at that moment has
/// ended (its first consistent point): a writer idle in a transaction holds
/// it up, and it is said in the log.
const SLOT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a switch to `notify` keeps the stream for transactions that
/// read `logical` before the switch and commit after it.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a drain checks whether those transactions have ended.
const DRAIN_POLL: Duration = Duration::from_millis(50);

static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

/// A slot name unique in the cluster (slots are cluster-wide): this
/// process, a counter, and a random part for a pid reused after a crash.
fn slot_name() -> String {
    format!(
        "livedesk_{}_{}_{:08x}",
        std::process::id(),
        NEXT_SLOT.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// The replication connection's settings, from the pool's: same host (unix
/// socket or TCP), port, role, password, database, and TLS as asked for.
fn replication_config(db: &Database, slot: &str) -> ReplicationConfig {
    let config = db.config();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_string();
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = config
        .get_dbname()
        .map(str::to_string)
        .unwrap_or_else(|| user.clone());
    let host = match config.get_hosts().first() {
        Some(Host::Unix(path)) => path.to_string_lossy().into_owned(),
        Some(Host::Tcp(host)) => host.clone(),
        None => "localhost".to_string(),
    };
    let tls = if host.starts_with('/') {
        TlsConfig::disabled()
    } else {
        // The same as the pool's connections check (db::tls).
        match (config.get_ssl_mode(), db.tls().check()) {
            (tokio_postgres::config::SslMode::Disable, _) => TlsConfig::disabled(),
            (_, CertCheck::Issuer(ca)) => TlsConfig::verify_ca(Some(ca.clone())),
            (_, CertCheck::IssuerAndName(ca)) => TlsConfig::verify_full(Some(ca.clone())),
            (tokio_postgres::config::SslMode::Prefer, CertCheck::Nothing) => TlsConfig {
                mode: SslMode::Prefer,
                ..TlsConfig::default()
            },
            (_, CertCheck::Nothing) => TlsConfig::require(),
        }
    };
    ReplicationConfig::new(host, user, password, database, slot, PUBLICATION)
        .with_port(port)
        .with_tls(tls)
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(1))
        .with_buffer_size(4096)
        .with_application_name(STREAM_NAME)
}

/// Open a replication connection and identify the server, as the start-up
/// check (`bus::prepare`): what SQL cannot see (a free WAL sender,
/// pg_hba.conf, the path to the primary). The reason when it fails.
pub async fn check_connection(db: &Database) -> Result<(), String> {
    let mut client = ReplicationClient::connect_gated(replication_config(db, "livedesk_check"))
        .await
        .map_err(|e| e.to_string())?;
    let limit = db.timeout();
    let answer = tokio::time::timeout(limit, client.identify_system()).await;
    client.abort();
    match answer {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

/// Ends the replication session (and with it the temporary slot) however
/// the task leaves, cancellation included.
struct Session(ReplicationClient);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a session ended without an error.
enum Ended {
    /// The process stops.
    Stopped,
    /// The database switched to `notify` and the drain is done.
    Switched,
}

/// Keep a stream up while the database's bus is `logical`, until shutdown.
pub async fn run(rt: Realtime) {
    let mut mode = rt.bus_watch();
    let mut backoff = Duration::from_millis(50);
    let mut connected_before = false;
    loop {
        tokio::select! {
            changed = mode.wait_for(|m| *m == Bus::Logical) => if changed.is_err() { return },
            _ = rt.bus_stop.cancelled() => return,
        }
        let result = session(&rt, &mut mode, &mut connected_before).await;
        rt.set_stream_up(false);
        rt.metrics.stream_up.set(0);
        match result {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Switched) => {
                tracing::info!("the database's bus is notify now; logical stream closed");
                backoff = Duration::from_millis(50);
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "logical bus stream lost")
            }
        }
        tokio::select! {
            _ = rt.bus_stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What a switch to `notify` still waits for before the stream closes.
enum Drain {
    /// Transactions running at the switch (below this xid) to end: they may
    /// have read `logical` and emit a message at their commit.
    Transactions { below: String, until: Instant },
    /// A probe emitted after them to come back: everything committed before
    /// it was decoded.
    Probe,
}

async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} ms", limit.as_millis())),
    }
}

/// Emit a probe (non-transactional: decoded at once) through the pool.
async fn emit_probe(rt: &Realtime, content: &str, limit: Duration) -> Result<(), String> {
    within(limit, "probe", async {
        let client = rt.db.client().await.map_err(|e| e.to_string())?;
        client
            .execute(
                "SELECT pg_logical_emit_message(false, $1, $2)",
                &[&PROBE_PREFIX, &content],
            )
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .map(|_| ())
}

async fn session(
    rt: &Realtime,
    mode: &mut tokio::sync::watch::Receiver<Bus>,
    connected_before: &mut bool,
) -> Result<Ended, String> {
    let limit = rt.db.timeout();
    let slot = slot_name();
    let mut client = Session(
        ReplicationClient::connect_gated(replication_config(&rt.db, &slot))
            .await
            .map_err(|e| e.to_string())?,
    );
    let system = within(limit, "IDENTIFY_SYSTEM", client.0.identify_system()).await?;
    within(
        SLOT_TIMEOUT,
        "making the temporary slot (a transaction left open holds it up)",
        client.0.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT"
        )),
    )
    .await?;
    client.0.start().await.map_err(|e| e.to_string())?;
    within(limit, "START_REPLICATION", client.0.wait_started()).await?;

    // Streaming from the slot's start: now check the history and read
    // every watched ticket from its cursor, as after a lost LISTEN.
    let identity = format!("{}/{:08X}", system.system_id, system.timeline);
    super::rewind::observe(rt, Some(identity), *connected_before);
    rt.set_stream_up(true);
    rt.metrics.stream_up.set(1);
    if *connected_before {
        rt.metrics.stream_reconnects.inc();
        tracing::info!(slot, "logical bus stream restored; catching up");
    } else {
        tracing::info!(slot, "logical bus stream up");
    }
    *connected_before = true;
    rt.work.catch_up_everything(false);

    let half = rt.settings.listener_probe() / 2;
    let mut probes: u64 = 0;
    // The probe in flight: its number and when it must be back.
    let mut in_flight: Option<(u64, Instant)> = None;
    let mut next_probe = Instant::now() + half;
    let mut drain: Option<Drain> = None;
    let mut drain_probe: Option<u64> = None;
    if *mode.borrow() == Bus::Notify {
        drain = Some(start_drain(rt, limit).await?);
    }
    loop {
        let wake_at = match (&drain, in_flight) {
            (Some(Drain::Transactions { .. }), _) => Instant::now() + DRAIN_POLL,
            (_, Some((_, deadline))) => deadline,
            (_, None) => next_probe,
        };
        tokio::select! {
            event = client.0.recv() => match event {
                Ok(Some(event)) => {
                    if let Some(n) = handle(rt, &client.0, &slot, event) {
                        if in_flight.is_some_and(|(sent, _)| sent == n) {
                            in_flight = None;
                            next_probe = Instant::now() + half;
                        }
                        if drain_probe == Some(n) {
                            return Ok(Ended::Switched);
                        }
                    }
                }
                Ok(None) => return Err("the server ended the stream".into()),
                Err(e) => return Err(e.to_string()),
            },
            _ = tokio::time::sleep_until(wake_at.into()) => {
                let waiting = match &drain {
                    Some(Drain::Transactions { below, until }) => Some((below.clone(), *until)),
                    _ => None,
                };
                if let Some((below, until)) = waiting {
                    let done = Instant::now() > until || transactions_ended(rt, &below, limit).await?;
                    if done {
                        probes += 1;
                        emit_probe(rt, &format!("{slot}:{probes}"), limit).await?;
                        drain_probe = Some(probes);
                        drain = Some(Drain::Probe);
                    }
                    continue;
                }
                match in_flight {
                    Some((n, deadline)) if Instant::now() >= deadline => {
                        return Err(format!(
                            "probe {n} did not come back through the stream within {} ms",
                            half.as_millis()
                        ));
                    }
                    Some(_) => {}
                    None => {
                        probes += 1;
                        emit_probe(rt, &format!("{slot}:{probes}"), half.min(limit)).await?;
                        in_flight = Some((probes, Instant::now() + half));
                    }
                }
            },
            changed = mode.changed() => {
                if changed.is_err() {
                    return Ok(Ended::Stopped);
                }
                let now = *mode.borrow_and_update();
                match now {
                    Bus::Notify if drain.is_none() => drain = Some(start_drain(rt, limit).await?),
                    Bus::Logical => {
                        drain = None;
                        drain_probe = None;
                    }
                    _ => {}
                }
            },
            _ = rt.bus_stop.cancelled() => {
                // CopyDone, then the server ends the session (and drops the slot).
                client.0.stop();
                let _ = tokio::time::timeout(Duration::from_secs(1), client.0.shutdown()).await;
                return Ok(Ended::Stopped);
            }
        }
    }
}

/// One event from the stream: wake the fetcher for an event, confirm what
/// was received (the slot keeps no WAL behind us). Returns the number of
/// one of our own probes.
fn handle(
    rt: &Realtime,
    client: &ReplicationClient,
    slot: &str,
    event: ReplicationEvent,
) -> Option<u64> {
    match event {
        ReplicationEvent::Message {
            prefix,
            content,
            lsn,
            transactional,
        } => {
            if !transactional {
                client.update_applied_lsn(lsn);
            }
            match prefix.as_str() {
                EVENTS_PREFIX => match std::str::from_utf8(&content) {
                    Ok(payload) => rt.on_stream_event(payload),
                    Err(_) => {
                        tracing::warn!("ignoring a livedesk_events message that is not UTF-8")
                    }
                },
                PROBE_PREFIX => {
                    let text = std::str::from_utf8(&content).ok()?;
                    let (of, n) = text.rsplit_once(':')?;
                    if of == slot {
                        return n.parse().ok();
                    }
                }
                _ => {}
            }
        }
        ReplicationEvent::Commit { end_lsn, .. } => client.update_applied_lsn(end_lsn),
        ReplicationEvent::KeepAlive { wal_end, .. } => client.update_applied_lsn(wal_end),
        _ => {}
    }
    None
}

/// The xid below which every transaction must end before a switch to
/// `notify` closes the stream: every transaction running now.
async fn start_drain(rt: &Realtime, limit: Duration) -> Result<Drain, String> {
    let below: String = within(limit, "draining", async {
        let client = rt.db.client().await.map_err(|e| e.to_string())?;
        client
            .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
            .await
            .map(|row| row.get::<_, String>(0))
            .map_err(|e| e.to_string())
    })
    .await?;
    tracing::info!(
        below,
        "the database's bus switched to notify; draining the logical stream"
    );
    Ok(Drain::Transactions {
        below,
        until: Instant::now() + DRAIN_LIMIT,
    })
}

async fn transactions_ended(rt: &Realtime, below: &str, limit: Duration) -> Result<bool, String> {
    within(limit, "draining", async {
        let client = rt.db.client().await.map_err(|e| e.to_string())?;
        client
            .query_one(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8",
                &[&below],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
            .map_err(|e| e.to_string())
    })
    .await
}
