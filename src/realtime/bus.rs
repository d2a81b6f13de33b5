//! The event bus's mode (`LIVEDESK_BUS`, issue 18): how the database wakes
//! the livedesk processes for a new event. `notify`: NOTIFY livedesk_events
//! (the LISTEN connection, `listener`). `logical`: a transactional
//! logical-decoding message per change, streamed to each process over a
//! replication connection (`stream`). Either way the message is only a
//! wake-up: deliveries are read from `ticket_events` by cursor.
//!
//! The mode lives in the database (`bus_settings`, V9), read by the
//! triggers, so direct writers follow it too. A process sets it at start
//! (`prepare`); the others hear it on `livedesk_bus` and follow: the last
//! process started decides, and no process is ever deaf to the bus in use
//! (docs/scaling.md, "Two processes that disagree").

use crate::config::{Bus, Settings};
use crate::db::{Database, DbError};

/// The publication pgoutput starts with. It publishes no table: only the
/// logical messages (which pgoutput sends whatever it publishes) are read.
pub const PUBLICATION: &str = "livedesk_bus";
/// The prefix of the logical messages that announce an event
/// (`{"ticket_id", "version"}`, the NOTIFY payload).
pub const EVENTS_PREFIX: &str = "livedesk_events";
/// The prefix of a process's liveness probes through its own stream.
pub const PROBE_PREFIX: &str = "livedesk_probe";
/// The channel on which a change of mode is announced.
pub const CHANNEL: &str = "livedesk_bus";

/// Why the bus cannot run as configured: each names what is missing and how
/// to fix it (the start-up error of `LIVEDESK_BUS=logical` with
/// `DATABASE_URL`).
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "LIVEDESK_BUS=logical needs wal_level = logical, and this PostgreSQL runs with \
         wal_level = {current}: as a superuser run `ALTER SYSTEM SET wal_level = logical` \
         (max_replication_slots and max_wal_senders need one per livedesk process too) and \
         restart PostgreSQL, or start livedesk with LIVEDESK_BUS=notify"
    )]
    WalLevel { current: String },
    #[error(
        "LIVEDESK_BUS=logical needs one replication slot and one WAL sender per livedesk \
         process, and this PostgreSQL has max_replication_slots = {slots}, max_wal_senders = \
         {senders}: raise them with ALTER SYSTEM and restart PostgreSQL"
    )]
    NoSlots { slots: i64, senders: i64 },
    #[error(
        "LIVEDESK_BUS=logical streams as the role {role}, which lacks the REPLICATION \
         attribute: as a superuser run `ALTER ROLE {role} REPLICATION`, or start livedesk \
         with LIVEDESK_BUS=notify"
    )]
    Replication { role: String },
    #[error(
        "LIVEDESK_BUS=logical needs the publication livedesk_bus in this database, and it is \
         missing: as the database's owner run `CREATE PUBLICATION livedesk_bus` (migration \
         V9 makes it; it publishes no table)"
    )]
    Publication,
    #[error(
        "LIVEDESK_BUS=logical cannot open a replication connection as {role}: {reason}. \
         It needs a free WAL sender (max_wal_senders counts one per livedesk process, plus \
         every other replication client), pg_hba.conf must let {role} connect to this \
         database (a logical replication connection is matched by the database's own lines; \
         the `replication` keyword is for physical replication only), and the connection \
         must reach the primary itself (not pgbouncer in transaction mode, not a standby)"
    )]
    Connect { role: String, reason: String },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for BusError {
    fn from(e: tokio_postgres::Error) -> Self {
        BusError::Db(DbError::Query(e))
    }
}

/// Check that the configured bus can run on this database, then set the
/// database's mode to it (announced to the other processes). Runs at every
/// start, before the realtime side.
pub async fn prepare(db: &Database, settings: &Settings) -> Result<(), BusError> {
    let client = db.client().await?;
    if settings.bus == Bus::Logical {
        let row = client
            .query_one(
                "SELECT current_setting('wal_level'), \
                        current_setting('max_replication_slots')::bigint, \
                        current_setting('max_wal_senders')::bigint, \
                        (SELECT r.rolreplication OR r.rolsuper FROM pg_roles r \
                         WHERE r.rolname = current_user), \
                        current_user::text, \
                        EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = $1)",
                &[&PUBLICATION],
            )
            .await?;
        let wal_level: String = row.get(0);
        let (slots, senders): (i64, i64) = (row.get(1), row.get(2));
        let replication: bool = row.get::<_, Option<bool>>(3).unwrap_or(false);
        let role: String = row.get(4);
        if wal_level != "logical" {
            return Err(BusError::WalLevel { current: wal_level });
        }
        if slots < 1 || senders < 1 {
            return Err(BusError::NoSlots { slots, senders });
        }
        if !replication {
            return Err(BusError::Replication { role });
        }
        if !row.get::<_, bool>(5) {
            return Err(BusError::Publication);
        }
        // What SQL cannot see: a free WAL sender, pg_hba.conf, the path.
        super::stream::check_connection(db)
            .await
            .map_err(|reason| BusError::Connect { role, reason })?;
    }
    let by = format!("livedesk {} pid {}", settings.bind, std::process::id());
    let before: Option<String> = client
        .query_one("SELECT ld_bus_set($1, $2)", &[&settings.bus.as_str(), &by])
        .await?
        .get(0);
    match before.as_deref().and_then(Bus::parse) {
        Some(before) if before != settings.bus => tracing::info!(
            before = before.as_str(),
            now = settings.bus.as_str(),
            "switched the database's event bus; livedesk processes already running on it follow"
        ),
        _ => tracing::info!(bus = settings.bus.as_str(), "event bus"),
    }
    Ok(())
}

/// The database's mode now (the LISTEN connection reads it at every
/// (re)connect: a change announced while it was down is not missed).
pub async fn read_mode(client: &tokio_postgres::Client) -> Result<Bus, tokio_postgres::Error> {
    let mode: String = client
        .query_one("SELECT mode FROM bus_settings WHERE id = 1", &[])
        .await?
        .get(0);
    Ok(Bus::parse(&mode).unwrap_or_default())
}
